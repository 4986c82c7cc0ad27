/// Depthwise 2-D convolution (one k×k filter per channel, channel multiplier 1), stride s,
/// "same" zero padding k/2, NHWC: with a following 1×1 convolution it is the separable block of
/// MobileNet (Howard et al. 2017), about k² times fewer multiplies and parameters than a full
/// k×k convolution between the same channels.
///
/// y[b, oy, ox, c] = bias[c] + Σ_{ky, kx} x[b, oy·s + ky − p, ox·s + kx − p, c] · W[ky, kx, c],
/// with W stored `[k, k, C]`. Initialised like PyTorch's depthwise `nn.Conv2d` (fan-in k·k).
/// The channel loop is innermost, over contiguous NHWC values, so it vectorises.
public struct DepthwiseConv2D: Layer {
    public let inputShape: TensorShape
    public let kernelSize: Int
    public let stride: Int

    public init(input: TensorShape, kernelSize: Int, stride: Int = 1) {
        precondition(kernelSize > 0 && kernelSize % 2 == 1, "depthwise kernel size must be odd")
        precondition(stride >= 1, "stride must be positive")
        inputShape = input
        self.kernelSize = kernelSize
        self.stride = stride
    }

    public var outputShape: TensorShape {
        TensorShape(height: (inputShape.height - 1) / stride + 1, width: (inputShape.width - 1) / stride + 1, channels: inputShape.channels)
    }
    public var parameterShapes: [(name: String, shape: [Int])] {
        [("weight", [kernelSize, kernelSize, inputShape.channels]), ("bias", [inputShape.channels])]
    }
    public var description: String {
        "DepthwiseConv2D(\(kernelSize)x\(kernelSize)\(stride > 1 ? ", stride \(stride)" : ""), \(inputShape.channels))"
    }
    /// Per-thread partial ∂W and ∂b for the two halves of the batch (see ``backward(_:)``).
    public func scratchBytes(batch: Int) -> Int { 2 * (kernelSize * kernelSize + 1) * inputShape.channels * MemoryLayout<Float>.stride }

    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {
        initializeUniform(parameters, fanIn: kernelSize * kernelSize, generator: &generator)
    }

    public func forward(_ f: ForwardBuffers) {
        let (h, w, c) = (inputShape.height, inputShape.width, inputShape.channels)
        let (oh, ow) = (outputShape.height, outputShape.width)
        let k = kernelSize, pad = kernelSize / 2, s = stride
        let weight = f.parameters, bias = f.parameters + k * k * c
        forEachBatchChunk(f.batch, threads: f.threads) { images in
            for b in images {
                let image = f.input + b * h * w * c
                for oy in 0..<oh {
                    for ox in 0..<ow {
                        let out = f.output + ((b * oh + oy) * ow + ox) * c
                        out.update(from: bias, count: c)
                        for ky in 0..<k {
                            let iy = oy * s + ky - pad
                            if iy < 0 || iy >= h { continue }
                            for kx in 0..<k {
                                let ix = ox * s + kx - pad
                                if ix < 0 || ix >= w { continue }
                                let x = image + (iy * w + ix) * c, wk = weight + (ky * k + kx) * c
                                for ch in 0..<c { out[ch] += x[ch] * wk[ch] }
                            }
                        }
                    }
                }
            }
        }
    }

    /// ∂W and ∂b are summed over the two halves of the batch separately (on two cores when
    /// allowed) and then added, so the bits do not depend on the number of cores; ∂x is each
    /// image's own.
    public func backward(_ g: BackwardBuffers) {
        let f = g.forward
        let (h, w, c) = (inputShape.height, inputShape.width, inputShape.channels)
        let (oh, ow) = (outputShape.height, outputShape.width)
        let k = kernelSize, pad = kernelSize / 2, s = stride
        let count = (k * k + 1) * c
        let partials = f.scratch.assumingMemoryBound(to: Float.self)
        let halves = min(2, f.batch)
        func half(_ index: Int) {
            let sums = partials + index * count
            sums.update(repeating: 0, count: count)
            let dBias = sums + k * k * c
            for b in (f.batch * index / halves)..<(f.batch * (index + 1) / halves) {
                let image = f.input + b * h * w * c
                for oy in 0..<oh {
                    for ox in 0..<ow {
                        let dy = g.outputGradient + ((b * oh + oy) * ow + ox) * c
                        for ch in 0..<c { dBias[ch] += dy[ch] }
                        for ky in 0..<k {
                            let iy = oy * s + ky - pad
                            if iy < 0 || iy >= h { continue }
                            for kx in 0..<k {
                                let ix = ox * s + kx - pad
                                if ix < 0 || ix >= w { continue }
                                let x = image + (iy * w + ix) * c, dw = sums + (ky * k + kx) * c
                                for ch in 0..<c { dw[ch] += dy[ch] * x[ch] }
                            }
                        }
                    }
                }
            }
        }
        if f.threads > 1 { parallelFor(halves, half) } else { for index in 0..<halves { half(index) } }
        for i in 0..<count { g.parameterGradient[i] = halves == 2 ? partials[i] + partials[count + i] : partials[i] }
        guard let dx = g.inputGradient else { return }
        let weight = f.parameters
        forEachBatchChunk(f.batch, threads: f.threads) { images in
            for b in images {
                let image = dx + b * h * w * c
                image.update(repeating: 0, count: h * w * c)
                for oy in 0..<oh {
                    for ox in 0..<ow {
                        let dy = g.outputGradient + ((b * oh + oy) * ow + ox) * c
                        for ky in 0..<k {
                            let iy = oy * s + ky - pad
                            if iy < 0 || iy >= h { continue }
                            for kx in 0..<k {
                                let ix = ox * s + kx - pad
                                if ix < 0 || ix >= w { continue }
                                let x = image + (iy * w + ix) * c, wk = weight + (ky * k + kx) * c
                                for ch in 0..<c { x[ch] += dy[ch] * wk[ch] }
                            }
                        }
                    }
                }
            }
        }
    }
}
