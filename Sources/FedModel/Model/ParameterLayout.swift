/// One named float32 tensor of a model: a *shard*, the unit that deltas, codecs and the
/// wire protocol refer to by ``index``.
public struct ParameterTensor: Hashable, Sendable {
    /// Position of the shard in the layout (0-based), stable for a given architecture.
    public var index: Int
    /// For example `dense1.weight`.
    public var name: String
    /// Dimensions, outermost first. Dense weights are `[in, out]` (y = xW + b);
    /// convolution weights are `[kh, kw, in, out]`; biases are `[out]`.
    public var shape: [Int]
    /// Offset of the first value in the model's flat parameter vector.
    public var offset: Int
    /// Whether training changes it. In a model with low-rank adapters only the adapters are
    /// trainable; every other tensor is frozen at the base model's values.
    public var trainable = true

    /// Number of values.
    public var count: Int { shape.reduce(1, *) }
    /// Offsets covered in the flat parameter vector.
    public var range: Range<Int> { offset..<(offset + count) }
    /// The columns of the tensor read as a matrix (its last dimension; a convolution kernel
    /// [k, k, in, out] is a (k·k·in) × out matrix), or nil for a vector: what the low-rank
    /// update codec factors (Protocol.md §8.6).
    public var columns: Int? { shape.count >= 2 ? shape.last : nil }
}

/// The stable layout of a model's parameters: tensors in order, packed back to back in
/// one contiguous float32 vector.
public struct ParameterLayout: Hashable, Sendable {
    public private(set) var tensors: [ParameterTensor] = []
    /// Total number of float32 parameters.
    public private(set) var parameterCount = 0

    public init() {}

    mutating func append(name: String, shape: [Int], trainable: Bool = true) {
        let tensor = ParameterTensor(index: tensors.count, name: name, shape: shape, offset: parameterCount, trainable: trainable)
        tensors.append(tensor)
        parameterCount += tensor.count
    }

    /// The indices of the tensors training changes (all of them, unless the model has adapters).
    public var trainableIndices: [Int] { tensors.filter(\.trainable).map(\.index) }

    /// The tensor called `name`, if any.
    public func tensor(named name: String) -> ParameterTensor? {
        tensors.first { $0.name == name }
    }
}
