/// A dense or convolution layer with a trainable low-rank adapter (LoRA, Hu et al. 2021): the
/// layer's weight W, seen as a `K × out` matrix (`[in, out]` for dense, `[k, k, in, out]` for a
/// convolution), is used as W + A·B, with A `[K, r]` and B `[r, out]`. Written `dense:N:loraR`
/// or `convKxK:C[:sS]:loraR` in a model description.
///
/// In a model with adapters only the adapters are trained: the base weights and biases come
/// from a model trained elsewhere and stay frozen, so only A and B travel and are aggregated
/// (``ParameterTensor/trainable``). A starts uniform in ±1/√K like the base layer's weight and B
/// at zero, so the adapted model starts as the base model.
///
/// With `freezesA` (FFA-LoRA, Sun et al. 2024; `dense:N:ffaR`) A keeps its random start and is
/// frozen too (its tensor is `ffa_a`), so only B trains and travels: half the adapter's bytes
/// for a dense layer, and the server's mean of the Bs is the mean of the products A·B, which
/// averaging A and B separately is not.
///
/// On a dense layer the adapter runs beside the weight, never merged into it: y = x·W + b +
/// (x·A)·B, with t = x·A (`batch × r`) kept from the forward pass. The backward pass needs only
/// u = ∂y·Bᵀ, then ∂B = tᵀ·∂y, ∂A = xᵀ·u and ∂x = ∂y·Wᵀ + u·Aᵀ: a few thin products, and none
/// of the size of W besides the two the base layer does anyway (x·W, and ∂y·Wᵀ when ∂x is
/// needed). The base weight's gradient is not computed (it is left zero: the base is frozen in
/// every model with adapters); the bias's is.
///
/// On a convolution the forward pass merges W + A·B into scratch and runs the base layer on it;
/// the backward pass runs the base layer's backward (which gives ∂W, the gradient of the merged
/// weight) and projects it: ∂A = ∂W·Bᵀ, ∂B = Aᵀ·∂W. The base weight's and bias's gradients are
/// written too; the trainer does not step frozen tensors.
public struct LowRankAdapter: Layer {
    public let base: any Layer
    public let rank: Int
    public let freezesA: Bool
    /// Rows of the weight seen as a matrix (`in`, or `k·k·in`), and its columns.
    let rows: Int
    let columns: Int

    public init(base: any Layer, rank: Int, freezesA: Bool = false) {
        let shapes = base.parameterShapes
        precondition(shapes.count == 2 && shapes[0].name == "weight" && shapes[1].name == "bias", "adapters wrap a layer with a weight and a bias")
        precondition(rank > 0, "adapter rank must be positive")
        self.base = base
        self.rank = rank
        self.freezesA = freezesA
        columns = shapes[1].shape[0]
        rows = shapes[0].shape.reduce(1, *) / columns
    }

    public var inputShape: TensorShape { base.inputShape }
    public var outputShape: TensorShape { base.outputShape }
    public var parameterShapes: [(name: String, shape: [Int])] {
        base.parameterShapes + [(freezesA ? "ffa_a" : "lora_a", [rows, rank]), ("lora_b", [rank, columns])]
    }
    public var description: String { "\(base)+\(freezesA ? "FFA-LoRA" : "LoRA")(r=\(rank))" }

    /// Whether a parameter of a model with adapters trains: the adapters' A (unless frozen, FFA)
    /// and B; every base weight and bias is frozen.
    public static func trains(_ parameterName: String) -> Bool { parameterName.hasPrefix("lora_") }

    /// Whether a layout's tensor (`dense1.ffa_a`) belongs to an adapter rather than to its base.
    public static func isAdapterTensor(_ tensorName: String) -> Bool {
        let parameter = tensorName.split(separator: ".").last ?? ""
        return parameter.hasPrefix("lora_") || parameter.hasPrefix("ffa_")
    }

    var baseCount: Int { rows * columns + columns }

    /// Whether the adapter runs beside a dense base weight rather than merged into it.
    var isBesideDense: Bool { base is Dense }

    public func scratchBytes(batch: Int) -> Int {
        // Beside a dense weight: t = x·A and u = ∂y·Bᵀ. Merged: W + A·B.
        aligned64(base.scratchBytes(batch: batch))
            + aligned64((isBesideDense ? 2 * batch * rank : baseCount) * MemoryLayout<Float>.stride)
    }

    /// The base weight and bias like the base layer (a model trained elsewhere usually replaces
    /// them), A uniform in ±1/√K, B zero.
    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {
        base.initialize(UnsafeMutableBufferPointer(rebasing: parameters[0..<baseCount]), generator: &generator)
        let a = UnsafeMutableBufferPointer(rebasing: parameters[baseCount..<(baseCount + rows * rank)])
        initializeUniform(a, fanIn: rows, generator: &generator)
        parameters[(baseCount + rows * rank)...].update(repeating: 0)
    }

    /// W + A·B and the bias, in the scratch after the base layer's.
    private func merged(_ f: ForwardBuffers) -> UnsafeMutablePointer<Float> {
        (f.scratch + aligned64(base.scratchBytes(batch: f.batch))).assumingMemoryBound(to: Float.self)
    }

    public func forward(_ f: ForwardBuffers) {
        if isBesideDense { return forwardBesideDense(f) }
        let merged = merged(f)
        merged.update(from: f.parameters, count: baseCount)
        let a = f.parameters + baseCount, b = a + rows * rank
        gemm(rows: rows, columns: columns, depth: rank, a: a, rowStride: rank, depthStride: 1,
             b: b, ldb: columns, c: merged, ldc: columns, accumulate: true, threads: f.threads)
        var inner = f
        inner.parameters = UnsafePointer(merged)
        base.forward(inner)
    }

    public func backward(_ g: BackwardBuffers) {
        if isBesideDense { return backwardBesideDense(g) }
        let f = g.forward
        var inner = g
        inner.forward.parameters = UnsafePointer(merged(f))
        base.backward(inner)
        // ∂W is now in the first rows·columns gradient slots.
        let dW = UnsafePointer(g.parameterGradient)
        let a = f.parameters + baseCount, b = a + rows * rank
        let dA = g.parameterGradient + baseCount, dB = dA + rows * rank
        // ∂A[k, j] = Σ_n ∂W[k, n]·B[j, n]
        gemmTransposedB(rows: rows, columns: rank, depth: columns, a: dW, lda: columns, b: b, ldb: columns,
                        c: dA, ldc: rank, accumulate: false, threads: f.threads)
        // ∂B[j, n] = Σ_k A[k, j]·∂W[k, n]
        gemm(rows: rank, columns: columns, depth: rows, a: a, rowStride: 1, depthStride: rank,
             b: dW, ldb: columns, c: dB, ldc: columns, accumulate: false, threads: f.threads)
    }

    /// y = x·W + b (the base layer), then y += t·B with t = x·A kept in scratch.
    private func forwardBesideDense(_ f: ForwardBuffers) {
        base.forward(f)
        let t = merged(f)
        let a = f.parameters + baseCount, b = a + rows * rank
        gemm(rows: f.batch, columns: rank, depth: rows, a: f.input, rowStride: rows, depthStride: 1,
             b: a, ldb: rank, c: t, ldc: rank, accumulate: false)
        gemm(rows: f.batch, columns: columns, depth: rank, a: t, rowStride: rank, depthStride: 1,
             b: b, ldb: columns, c: f.output, ldc: columns, accumulate: true)
    }

    private func backwardBesideDense(_ g: BackwardBuffers) {
        let f = g.forward
        let t = UnsafePointer(merged(f)), u = merged(f) + f.batch * rank
        let weight = f.parameters, a = f.parameters + baseCount, b = a + rows * rank
        let dW = g.parameterGradient, dBias = dW + rows * columns
        let dA = dW + baseCount, dB = dA + rows * rank
        // u[s, j] = Σ_n ∂y[s, n]·B[j, n]
        gemmTransposedB(rows: f.batch, columns: rank, depth: columns, a: g.outputGradient, lda: columns, b: b, ldb: columns,
                        c: u, ldc: rank, accumulate: false)
        // ∂B[j, n] = Σ_s t[s, j]·∂y[s, n];  ∂A[k, j] = Σ_s x[s, k]·u[s, j]
        gemm(rows: rank, columns: columns, depth: f.batch, a: t, rowStride: 1, depthStride: rank,
             b: g.outputGradient, ldb: columns, c: dB, ldc: columns, accumulate: false)
        gemm(rows: rows, columns: rank, depth: f.batch, a: f.input, rowStride: 1, depthStride: rows,
             b: UnsafePointer(u), ldb: rank, c: dA, ldc: rank, accumulate: false)
        if let inputGradient = g.inputGradient {
            // ∂x = ∂y·Wᵀ + u·Aᵀ
            gemmTransposedB(rows: f.batch, columns: rows, depth: columns, a: g.outputGradient, lda: columns, b: weight, ldb: columns,
                            c: inputGradient, ldc: rows, accumulate: false, threads: f.threads)
            gemmTransposedB(rows: f.batch, columns: rows, depth: rank, a: UnsafePointer(u), lda: rank, b: a, ldb: rank,
                            c: inputGradient, ldc: rows, accumulate: true)
        }
        dW.update(repeating: 0, count: rows * columns)
        sumRows(g.outputGradient, rows: f.batch, columns: columns, into: dBias)
    }
}
