import Crypto
import Foundation

/// The MNIST handwritten digits: 28×28 grey images scaled to [0, 1], labels 0–9.
public enum MNIST {
    public static let trainImages = "train-images-idx3-ubyte.gz"
    public static let trainLabels = "train-labels-idx1-ubyte.gz"
    public static let testImages = "t10k-images-idx3-ubyte.gz"
    public static let testLabels = "t10k-labels-idx1-ubyte.gz"

    /// SHA-256 of each file's uncompressed bytes, as published with the bundled copy.
    public static let checksums: [String: String] = [
        trainImages: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        trainLabels: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        testImages: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        testLabels: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ]

    /// Loads the training or test split from a directory holding the four standard files.
    /// Files with a known name are checked against ``checksums`` (after decompression).
    /// With `examples`, only that range is kept (and converted to floats), which keeps a device
    /// that holds a slice of MNIST small.
    public static func load(directory: URL, train: Bool, verifyChecksums: Bool = true, examples: Range<Int>? = nil) throws -> Dataset {
        let imageURL = directory.appendingPathComponent(train ? trainImages : testImages)
        let labelURL = directory.appendingPathComponent(train ? trainLabels : testLabels)
        return try load(images: imageURL, labels: labelURL, verifyChecksums: verifyChecksums, examples: examples)
    }

    /// Loads an image file and a label file in IDX format (gzipped or raw).
    public static func load(images imageURL: URL, labels labelURL: URL, verifyChecksums: Bool = true, examples: Range<Int>? = nil) throws -> Dataset {
        let images = try readVerified(imageURL, dimensions: 3, verify: verifyChecksums)
        let labels = try readVerified(labelURL, dimensions: 1, verify: verifyChecksums)
        let (count, height, width) = (images.dimensions[0], images.dimensions[1], images.dimensions[2])
        guard labels.dimensions[0] == count else {
            throw DataError(labelURL.path, "has \(labels.dimensions[0]) labels but \(imageURL.lastPathComponent) has \(count) images")
        }
        let range = examples ?? 0..<count
        guard range.lowerBound >= 0, range.upperBound <= count, !range.isEmpty else {
            throw DataError(imageURL.path, "examples \(range) outside the file's 0..<\(count)")
        }
        let scale: Float = 1 / 255
        let pixels = height * width
        let imageStart = images.bytes.startIndex, labelStart = labels.bytes.startIndex
        let features = images.bytes[(imageStart + range.lowerBound * pixels)..<(imageStart + range.upperBound * pixels)].map { Float($0) * scale }
        return try Dataset(
            name: imageURL.lastPathComponent, sampleShape: TensorShape(height: height, width: width, channels: 1),
            classes: 10, features: features, labels: Array(labels.bytes[(labelStart + range.lowerBound)..<(labelStart + range.upperBound)]))
    }

    private static func readVerified(_ url: URL, dimensions: Int, verify: Bool) throws -> (dimensions: [Int], bytes: ArraySlice<UInt8>) {
        let source = url.path
        let data = try IDX.readDecompressed(url)
        let base = url.lastPathComponent.hasSuffix(".gz") ? url.lastPathComponent : url.lastPathComponent + ".gz"
        if verify, let expected = checksums[base] {
            let actual = SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
            guard actual == expected else {
                throw DataError(source, "checksum mismatch: SHA-256 \(actual), expected \(expected) (corrupt or altered file)")
            }
        }
        return try IDX.parse(data, expectedDimensions: dimensions, source: source)
    }
}
