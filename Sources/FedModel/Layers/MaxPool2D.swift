/// 2×2 max pooling with stride 2 (odd trailing rows or columns are dropped).
/// The forward pass records which input won each window; backward routes ∂y there.
public struct MaxPool2D: Layer {
    public let inputShape: TensorShape

    public init(shape: TensorShape) {
        precondition(shape.height >= 2 && shape.width >= 2, "MaxPool2D needs at least 2x2 input")
        inputShape = shape
    }

    public var outputShape: TensorShape {
        TensorShape(height: inputShape.height / 2, width: inputShape.width / 2, channels: inputShape.channels)
    }
    public var parameterShapes: [(name: String, shape: [Int])] { [] }
    public var description: String { "MaxPool2x2" }

    public func scratchBytes(batch: Int) -> Int {
        aligned64(batch * outputShape.count * MemoryLayout<Int32>.stride)
    }

    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {}

    public func forward(_ f: ForwardBuffers) {
        let winners = f.scratch.assumingMemoryBound(to: Int32.self)
        let (h, w, c) = (inputShape.height, inputShape.width, inputShape.channels)
        let (oh, ow) = (h / 2, w / 2)
        var o = 0
        for b in 0..<f.batch {
            let base = b * h * w * c
            for y in 0..<oh {
                for x in 0..<ow {
                    let i00 = base + ((2 * y) * w + 2 * x) * c
                    let i01 = i00 + c
                    let i10 = i00 + w * c
                    let i11 = i10 + c
                    for ch in 0..<c {
                        var best = i00 + ch
                        var value = f.input[best]
                        if f.input[i01 + ch] > value { best = i01 + ch; value = f.input[best] }
                        if f.input[i10 + ch] > value { best = i10 + ch; value = f.input[best] }
                        if f.input[i11 + ch] > value { best = i11 + ch; value = f.input[best] }
                        f.output[o] = value
                        winners[o] = Int32(truncatingIfNeeded: best)
                        o += 1
                    }
                }
            }
        }
    }

    public func backward(_ g: BackwardBuffers) {
        guard let dx = g.inputGradient else { return }
        let winners = g.forward.scratch.assumingMemoryBound(to: Int32.self)
        dx.update(repeating: 0, count: g.forward.batch * inputShape.count)
        for o in 0..<(g.forward.batch * outputShape.count) {
            dx[Int(winners[o])] += g.outputGradient[o]
        }
    }
}
