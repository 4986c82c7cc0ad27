import CMemoryHints

/// Fully connected layer: y = xW + b, with W stored `[in, out]` row-major and b `[out]`.
///
/// Initialised like PyTorch's `nn.Linear`: W and b uniform in ±1/√in.
/// Backward: ∂W = xᵀ·∂y, ∂b = Σ_batch ∂y, ∂x = ∂y·Wᵀ (``gemmTransposedB``, reading each row of W once).
public struct Dense: Layer {
    public let inputCount: Int
    public let outputCount: Int

    public init(inputs: Int, outputs: Int) {
        precondition(inputs > 0 && outputs > 0, "Dense needs positive sizes")
        inputCount = inputs
        outputCount = outputs
    }

    public var inputShape: TensorShape { .vector(inputCount) }
    public var outputShape: TensorShape { .vector(outputCount) }
    public var parameterShapes: [(name: String, shape: [Int])] {
        [("weight", [inputCount, outputCount]), ("bias", [outputCount])]
    }
    public var description: String { "Dense(\(inputCount)→\(outputCount))" }

    public func scratchBytes(batch: Int) -> Int { 0 }

    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {
        initializeUniform(parameters, fanIn: inputCount, generator: &generator)
    }

    public func forward(_ f: ForwardBuffers) {
        let weight = f.parameters
        let bias = f.parameters + inputCount * outputCount
        for b in 0..<f.batch {
            (f.output + b * outputCount).update(from: bias, count: outputCount)
        }
        // A small batch against a weight too large to stay in cache between steps: stream the
        // weight row by row (same sums, same order, see gemmStreamingB).
        let streamed = f.batch <= Self.streamingBatchLimit && inputCount * outputCount >= Self.streamingWeightFloats
            ? outputCount / 32 * 32 : 0
        if streamed > 0 {
            let threads = f.batch * inputCount * streamed >= parallelGEMMThreshold ? f.threads : 1
            let chunks = evenChunks(streamed, quantum: 32, parts: threads) ?? [0..<streamed]
            parallelFor(chunks.count) { t in
                let n = chunks[t]
                withUnsafeTemporaryAllocation(byteCount: f.batch * n.count * MemoryLayout<Float>.stride, alignment: 64) { sums in
                    gemmStreamingB(
                        rows: f.batch, columns: n.count, depth: inputCount,
                        a: f.input, lda: inputCount, b: weight + n.lowerBound, ldb: outputCount,
                        c: f.output + n.lowerBound, ldc: outputCount,
                        scratch: sums.baseAddress!.assumingMemoryBound(to: Float.self))
                }
            }
        }
        if streamed < outputCount {
            gemm(
                rows: f.batch, columns: outputCount - streamed, depth: inputCount,
                a: f.input, rowStride: inputCount, depthStride: 1,
                b: weight + streamed, ldb: outputCount, c: f.output + streamed, ldc: outputCount,
                accumulate: true, threads: f.threads)
        }
    }

    /// Batches up to this size use the streaming forward product for large weights.
    static let streamingBatchLimit = 16
    /// Weights of at least this many floats (4 MiB) do not stay in cache from one step to the next.
    static let streamingWeightFloats = 1 << 20

    public func backward(_ g: BackwardBuffers) {
        let f = g.forward
        let weight = f.parameters
        if let inputGradient = g.inputGradient {
            gemmTransposedB(
                rows: f.batch, columns: inputCount, depth: outputCount,
                a: g.outputGradient, lda: outputCount, b: weight, ldb: outputCount,
                c: inputGradient, ldc: inputCount, accumulate: false, threads: f.threads)
        }
        // ∂W[k, n] = Σ_b x[b, k]·∂y[b, n]: rows of the product are indexed by k (stride 1 in x),
        // the reduction runs over the batch (stride inputCount).
        gemm(
            rows: inputCount, columns: outputCount, depth: f.batch,
            a: f.input, rowStride: 1, depthStride: inputCount,
            b: g.outputGradient, ldb: outputCount,
            c: g.parameterGradient, ldc: outputCount, accumulate: false, threads: f.threads)
        sumRows(g.outputGradient, rows: f.batch, columns: outputCount, into: g.parameterGradient + inputCount * outputCount)
    }

    /// Only for weights too large to stay in cache between the passes: a small weight (the
    /// 2NN's) is quicker the plain way, where the gradient and the step are two cheap passes
    /// over the L2 cache and no closure runs per block.
    public var fusesUpdate: Bool { inputCount * outputCount >= Self.streamingWeightFloats }

    /// The weight is visited in blocks of ``updateBlockRows`` rows: the block's share of ∂x
    /// (which reads its old values), then its gradient rows into a buffer that stays in L1,
    /// then the optimiser's step on the block. The weight is read and written once per step.
    /// Every value is computed by the same kernels as in ``backward(_:)``, in the same order.
    public func backward(_ g: BackwardBuffers, update: ParameterStep) {
        let f = g.forward
        let weight = f.parameters
        let block = Self.updateBlockRows
        let blocks = (inputCount + block - 1) / block
        let threads = inputCount * outputCount * f.batch >= parallelGEMMThreshold ? f.threads : 1
        forEachBatchChunk(blocks, threads: threads) { range in
            withUnsafeTemporaryAllocation(byteCount: block * outputCount * MemoryLayout<Float>.stride, alignment: 64) { buffer in
                let gradient = buffer.baseAddress!.assumingMemoryBound(to: Float.self)
                for index in range {
                    let row = index * block
                    let rows = min(block, inputCount - row)
                    // The next block's weight rows, read by this pass's dot products next.
                    if index + 1 < range.upperBound {
                        let next = UnsafeRawPointer(weight + (row + block) * outputCount)
                        let bytes = min(block, inputCount - row - block) * outputCount * MemoryLayout<Float>.stride
                        var offset = 0
                        while offset < bytes {
                            fed_prefetch(next + offset)
                            offset += 64
                        }
                    }
                    if let inputGradient = g.inputGradient {
                        gemmTransposedB(
                            rows: f.batch, columns: rows, depth: outputCount,
                            a: g.outputGradient, lda: outputCount, b: weight + row * outputCount, ldb: outputCount,
                            c: inputGradient + row, ldc: inputCount, accumulate: false)
                    }
                    gemm(
                        rows: rows, columns: outputCount, depth: f.batch,
                        a: f.input + row, rowStride: 1, depthStride: inputCount,
                        b: g.outputGradient, ldb: outputCount,
                        c: gradient, ldc: outputCount, accumulate: false)
                    update(row * outputCount, gradient, rows * outputCount)
                }
            }
        }
        let biasGradient = g.parameterGradient + inputCount * outputCount
        sumRows(g.outputGradient, rows: f.batch, columns: outputCount, into: biasGradient)
        update(inputCount * outputCount, biasGradient, outputCount)
    }

    /// Weight rows per fused block: one row tile of the product kernels (an even number, so the
    /// ∂x dot products pair the same rows as the whole product does).
    static let updateBlockRows = 12
}

/// out[n] = Σ_r m[r, n] for a `rows × columns` row-major matrix.
@inline(__always)
func sumRows(_ m: UnsafePointer<Float>, rows: Int, columns: Int, into out: UnsafeMutablePointer<Float>) {
    out.update(repeating: 0, count: columns)
    for r in 0..<rows {
        let row = m + r * columns
        for n in 0..<columns { out[n] += row[n] }
    }
}
