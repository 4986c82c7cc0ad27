/// 2-D convolution, stride s (1 unless asked), "same" zero padding (odd kernel size k, padding
/// k/2), NHWC; the output is ⌊(H − 1)/s⌋ + 1 by ⌊(W − 1)/s⌋ + 1.
///
/// y[b, y, x, o] = bias[o] + Σ_{ky, kx, i} x[b, y·s+ky−p, x·s+kx−p, i] · W[ky, kx, i, o],
/// with W stored `[k, k, in, out]`. Computed as im2col + ``gemm``: the patches of a batch
/// form a `(batch·h·w) × (k·k·in)` matrix that multiplies W seen as `(k·k·in) × out`.
/// Initialised like PyTorch's `nn.Conv2d`: uniform in ±1/√(k·k·in).
///
/// 3×3 and 5×5 kernels whose channel counts are multiples of 16 compute the forward pass and
/// ∂x (a "same" convolution of ∂y with the kernel turned half a turn) with Winograd's
/// F(2×2, k×k) instead (``WinogradPlan``), 2.8 times fewer multiplies for 5×5, and so does ∂W,
/// through the gradient with respect to the transformed filter. Stride-1 convolutions of
/// single-channel images (output channels multiples of 16) are summed directly instead
/// (``SingleChannelConvolution``).
public struct Conv2D: Layer {
    public let inputShape: TensorShape
    public let kernelSize: Int
    public let outputChannels: Int
    public let stride: Int
    /// The Winograd plan when this layer uses it.
    let winograd: WinogradPlan?
    /// The direct convolution when this layer's input has one channel.
    let direct: SingleChannelConvolution?
    /// Whether the forward pass and ∂x use Winograd's F(2×2, k×k).
    public var usesWinograd: Bool { winograd != nil }

    /// `fastPaths: false` forces im2col products everywhere (the reference the tests compare with).
    public init(input: TensorShape, kernelSize: Int, outputChannels: Int, stride: Int = 1, fastPaths: Bool = true) {
        precondition(kernelSize > 0 && kernelSize % 2 == 1, "Conv2D kernel size must be odd")
        precondition(outputChannels > 0, "Conv2D needs output channels")
        precondition(stride >= 1, "Conv2D stride must be positive")
        inputShape = input
        self.kernelSize = kernelSize
        self.outputChannels = outputChannels
        self.stride = stride
        let fits = stride == 1 && WinogradPlan.kernels.contains(kernelSize) && input.channels % 16 == 0 && outputChannels % 16 == 0
        self.winograd = fastPaths && fits ? WinogradPlan(kernel: kernelSize) : nil
        let single = stride == 1 && input.channels == 1 && outputChannels % 16 == 0
        self.direct = fastPaths && single
            ? SingleChannelConvolution(kernel: kernelSize, height: input.height, width: input.width, outputs: outputChannels) : nil
    }

    public var outputShape: TensorShape {
        TensorShape(height: (inputShape.height - 1) / stride + 1, width: (inputShape.width - 1) / stride + 1, channels: outputChannels)
    }
    public var parameterShapes: [(name: String, shape: [Int])] {
        [("weight", [kernelSize, kernelSize, inputShape.channels, outputChannels]), ("bias", [outputChannels])]
    }
    public var description: String {
        "Conv2D(\(kernelSize)x\(kernelSize)\(stride > 1 ? ", stride \(stride)" : ""), \(inputShape.channels)→\(outputChannels))"
    }

    /// Values in one im2col row: k·k·in.
    var patchSize: Int { kernelSize * kernelSize * inputShape.channels }
    /// Output positions per image (rows of one image's im2col matrix).
    var positions: Int { outputShape.height * outputShape.width }

    public func scratchBytes(batch: Int) -> Int {
        let transposed = aligned64(patchSize * outputChannels * MemoryLayout<Float>.stride)
        let filter = winograd.map { aligned64($0.transformedFilterCount(inputs: inputShape.channels, outputs: outputChannels) * MemoryLayout<Float>.stride) } ?? 0
        return columnBytes(batch: batch) + transposed + filter
    }

    /// The first region of scratch: the im2col matrix of the whole batch; or the batch's padded
    /// frames for the direct convolution; or with Winograd, for each half of the batch, its
    /// gradient with respect to the transformed filter and its chunk buffer
    /// (``WinogradPlan/accumulateFilterGradient(_:outputGradient:images:height:width:inputs:outputs:scratch:into:)``).
    private func columnBytes(batch: Int) -> Int {
        if let direct { return aligned64(batch * direct.frameCount * MemoryLayout<Float>.stride) }
        guard let winograd else { return aligned64(batch * positions * patchSize * MemoryLayout<Float>.stride) }
        return 2 * (gradientHalfBytes(winograd) + gradientChunkBytes(winograd))
    }

    private func gradientHalfBytes(_ winograd: WinogradPlan) -> Int {
        aligned64(winograd.transformedFilterCount(inputs: inputShape.channels, outputs: outputChannels) * MemoryLayout<Float>.stride)
    }

    private func gradientChunkBytes(_ winograd: WinogradPlan) -> Int {
        aligned64(winograd.filterGradientScratchCount(inputs: inputShape.channels, outputs: outputChannels) * MemoryLayout<Float>.stride)
    }

    /// The transformed filter (Winograd only), after the columns and the transposed weight.
    private func filterBuffer(_ scratch: UnsafeMutableRawPointer, batch: Int) -> UnsafeMutablePointer<Float> {
        let offset = columnBytes(batch: batch) + aligned64(patchSize * outputChannels * MemoryLayout<Float>.stride)
        return (scratch + offset).assumingMemoryBound(to: Float.self)
    }

    private func columnsBuffer(_ scratch: UnsafeMutableRawPointer) -> UnsafeMutablePointer<Float> {
        scratch.assumingMemoryBound(to: Float.self)
    }

    private func transposedBuffer(_ scratch: UnsafeMutableRawPointer, batch: Int) -> UnsafeMutablePointer<Float> {
        (scratch + columnBytes(batch: batch)).assumingMemoryBound(to: Float.self)
    }

    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {
        initializeUniform(parameters, fanIn: patchSize, generator: &generator)
    }

    public func forward(_ f: ForwardBuffers) {
        if let winograd {
            let filter = filterBuffer(f.scratch, batch: f.batch)
            winograd.transformFilter(f.parameters, inputs: inputShape.channels, outputs: outputChannels, into: filter)
            winograd.correlate(
                f.input, batch: f.batch, height: inputShape.height, width: inputShape.width, inputs: inputShape.channels,
                filter: filter, outputs: outputChannels, bias: f.parameters + patchSize * outputChannels,
                into: f.output, threads: f.threads)
            return
        }
        if let direct {
            let frames = columnsBuffer(f.scratch)
            forEachBatchChunk(f.batch, threads: f.threads) { images in
                direct.pad(f.input, images: images, into: frames)
                direct.forward(frames: frames, images: images, weights: f.parameters, bias: f.parameters + patchSize * outputChannels, into: f.output)
            }
            return
        }
        let columns = columnsBuffer(f.scratch)
        im2col(f.input, batch: f.batch, into: columns, threads: f.threads)
        let bias = f.parameters + patchSize * outputChannels
        let rows = f.batch * positions
        for r in 0..<rows {
            (f.output + r * outputChannels).update(from: bias, count: outputChannels)
        }
        gemm(
            rows: rows, columns: outputChannels, depth: patchSize,
            a: columns, rowStride: patchSize, depthStride: 1,
            b: f.parameters, ldb: outputChannels, c: f.output, ldc: outputChannels, accumulate: true, threads: f.threads)
    }

    public func backward(_ g: BackwardBuffers) {
        let f = g.forward
        let columns = columnsBuffer(f.scratch)
        let rows = f.batch * positions
        if let direct {
            // Kernel rows shared among the cores: each row's sums run in the same order on any number.
            let parts = min(f.threads, kernelSize)
            forEachBatchChunk(kernelSize, threads: parts) { rows in
                direct.filterGradient(frames: columns, outputGradient: g.outputGradient, batch: f.batch, rows: rows, into: g.parameterGradient)
            }
            sumRows(g.outputGradient, rows: rows, columns: outputChannels, into: g.parameterGradient + patchSize * outputChannels)
            guard let inputGradient = g.inputGradient else { return }
            forEachBatchChunk(f.batch, threads: f.threads) { images in
                direct.inputGradient(g.outputGradient, images: images, weights: f.parameters, into: inputGradient)
            }
            return
        }
        if let winograd {
            // ∂W through the transformed filter's gradient, summed separately over the two
            // halves of the batch, which may run on two cores, then added: the same sums in the
            // same order whatever the number of cores.
            let halves = max(1, min(2, f.batch))
            let (sums, chunks) = (f.scratch, f.scratch + 2 * gradientHalfBytes(winograd))
            func half(_ index: Int) {
                winograd.accumulateFilterGradient(
                    f.input, outputGradient: g.outputGradient, images: (f.batch * index / halves)..<(f.batch * (index + 1) / halves),
                    height: inputShape.height, width: inputShape.width, inputs: inputShape.channels, outputs: outputChannels,
                    scratch: (chunks + index * gradientChunkBytes(winograd)).assumingMemoryBound(to: Float.self),
                    into: (sums + index * gradientHalfBytes(winograd)).assumingMemoryBound(to: Float.self))
            }
            if f.threads > 1 && halves == 2 { parallelFor(halves, half) } else { for index in 0..<halves { half(index) } }
            let total = sums.assumingMemoryBound(to: Float.self)
            if halves == 2 {
                let other = (sums + gradientHalfBytes(winograd)).assumingMemoryBound(to: Float.self)
                for i in 0..<winograd.transformedFilterCount(inputs: inputShape.channels, outputs: outputChannels) { total[i] += other[i] }
            }
            winograd.filterGradient(total, inputs: inputShape.channels, outputs: outputChannels, into: g.parameterGradient)
        } else {
            // ∂W = colsᵀ·∂y
            gemm(
                rows: patchSize, columns: outputChannels, depth: rows,
                a: columns, rowStride: 1, depthStride: patchSize,
                b: g.outputGradient, ldb: outputChannels,
                c: g.parameterGradient, ldc: outputChannels, accumulate: false, threads: f.threads)
        }
        sumRows(g.outputGradient, rows: rows, columns: outputChannels, into: g.parameterGradient + patchSize * outputChannels)
        guard let inputGradient = g.inputGradient else { return }
        if let winograd {
            // ∂x[b, y, x, i] = Σ ∂y[b, y−ky+p, x−kx+p, o]·W[ky, kx, i, o]: a same convolution of ∂y
            // with W'[ky, kx, o, i] = W[k−1−ky, k−1−kx, i, o].
            let (k, inputs) = (kernelSize, inputShape.channels)
            let turned = transposedBuffer(f.scratch, batch: f.batch)
            for ky in 0..<k {
                for kx in 0..<k {
                    let source = f.parameters + ((k - 1 - ky) * k + (k - 1 - kx)) * inputs * outputChannels
                    transpose(source, rows: inputs, columns: outputChannels, into: turned + (ky * k + kx) * inputs * outputChannels)
                }
            }
            let filter = filterBuffer(f.scratch, batch: f.batch)
            winograd.transformFilter(turned, inputs: outputChannels, outputs: inputs, into: filter)
            winograd.correlate(
                g.outputGradient, batch: f.batch, height: inputShape.height, width: inputShape.width, inputs: outputChannels,
                filter: filter, outputs: inputs, bias: nil, into: inputGradient, threads: f.threads)
            return
        }
        // ∂cols = ∂y·Wᵀ, written over the columns (no longer needed), then folded back.
        let transposed = transposedBuffer(f.scratch, batch: f.batch)
        transpose(f.parameters, rows: patchSize, columns: outputChannels, into: transposed)
        gemm(
            rows: rows, columns: patchSize, depth: outputChannels,
            a: g.outputGradient, rowStride: outputChannels, depthStride: 1,
            b: transposed, ldb: patchSize, c: columns, ldc: patchSize, accumulate: false, threads: f.threads)
        col2im(columns, batch: f.batch, into: inputGradient, threads: f.threads)
    }

    func im2col(_ input: UnsafePointer<Float>, batch: Int, into columns: UnsafeMutablePointer<Float>, threads: Int) {
        let perImage = inputShape.count
        let perRows = positions * patchSize
        forEachBatchChunk(batch, threads: threads) { range in
            im2col(input + range.lowerBound * perImage, batch: range.count, into: columns + range.lowerBound * perRows)
        }
    }

    func col2im(_ columns: UnsafePointer<Float>, batch: Int, into gradient: UnsafeMutablePointer<Float>, threads: Int) {
        let perImage = inputShape.count
        let perRows = positions * patchSize
        forEachBatchChunk(batch, threads: threads) { range in
            col2im(columns + range.lowerBound * perRows, batch: range.count, into: gradient + range.lowerBound * perImage)
        }
    }

    /// Lays out each output position's receptive field as one row (zeros outside the image).
    /// Each kernel row's in-image part is one contiguous run of the input, copied at once.
    func im2col(_ input: UnsafePointer<Float>, batch: Int, into columns: UnsafeMutablePointer<Float>) {
        let (h, w, c) = (inputShape.height, inputShape.width, inputShape.channels)
        let k = kernelSize, pad = kernelSize / 2
        let (oh, ow) = (outputShape.height, outputShape.width)
        var row = columns
        for b in 0..<batch {
            let image = input + b * h * w * c
            for oy in 0..<oh {
                let y = oy * stride
                for ox in 0..<ow {
                    let x = ox * stride
                    // The kernel columns that fall inside the image: kx in first..<last.
                    let first = max(0, pad - x), last = min(k, w + pad - x)
                    var dst = row
                    for ky in 0..<k {
                        let iy = y + ky - pad
                        if iy < 0 || iy >= h {
                            dst.update(repeating: 0, count: k * c)
                            dst += k * c
                            continue
                        }
                        let source = image + (iy * w + x + first - pad) * c
                        if first > 0 { dst.update(repeating: 0, count: first * c) }
                        let run = (last - first) * c
                        if c == 1 {
                            // One float per kernel column: a call to memmove per run costs more than the copy.
                            for j in 0..<run { dst[first + j] = source[j] }
                        } else {
                            (dst + first * c).update(from: source, count: run)
                        }
                        if last < k { (dst + last * c).update(repeating: 0, count: (k - last) * c) }
                        dst += k * c
                    }
                    row += patchSize
                }
            }
        }
    }

    /// The adjoint of ``im2col(_:batch:into:)``: sums each row's entries back into the input positions.
    func col2im(_ columns: UnsafePointer<Float>, batch: Int, into gradient: UnsafeMutablePointer<Float>) {
        let (h, w, c) = (inputShape.height, inputShape.width, inputShape.channels)
        let k = kernelSize, pad = kernelSize / 2
        let (oh, ow) = (outputShape.height, outputShape.width)
        gradient.update(repeating: 0, count: batch * h * w * c)
        var row = columns
        for b in 0..<batch {
            let image = gradient + b * h * w * c
            for oy in 0..<oh {
                let y = oy * stride
                for ox in 0..<ow {
                    let x = ox * stride
                    var src = row
                    for ky in 0..<k {
                        let iy = y + ky - pad
                        if iy < 0 || iy >= h {
                            src += k * c
                            continue
                        }
                        let line = image + iy * w * c
                        for kx in 0..<k {
                            let ix = x + kx - pad
                            if ix >= 0 && ix < w {
                                let dst = line + ix * c
                                for ch in 0..<c { dst[ch] += src[ch] }
                            }
                            src += c
                        }
                    }
                    row += patchSize
                }
            }
        }
    }
}
