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
        forEachElementChunk(f.batch * shape.count, threads: f.threads) { range in
            for i in range { f.output[i] = max(f.input[i], 0) }
        }
    }

    public func backward(_ g: BackwardBuffers) {
        guard let dx = g.inputGradient else { return }
        let y = UnsafePointer(g.forward.output)
        let dy = g.outputGradient
        forEachElementChunk(g.forward.batch * shape.count, threads: g.forward.threads) { range in
            for i in range { dx[i] = y[i] > 0 ? dy[i] : 0 }
        }
    }
}

/// Cuts an elementwise pass over `count` values among `threads` cores when it is large enough
/// to pay for waking them (in multiples of 16 values, so no two threads share a vector).
func forEachElementChunk(_ count: Int, threads: Int, _ body: (Range<Int>) -> Void) {
    let parts = count >= 1 << 16 ? threads : 1
    guard parts > 1, let chunks = evenChunks(count, quantum: 16, parts: parts) else {
        body(0..<count)
        return
    }
    parallelFor(chunks.count) { body(chunks[$0]) }
}
