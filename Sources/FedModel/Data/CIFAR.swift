import Foundation

/// The CIFAR-10 and CIFAR-100 binary versions, as Krizhevsky distributes them
/// (`cifar-10-batches-bin/`: `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`;
/// `cifar-100-binary/`: `train.bin` and `test.bin`). A record is the label (CIFAR-10: one byte;
/// CIFAR-100: the coarse then the fine label byte; the fine one is used) and 3,072 bytes of a
/// 32×32 colour image, the red plane, then green, then blue, each row-major. Images load as
/// 32×32×3 NHWC scaled to [0, 1].
public enum CIFAR {
    public static let imageBytes = 3072

    /// Whether `directory` holds either layout.
    public static func isPresent(in directory: URL) -> Bool {
        ["data_batch_1.bin", "train.bin"].contains { FileManager.default.fileExists(atPath: directory.appendingPathComponent($0).path) }
    }

    public static func load(directory: URL, train: Bool) throws -> Dataset {
        let ten = FileManager.default.fileExists(atPath: directory.appendingPathComponent("data_batch_1.bin").path)
        let files = ten ? (train ? (1...5).map { "data_batch_\($0).bin" } : ["test_batch.bin"]) : [train ? "train.bin" : "test.bin"]
        let labelBytes = ten ? 1 : 2
        var features: [Float] = []
        var labels: [Int32] = []
        for name in files {
            let url = directory.appendingPathComponent(name)
            let data: Data
            do { data = try Data(contentsOf: url) } catch {
                throw DataError(url.path, FileManager.default.fileExists(atPath: url.path) ? "cannot read file" : "no such file (CIFAR-\(ten ? "10" : "100") needs \(files.joined(separator: ", ")))")
            }
            let record = labelBytes + imageBytes
            guard !data.isEmpty, data.count % record == 0 else {
                throw DataError(url.path, "\(data.count) bytes is not a whole number of \(record)-byte records (truncated or not a CIFAR-\(ten ? "10" : "100") binary batch)")
            }
            let count = data.count / record
            features.reserveCapacity(features.count + count * imageBytes)
            try data.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) in
                let scale: Float = 1 / 255
                for r in 0..<count {
                    let base = r * record
                    let label = Int32(bytes[base + labelBytes - 1])
                    guard label < (ten ? 10 : 100) else { throw DataError(url.path, "record \(r): label \(label) is outside 0..<\(ten ? 10 : 100)") }
                    labels.append(label)
                    let pixels = base + labelBytes
                    for p in 0..<1024 {
                        for c in 0..<3 { features.append(Float(bytes[pixels + c * 1024 + p]) * scale) }
                    }
                }
            }
        }
        return try Dataset(name: directory.lastPathComponent + (train ? " (train)" : " (test)"), sampleShape: TensorShape(height: 32, width: 32, channels: 3),
                           classes: ten ? 10 : 100, features: features, labels: labels)
    }
}
