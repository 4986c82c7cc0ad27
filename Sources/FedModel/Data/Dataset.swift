import Foundation

/// Examples held once in memory: features as float32 (`count × sampleShape.count`,
/// example-major) and their targets: one class index per example (``labels``, for the softmax
/// loss), or a vector of ``classes`` floats per example (``values``, for regression and
/// multi-label tasks). Simulated clients refer to a dataset by index lists (``DatasetSlice``);
/// the arrays are never copied.
public struct Dataset: Sendable {
    /// The largest class count: token ids of a large vocabulary fit, a runaway label does not.
    public static let maximumClasses = 1 << 20

    /// Where the data came from, for messages.
    public let name: String
    public let sampleShape: TensorShape
    /// The class count (class labels), or the target values per example (value targets):
    /// the model's output size either way.
    public let classes: Int
    public let features: [Float]
    /// One class index per example; empty when the targets are values.
    public let labels: [Int32]
    /// `count × classes` target values, example-major; empty when the targets are class labels.
    public let values: [Float]
    public let count: Int
    /// The user or device each example came from, when the data says (the `natural` partition
    /// gives each one its own client).
    public let groups: [Int32]?

    /// Whether the targets are class indices (``labels``) rather than vectors (``values``).
    public var hasClassLabels: Bool { values.isEmpty }

    /// Class-labelled examples.
    public init(name: String, sampleShape: TensorShape, classes: Int, features: [Float], labels: [Int32], groups: [Int32]? = nil) throws {
        guard classes >= 2, classes <= Self.maximumClasses else { throw DataError(name, "class count \(classes) is outside 2...\(Self.maximumClasses)") }
        guard !labels.isEmpty else { throw DataError(name, "no examples") }
        guard features.count == labels.count * sampleShape.count else {
            throw DataError(name, "\(features.count) feature values do not make \(labels.count) examples of \(sampleShape.count)")
        }
        if let bad = labels.firstIndex(where: { $0 < 0 || Int($0) >= classes }) {
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
        self.values = []
        self.count = labels.count
    }

    /// Examples with a vector of `width` target values each (regression, multi-label).
    /// Targets must be finite; `unitInterval` also holds them to [0, 1] (binary cross-entropy).
    public init(name: String, sampleShape: TensorShape, features: [Float], values: [Float], width: Int, unitInterval: Bool = false, groups: [Int32]? = nil) throws {
        guard width >= 1, width <= Self.maximumClasses else { throw DataError(name, "target width \(width) is outside 1...\(Self.maximumClasses)") }
        guard !values.isEmpty, values.count % width == 0 else {
            throw DataError(name, "\(values.count) target values do not make examples of \(width)")
        }
        let count = values.count / width
        guard features.count == count * sampleShape.count else {
            throw DataError(name, "\(features.count) feature values do not make \(count) examples of \(sampleShape.count)")
        }
        if let bad = values.firstIndex(where: { !$0.isFinite || abs($0) > 1e9 || (unitInterval && !(0...1).contains($0)) }) {
            throw DataError(name, "example \(bad / width), target \(bad % width): \(values[bad]) is not \(unitInterval ? "in [0, 1]" : "a finite number of at most 1e9")")
        }
        if let groups, groups.count != count {
            throw DataError(name, "\(groups.count) user ids for \(count) examples")
        }
        self.groups = groups
        self.name = name
        self.sampleShape = sampleShape
        self.classes = width
        self.features = features
        self.labels = []
        self.values = values
        self.count = count
    }

    /// The same targets with other features (`features.count` must be `count × shape.count`).
    public func replacingFeatures(_ features: [Float], shape: TensorShape, name: String? = nil) throws -> Dataset {
        if hasClassLabels {
            return try Dataset(name: name ?? self.name, sampleShape: shape, classes: classes, features: features, labels: labels, groups: groups)
        }
        return try Dataset(name: name ?? self.name, sampleShape: shape, features: features, values: values, width: classes, groups: groups)
    }

    /// The same examples with their targets read as `format` asks, for a model learned by a
    /// device whose data was read before the model was known: class labels become one value
    /// each (a regression on the label, or one binary label); single values that are whole
    /// numbers from 0 become class labels. Returns `self` when nothing changes; throws naming
    /// the data when the targets cannot be read that way.
    public func converted(to format: TargetFormat) throws -> Dataset {
        switch format {
        case .classes(let classes):
            if hasClassLabels {
                if let classes, self.classes > classes {
                    throw DataError(name, "\(self.classes) classes, the model has \(classes)")
                }
                return self
            }
            guard self.classes == 1 else { throw DataError(name, "\(self.classes) target values per example; the model needs one class label") }
            return try format.dataset(name: name, source: name, sampleShape: sampleShape, features: features, targets: values.map(Double.init), width: 1, groups: groups)
        case .values(let width, _):
            if !hasClassLabels {
                if let width, width != self.classes { throw DataError(name, "\(self.classes) target values per example, the model has \(width) outputs") }
                return try format.dataset(name: name, source: name, sampleShape: sampleShape, features: features, targets: values.map(Double.init), width: self.classes, groups: groups)
            }
            return try format.dataset(name: name, source: name, sampleShape: sampleShape, features: features, targets: labels.map(Double.init), width: 1, groups: groups)
        }
    }

    /// The examples at `indices`, copied out.
    public func subset(_ indices: [Int], name: String? = nil) throws -> Dataset {
        let width = sampleShape.count
        var features = [Float]()
        features.reserveCapacity(indices.count * width)
        for i in indices { features.append(contentsOf: self.features[(i * width)..<((i + 1) * width)]) }
        let groups = self.groups.map { g in indices.map { g[$0] } }
        if hasClassLabels {
            return try Dataset(name: name ?? self.name, sampleShape: sampleShape, classes: classes, features: features,
                               labels: indices.map { labels[$0] }, groups: groups)
        }
        var values = [Float]()
        values.reserveCapacity(indices.count * classes)
        for i in indices { values.append(contentsOf: self.values[(i * classes)..<((i + 1) * classes)]) }
        return try Dataset(name: name ?? self.name, sampleShape: sampleShape, features: features, values: values, width: classes, groups: groups)
    }

    /// Copies the examples at `indices` into a batch buffer: features, and the class labels or
    /// target values (`classes` per example), whichever this dataset has.
    public func gather(
        _ indices: UnsafeBufferPointer<Int32>, features destination: UnsafeMutablePointer<Float>,
        labels labelDestination: UnsafeMutablePointer<Int32>, values valueDestination: UnsafeMutablePointer<Float>
    ) {
        let width = sampleShape.count
        let hasLabels = hasClassLabels
        let targetWidth = classes
        features.withUnsafeBufferPointer { source in
            values.withUnsafeBufferPointer { targets in
                for (row, index) in indices.enumerated() {
                    let i = Int(index)
                    (destination + row * width).update(from: source.baseAddress! + i * width, count: width)
                    if hasLabels {
                        labelDestination[row] = labels[i]
                    } else {
                        (valueDestination + row * targetWidth).update(from: targets.baseAddress! + i * targetWidth, count: targetWidth)
                    }
                }
            }
        }
    }

    /// Copies the examples at `indices` into a workspace's input and target buffers.
    public func gather(_ indices: UnsafeBufferPointer<Int32>, into workspace: Workspace) {
        gather(indices, features: workspace.input, labels: workspace.labels, values: workspace.targets)
    }

    /// Number of examples of each class (empty for value targets).
    public func classCounts() -> [Int] {
        guard hasClassLabels else { return [] }
        var counts = [Int](repeating: 0, count: classes)
        for label in labels { counts[Int(label)] += 1 }
        return counts
    }

    /// The whole dataset as one slice.
    public var all: DatasetSlice { DatasetSlice(dataset: self, indices: (0..<Int32(count)).map { $0 }) }
}

/// How a reader takes a dataset's targets: class indices, or vectors of values.
public enum TargetFormat: Sendable, Equatable, CustomStringConvertible {
    /// Integer class indices from 0; the class count when the model fixes it (else one more
    /// than the largest label).
    case classes(Int?)
    /// `width` values per example (when the model fixes it); `unitInterval` holds them to
    /// [0, 1] (multi-label targets for binary cross-entropy).
    case values(width: Int?, unitInterval: Bool)

    /// What a model with this loss and output size trains against.
    public init(loss: Loss, outputs: Int?) {
        self = loss.usesClassLabels ? .classes(outputs) : .values(width: outputs, unitInterval: loss == .binaryCrossEntropy)
    }

    /// The format a model's task reads.
    public init(_ spec: ModelSpec) { self.init(loss: spec.loss, outputs: spec.classes) }

    public var description: String {
        switch self {
        case .classes: "class labels"
        case .values(let width, let unit): "\(width.map { "\($0) " } ?? "")\(unit ? "multi-hot " : "")target values per example"
        }
    }

    /// Builds a dataset from features and the raw target numbers read from `source`
    /// (one per example for classes, `width` per example for values), naming `source` and the
    /// example in errors.
    public func dataset(name: String, source: String, sampleShape: TensorShape, features: [Float], targets raw: [Double], width rawWidth: Int, groups: [Int32]? = nil) throws -> Dataset {
        switch self {
        case .classes(let classes):
            guard rawWidth == 1 else { throw DataError(source, "\(rawWidth) target values per example; class labels are one integer per example") }
            var labels = [Int32](repeating: 0, count: raw.count)
            let limit = classes ?? Dataset.maximumClasses
            for (i, value) in raw.enumerated() {
                guard value.rounded() == value, value.isFinite else {
                    throw DataError(source, "example \(i): label \(value) is not a whole number (class labels are integers from 0)")
                }
                guard value >= 0, value < Double(limit) else {
                    throw DataError(source, "example \(i): label \(String(format: "%.0f", value)) is outside 0..<\(limit)\(classes != nil ? ", the model's classes" : "")")
                }
                labels[i] = Int32(value)
            }
            let widest = Int(labels.max() ?? 0) + 1
            return try Dataset(name: name, sampleShape: sampleShape, classes: classes ?? max(2, widest), features: features, labels: labels, groups: groups)
        case .values(let width, let unitInterval):
            if let width, width != rawWidth {
                throw DataError(source, "\(rawWidth) target values per example, the model has \(width) outputs")
            }
            var values = [Float](repeating: 0, count: raw.count)
            for (i, value) in raw.enumerated() {
                guard value.isFinite, abs(value) <= 1e9, !unitInterval || (0...1).contains(value) else {
                    throw DataError(source, "example \(i / rawWidth), target \(i % rawWidth): \(value) is not \(unitInterval ? "in [0, 1] (multi-hot labels)" : "a finite number of at most 1e9")")
                }
                values[i] = Float(value)
            }
            return try Dataset(name: name, sampleShape: sampleShape, features: features, values: values, width: rawWidth, unitInterval: unitInterval, groups: groups)
        }
    }
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
