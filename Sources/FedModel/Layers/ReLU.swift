/// Rectified linear unit, y = max(0, x), elementwise. Backward passes ∂y where y > 0.
public struct ReLU: Layer {
    public let shape: TensorShape

    public init(shape: TensorShape) { self.shape = shape }

    public var inputShape: TensorShape { shape }
    public var outputShape: TensorShape { shape }
    public var parameterShapes: [(name: String, shape: [Int])] { [] }
    public var description: String { "ReLU" }
    public func scratchBytes(batch: Int) -> Int { 0 }
    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {}

    public func forward(_ f: ForwardBuffers) {
        let n = f.batch * shape.count
        for i in 0..<n { f.output[i] = max(f.input[i], 0) }
    }

    public func backward(_ g: BackwardBuffers) {
        guard let dx = g.inputGradient else { return }
        let y = UnsafePointer(g.forward.output)
        let dy = g.outputGradient
        let n = g.forward.batch * shape.count
        for i in 0..<n { dx[i] = y[i] > 0 ? dy[i] : 0 }
    }
}
