import Crypto
import Foundation

/// Image datasets in MNIST's IDX layout: the MNIST digits and anything shipped the same way
/// (Fashion-MNIST, a user's own images): four files with the standard names, images as IDX
/// unsigned bytes of shape [N, H, W] (one channel) or [N, H, W, C], scaled to [0, 1], labels as
/// IDX [N] class indices.
public enum MNIST {
    public static let trainImages = "train-images-idx3-ubyte.gz"
    public static let trainLabels = "train-labels-idx1-ubyte.gz"
    public static let testImages = "t10k-images-idx3-ubyte.gz"
    public static let testLabels = "t10k-labels-idx1-ubyte.gz"
    /// A checksum manifest beside the files (`sha256sum` output): what it lists is verified.
    public static let manifest = "SHA256SUMS"

    /// Loads the training or test split from a directory holding the four standard files.
    /// Files listed in the directory's ``manifest`` are checked against it (the bundled MNIST
    /// copy ships one); a directory without a manifest is a user's data and is not pinned.
    /// With `examples`, only that range is kept (and converted to floats), which keeps a device
    /// that holds a slice of MNIST small.
    public static func load(directory: URL, train: Bool, verifyChecksums: Bool = true, examples: Range<Int>? = nil) throws -> Dataset {
        let imageURL = directory.appendingPathComponent(train ? trainImages : testImages)
        let labelURL = directory.appendingPathComponent(train ? trainLabels : testLabels)
        return try load(images: imageURL, labels: labelURL, verifyChecksums: verifyChecksums, examples: examples)
    }

    /// Loads an image file and a label file in IDX format (gzipped or raw). The class count is
    /// 10, or one more than the largest label when that is larger.
    public static func load(images imageURL: URL, labels labelURL: URL, verifyChecksums: Bool = true, examples: Range<Int>? = nil) throws -> Dataset {
        let images = try readVerified(imageURL, dimensions: 3...4, verify: verifyChecksums)
        let labels = try readVerified(labelURL, dimensions: 1...1, verify: verifyChecksums)
        let count = images.dimensions[0]
        let shape = TensorShape(height: images.dimensions[1], width: images.dimensions[2], channels: images.dimensions.count == 4 ? images.dimensions[3] : 1)
        guard labels.dimensions[0] == count else {
            throw DataError(labelURL.path, "has \(labels.dimensions[0]) labels but \(imageURL.lastPathComponent) has \(count) images")
        }
        let range = examples ?? 0..<count
        guard range.lowerBound >= 0, range.upperBound <= count, !range.isEmpty else {
            throw DataError(imageURL.path, "examples \(range) outside the file's 0..<\(count)")
        }
        let scale: Float = 1 / 255
        let values = shape.count
        let imageStart = images.bytes.startIndex, labelStart = labels.bytes.startIndex
        let features = images.bytes[(imageStart + range.lowerBound * values)..<(imageStart + range.upperBound * values)].map { Float($0) * scale }
        let kept = labels.bytes[(labelStart + range.lowerBound)..<(labelStart + range.upperBound)].map { Int32($0) }
        let classes = max(10, Int(labels.bytes.max() ?? 0) + 1)
        return try Dataset(name: imageURL.lastPathComponent, sampleShape: shape, classes: classes, features: features, labels: kept)
    }

    /// The SHA-256 the directory's manifest gives for `file`, if it lists it.
    static func pinnedDigest(of file: URL) throws -> String? {
        let manifestURL = file.deletingLastPathComponent().appendingPathComponent(manifest)
        guard FileManager.default.fileExists(atPath: manifestURL.path) else { return nil }
        guard let text = try? String(contentsOf: manifestURL, encoding: .utf8) else {
            throw DataError(manifestURL.path, "cannot read the checksum manifest")
        }
        for line in text.split(whereSeparator: \.isNewline) {
            let parts = line.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
            guard parts.count == 2 else { continue }
            let name = parts[1].trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "*"))
            if name == file.lastPathComponent { return parts[0].lowercased() }
        }
        return nil
    }

    private static func readVerified(_ url: URL, dimensions: ClosedRange<Int>, verify: Bool) throws -> (dimensions: [Int], bytes: ArraySlice<UInt8>) {
        let source = url.path
        if verify, let expected = try pinnedDigest(of: url) {
            let stored: Data
            do { stored = try Data(contentsOf: url) } catch {
                throw DataError(source, FileManager.default.fileExists(atPath: source) ? "cannot read file" : "no such file")
            }
            let actual = SHA256.hash(data: stored).map { String(format: "%02x", $0) }.joined()
            guard actual == expected else {
                throw DataError(source, "checksum mismatch: SHA-256 \(actual), \(manifest) says \(expected) (corrupt or altered file)")
            }
        }
        return try IDX.parse(IDX.readDecompressed(url), expectedDimensions: dimensions, source: source)
    }
}
