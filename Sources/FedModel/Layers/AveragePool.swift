/// 2×2 average pooling with stride 2 (odd trailing rows or columns are dropped):
/// y = (((x₀₀ + x₀₁) + x₁₀) + x₁₁) · 0.25, and each input of a window gets ∂y · 0.25.
public struct AvgPool2D: Layer {
    public let inputShape: TensorShape

    public init(shape: TensorShape) {
        precondition(shape.height >= 2 && shape.width >= 2, "AvgPool2D needs at least 2x2 input")
        inputShape = shape
    }

    public var outputShape: TensorShape {
        TensorShape(height: inputShape.height / 2, width: inputShape.width / 2, channels: inputShape.channels)
    }
    public var parameterShapes: [(name: String, shape: [Int])] { [] }
    public var description: String { "AvgPool2x2" }
    public func scratchBytes(batch: Int) -> Int { 0 }
    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {}

    public func forward(_ f: ForwardBuffers) {
        let (h, w, c) = (inputShape.height, inputShape.width, inputShape.channels)
        var o = 0
        for b in 0..<f.batch {
            for y in 0..<(h / 2) {
                for x in 0..<(w / 2) {
                    let i00 = ((b * h + 2 * y) * w + 2 * x) * c
                    let i01 = i00 + c, i10 = i00 + w * c, i11 = i10 + c
                    for ch in 0..<c {
                        f.output[o] = (((f.input[i00 + ch] + f.input[i01 + ch]) + f.input[i10 + ch]) + f.input[i11 + ch]) * 0.25
                        o += 1
                    }
                }
            }
        }
    }

    public func backward(_ g: BackwardBuffers) {
        guard let dx = g.inputGradient else { return }
        let (h, w, c) = (inputShape.height, inputShape.width, inputShape.channels)
        dx.update(repeating: 0, count: g.forward.batch * inputShape.count)
        var o = 0
        for b in 0..<g.forward.batch {
            for y in 0..<(h / 2) {
                for x in 0..<(w / 2) {
                    let i00 = ((b * h + 2 * y) * w + 2 * x) * c
                    let i01 = i00 + c, i10 = i00 + w * c, i11 = i10 + c
                    for ch in 0..<c {
                        let share = g.outputGradient[o] * 0.25
                        dx[i00 + ch] = share
                        dx[i01 + ch] = share
                        dx[i10 + ch] = share
                        dx[i11 + ch] = share
                        o += 1
                    }
                }
            }
        }
    }
}

/// Global average pooling: an H×W×C activation becomes the C channel means (summed over the
/// positions in row-major order, then times 1/(H·W)); every position gets ∂y[c]/(H·W).
/// The usual last step of a compact convolutional model before its classifier.
public struct GlobalAvgPool: Layer {
    public let inputShape: TensorShape

    public init(shape: TensorShape) { inputShape = shape }

    public var outputShape: TensorShape { .vector(inputShape.channels) }
    public var parameterShapes: [(name: String, shape: [Int])] { [] }
    public var description: String { "GlobalAvgPool" }
    public func scratchBytes(batch: Int) -> Int { 0 }
    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {}

    private var scale: Float { 1 / Float(inputShape.height * inputShape.width) }

    public func forward(_ f: ForwardBuffers) {
        let (positions, c) = (inputShape.height * inputShape.width, inputShape.channels)
        for b in 0..<f.batch {
            let out = f.output + b * c
            out.update(repeating: 0, count: c)
            for p in 0..<positions {
                let row = f.input + (b * positions + p) * c
                for ch in 0..<c { out[ch] += row[ch] }
            }
            for ch in 0..<c { out[ch] *= scale }
        }
    }

    public func backward(_ g: BackwardBuffers) {
        guard let dx = g.inputGradient else { return }
        let (positions, c) = (inputShape.height * inputShape.width, inputShape.channels)
        for b in 0..<g.forward.batch {
            let dy = g.outputGradient + b * c
            for p in 0..<positions {
                let row = dx + (b * positions + p) * c
                for ch in 0..<c { row[ch] = dy[ch] * scale }
            }
        }
    }
}
