/// 2-D convolution, stride 1, "same" zero padding (odd kernel size k, padding k/2), NHWC.
///
/// y[b, y, x, o] = bias[o] + Σ_{ky, kx, i} x[b, y+ky−p, x+kx−p, i] · W[ky, kx, i, o],
/// with W stored `[k, k, in, out]`. Computed as im2col + ``gemm``: the patches of a batch
/// form a `(batch·h·w) × (k·k·in)` matrix that multiplies W seen as `(k·k·in) × out`.
/// Initialised like PyTorch's `nn.Conv2d`: uniform in ±1/√(k·k·in).
public struct Conv2D: Layer {
    public let inputShape: TensorShape
    public let kernelSize: Int
    public let outputChannels: Int

    public init(input: TensorShape, kernelSize: Int, outputChannels: Int) {
        precondition(kernelSize > 0 && kernelSize % 2 == 1, "Conv2D kernel size must be odd")
        precondition(outputChannels > 0, "Conv2D needs output channels")
        inputShape = input
        self.kernelSize = kernelSize
        self.outputChannels = outputChannels
    }

    public var outputShape: TensorShape {
        TensorShape(height: inputShape.height, width: inputShape.width, channels: outputChannels)
    }
    public var parameterShapes: [(name: String, shape: [Int])] {
        [("weight", [kernelSize, kernelSize, inputShape.channels, outputChannels]), ("bias", [outputChannels])]
    }
    public var description: String { "Conv2D(\(kernelSize)x\(kernelSize), \(inputShape.channels)→\(outputChannels))" }

    /// Values in one im2col row: k·k·in.
    var patchSize: Int { kernelSize * kernelSize * inputShape.channels }
    var positions: Int { inputShape.height * inputShape.width }

    public func scratchBytes(batch: Int) -> Int {
        let columns = aligned64(batch * positions * patchSize * MemoryLayout<Float>.stride)
        let transposed = aligned64(patchSize * outputChannels * MemoryLayout<Float>.stride)
        return columns + transposed
    }

    private func columnsBuffer(_ scratch: UnsafeMutableRawPointer) -> UnsafeMutablePointer<Float> {
        scratch.assumingMemoryBound(to: Float.self)
    }

    private func transposedBuffer(_ scratch: UnsafeMutableRawPointer, batch: Int) -> UnsafeMutablePointer<Float> {
        (scratch + aligned64(batch * positions * patchSize * MemoryLayout<Float>.stride)).assumingMemoryBound(to: Float.self)
    }

    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {
        initializeUniform(parameters, fanIn: patchSize, generator: &generator)
    }

    public func forward(_ f: ForwardBuffers) {
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
        // ∂W = colsᵀ·∂y
        gemm(
            rows: patchSize, columns: outputChannels, depth: rows,
            a: columns, rowStride: 1, depthStride: patchSize,
            b: g.outputGradient, ldb: outputChannels,
            c: g.parameterGradient, ldc: outputChannels, accumulate: false, threads: f.threads)
        sumRows(g.outputGradient, rows: rows, columns: outputChannels, into: g.parameterGradient + patchSize * outputChannels)
        guard let inputGradient = g.inputGradient else { return }
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
        var row = columns
        for b in 0..<batch {
            let image = input + b * h * w * c
            for y in 0..<h {
                for x in 0..<w {
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
        gradient.update(repeating: 0, count: batch * h * w * c)
        var row = columns
        for b in 0..<batch {
            let image = gradient + b * h * w * c
            for y in 0..<h {
                for x in 0..<w {
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
