/// Token embedding: each input value is a token id 0 ≤ id < vocabulary (as a float, as the
/// data's features are), and becomes that row of a `[vocabulary, dimension]` table. A sequence
/// of T ids becomes a T × 1 × dimension activation, one step per row, which ``GRU`` reads.
/// Initialised like PyTorch's `nn.Embedding`: N(0, 1). Ids are not differentiable: the layer
/// passes no gradient below it. An id outside the vocabulary (which ``Network/accepts(_:)``
/// refuses in the data) is clamped, so a pass never reads outside the table.
public struct Embedding: Layer {
    public let inputShape: TensorShape
    public let vocabulary: Int
    public let dimension: Int

    public init(input: TensorShape, vocabulary: Int, dimension: Int) {
        precondition(vocabulary > 0 && dimension > 0, "embedding needs a vocabulary and a dimension")
        inputShape = input
        self.vocabulary = vocabulary
        self.dimension = dimension
    }

    public var outputShape: TensorShape { TensorShape(height: inputShape.count, width: 1, channels: dimension) }
    public var parameterShapes: [(name: String, shape: [Int])] { [("weight", [vocabulary, dimension])] }
    public var description: String { "Embedding(\(vocabulary) → \(dimension))" }
    public func scratchBytes(batch: Int) -> Int { 0 }

    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {
        for i in parameters.indices { parameters[i] = Float(generator.nextGaussian()) }
    }

    @inline(__always)
    func row(_ value: Float) -> Int {
        guard value.isFinite else { return 0 }
        return min(max(Int(value), 0), vocabulary - 1)
    }

    public func forward(_ f: ForwardBuffers) {
        let count = f.batch * inputShape.count
        for i in 0..<count {
            (f.output + i * dimension).update(from: f.parameters + row(f.input[i]) * dimension, count: dimension)
        }
    }

    public func backward(_ g: BackwardBuffers) {
        let f = g.forward
        g.parameterGradient.update(repeating: 0, count: vocabulary * dimension)
        for i in 0..<(f.batch * inputShape.count) {
            let dw = g.parameterGradient + row(f.input[i]) * dimension, dy = g.outputGradient + i * dimension
            for j in 0..<dimension { dw[j] += dy[j] }
        }
        g.inputGradient?.update(repeating: 0, count: f.batch * inputShape.count)
    }
}
