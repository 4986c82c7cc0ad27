/// Labelled examples held once in memory: features as float32 (`count × sampleShape.count`,
/// example-major) and one class label per example. Simulated clients refer to a dataset
/// by index lists (``DatasetSlice``); the arrays are never copied.
public struct Dataset: Sendable {
    /// Where the data came from, for messages.
    public let name: String
    public let sampleShape: TensorShape
    public let classes: Int
    public let features: [Float]
    public let labels: [UInt8]
    /// The user or device each example came from, when the data says (the `natural` partition
    /// gives each one its own client).
    public let groups: [Int32]?

    public var count: Int { labels.count }

    public init(name: String, sampleShape: TensorShape, classes: Int, features: [Float], labels: [UInt8], groups: [Int32]? = nil) throws {
        guard classes >= 2, classes <= 256 else { throw DataError(name, "class count \(classes) is outside 2...256") }
        guard features.count == labels.count * sampleShape.count else {
            throw DataError(name, "\(features.count) feature values do not make \(labels.count) examples of \(sampleShape.count)")
        }
        if let bad = labels.firstIndex(where: { Int($0) >= classes }) {
            throw DataError(name, "example \(bad) has label \(labels[bad]), outside 0..<\(classes)")
        }
        if let groups, groups.count != labels.count {
            throw DataError(name, "\(groups.count) user ids for \(labels.count) examples")
        }
        self.groups = groups
        self.name = name
        self.sampleShape = sampleShape
        self.classes = classes
        self.features = features
        self.labels = labels
    }

    /// Copies the examples at `indices` into a batch buffer.
    public func gather(
        _ indices: UnsafeBufferPointer<Int32>, features destination: UnsafeMutablePointer<Float>,
        labels labelDestination: UnsafeMutablePointer<UInt8>
    ) {
        let width = sampleShape.count
        features.withUnsafeBufferPointer { source in
            for (row, index) in indices.enumerated() {
                let i = Int(index)
                (destination + row * width).update(from: source.baseAddress! + i * width, count: width)
                labelDestination[row] = labels[i]
            }
        }
    }

    /// Number of examples of each class.
    public func classCounts() -> [Int] {
        var counts = [Int](repeating: 0, count: classes)
        for label in labels { counts[Int(label)] += 1 }
        return counts
    }

    /// The whole dataset as one slice.
    public var all: DatasetSlice { DatasetSlice(dataset: self, indices: (0..<Int32(count)).map { $0 }) }
}

/// A client's share of a dataset: indices into the shared arrays.
public struct DatasetSlice: Sendable {
    public let dataset: Dataset
    public let indices: [Int32]
    public var count: Int { indices.count }

    public init(dataset: Dataset, indices: [Int32]) {
        self.dataset = dataset
        self.indices = indices
    }
}

/// A data file or data set that cannot be used, naming the file and the problem.
public struct DataError: Error, CustomStringConvertible, Equatable {
    public var source: String
    public var problem: String
    public init(_ source: String, _ problem: String) {
        self.source = source
        self.problem = problem
    }
    public var description: String { "\(source): \(problem)" }
}
