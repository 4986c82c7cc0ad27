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
        gemm(
            rows: f.batch, columns: outputCount, depth: inputCount,
            a: f.input, rowStride: inputCount, depthStride: 1,
            b: weight, ldb: outputCount, c: f.output, ldc: outputCount, accumulate: true, threads: f.threads)
    }

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
