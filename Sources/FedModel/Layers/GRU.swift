import Foundation

/// A gated recurrent unit (Cho et al. 2014) read over a sequence, PyTorch's `nn.GRU` with one
/// layer: the input's H·W positions are the time steps, its channels the features of a step
/// (an ``Embedding``'s T × 1 × D output, or any image read row by row); the output is the last
/// hidden state, of `hidden` values. With h₀ = 0 and, per step,
///
///     r = σ(x·Wᵢ[r] + bᵢ[r] + h·Wₕ[r] + bₕ[r])
///     z = σ(x·Wᵢ[z] + bᵢ[z] + h·Wₕ[z] + bₕ[z])
///     n = tanh(x·Wᵢ[n] + bᵢ[n] + r ⊙ (h·Wₕ[n] + bₕ[n]))
///     h' = (1 − z) ⊙ n + z ⊙ h
///
/// with Wᵢ `[D, 3H]`, Wₕ `[H, 3H]`, bᵢ and bₕ `[3H]`, the gate columns in the order r, z, n.
/// Initialised like PyTorch: uniform in ±1/√H. The backward pass runs back through time.
/// The products go through the matrix kernels, one step at a time over the batch.
public struct GRU: Layer {
    public let inputShape: TensorShape
    public let hidden: Int

    public init(input: TensorShape, hidden: Int) {
        precondition(hidden > 0, "GRU needs hidden units")
        inputShape = input
        self.hidden = hidden
    }

    var steps: Int { inputShape.height * inputShape.width }
    var features: Int { inputShape.channels }

    public var outputShape: TensorShape { .vector(hidden) }
    public var parameterShapes: [(name: String, shape: [Int])] {
        [("weight_input", [features, 3 * hidden]), ("weight_hidden", [hidden, 3 * hidden]),
         ("bias_input", [3 * hidden]), ("bias_hidden", [3 * hidden])]
    }
    public var description: String { "GRU(\(features) → \(hidden), \(steps) steps)" }

    /// Per example and step: the input gates' pre-activations (3H), then r, z, n (3H), the
    /// hidden part of n (H), the states h₀…h_T (H each, T + 1); and a B × 3H work matrix twice,
    /// and B × H once.
    public func scratchBytes(batch: Int) -> Int {
        let h = hidden, t = steps
        return (batch * t * (3 * h + 3 * h + h) + batch * (t + 1) * h + 2 * batch * 3 * h + batch * h) * MemoryLayout<Float>.stride
    }

    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {
        let bound = 1 / Float(hidden).squareRoot()
        for i in parameters.indices { parameters[i] = generator.nextUniform(-bound, bound) }
    }

    private struct Buffers {
        var inputGates, gates, hiddenNew, states, work, work2, dh: UnsafeMutablePointer<Float>
    }

    private func buffers(_ scratch: UnsafeMutableRawPointer, batch: Int) -> Buffers {
        let h = hidden, t = steps
        var cursor = scratch.assumingMemoryBound(to: Float.self)
        func take(_ count: Int) -> UnsafeMutablePointer<Float> {
            defer { cursor += count }
            return cursor
        }
        return Buffers(
            inputGates: take(batch * t * 3 * h), gates: take(batch * t * 3 * h), hiddenNew: take(batch * t * h),
            states: take(batch * (t + 1) * h), work: take(batch * 3 * h), work2: take(batch * 3 * h), dh: take(batch * h))
    }

    private func parameters(_ p: UnsafePointer<Float>) -> (wi: UnsafePointer<Float>, wh: UnsafePointer<Float>, bi: UnsafePointer<Float>, bh: UnsafePointer<Float>) {
        let wi = p, wh = p + features * 3 * hidden
        let bi = wh + hidden * 3 * hidden, bh = bi + 3 * hidden
        return (wi, wh, bi, bh)
    }

    @inline(__always) static func sigmoid(_ x: Float) -> Float { 1 / (1 + expf(-x)) }

    public func forward(_ f: ForwardBuffers) {
        let (h, t, d, batch) = (hidden, steps, features, f.batch)
        let g = 3 * h
        let b = buffers(f.scratch, batch: batch)
        let (wi, wh, bi, bh) = parameters(f.parameters)
        // Every step's input part at once: (B·T) × D times D × 3H, plus bᵢ.
        for row in 0..<(batch * t) { (b.inputGates + row * g).update(from: bi, count: g) }
        gemm(rows: batch * t, columns: g, depth: d, a: f.input, rowStride: d, depthStride: 1,
             b: wi, ldb: g, c: b.inputGates, ldc: g, accumulate: true, threads: f.threads)
        let stateStride = (t + 1) * h
        for e in 0..<batch { (b.states + e * stateStride).update(repeating: 0, count: h) }
        for step in 0..<t {
            // h·Wₕ + bₕ for the whole batch.
            for e in 0..<batch { (b.work + e * g).update(from: bh, count: g) }
            gemm(rows: batch, columns: g, depth: h, a: b.states + step * h, rowStride: stateStride, depthStride: 1,
                 b: wh, ldb: g, c: b.work, ldc: g, accumulate: true, threads: 1)
            for e in 0..<batch {
                let x = b.inputGates + (e * t + step) * g, hh = b.work + e * g
                let gates = b.gates + (e * t + step) * g, hn = b.hiddenNew + (e * t + step) * h
                let previous = b.states + e * stateStride + step * h, next = previous + h
                for j in 0..<h {
                    let r = Self.sigmoid(x[j] + hh[j])
                    let z = Self.sigmoid(x[h + j] + hh[h + j])
                    let n = tanhf(x[2 * h + j] + r * hh[2 * h + j])
                    gates[j] = r
                    gates[h + j] = z
                    gates[2 * h + j] = n
                    hn[j] = hh[2 * h + j]
                    next[j] = (1 - z) * n + z * previous[j]
                }
            }
        }
        for e in 0..<batch { (f.output + e * h).update(from: b.states + e * stateStride + t * h, count: h) }
    }

    public func backward(_ grad: BackwardBuffers) {
        let f = grad.forward
        let (h, t, d, batch) = (hidden, steps, features, f.batch)
        let g = 3 * h
        let b = buffers(f.scratch, batch: batch)
        let (wi, wh, _, _) = parameters(f.parameters)
        let dWi = grad.parameterGradient, dWh = dWi + d * g, dBi = dWh + h * g, dBh = dBi + g
        grad.parameterGradient.update(repeating: 0, count: parameterCount)
        let stateStride = (t + 1) * h
        let dAx = b.work, dAh = b.work2
        b.dh.update(from: grad.outputGradient, count: batch * h)
        for step in stride(from: t - 1, through: 0, by: -1) {
            for e in 0..<batch {
                let gates = b.gates + (e * t + step) * g, hn = b.hiddenNew + (e * t + step) * h
                let previous = b.states + e * stateStride + step * h
                let dh = b.dh + e * h, ax = dAx + e * g, ah = dAh + e * g
                for j in 0..<h {
                    let r = gates[j], z = gates[h + j], n = gates[2 * h + j]
                    let dn = dh[j] * (1 - z)
                    let dz = dh[j] * (previous[j] - n)
                    let dan = dn * (1 - n * n)
                    let dr = dan * hn[j]
                    let daz = dz * z * (1 - z)
                    let dar = dr * r * (1 - r)
                    ax[j] = dar
                    ax[h + j] = daz
                    ax[2 * h + j] = dan
                    ah[j] = dar
                    ah[h + j] = daz
                    ah[2 * h + j] = dan * r
                    dh[j] *= z  // the direct path to h_{t−1}; the gates' paths are added below
                }
            }
            // Parameter gradients: x_tᵀ·∂Aₓ, h_{t−1}ᵀ·∂Aₕ, and the biases.
            gemm(rows: d, columns: g, depth: batch, a: f.input + step * d, rowStride: 1, depthStride: t * d,
                 b: dAx, ldb: g, c: dWi, ldc: g, accumulate: true, threads: 1)
            gemm(rows: h, columns: g, depth: batch, a: b.states + step * h, rowStride: 1, depthStride: stateStride,
                 b: dAh, ldb: g, c: dWh, ldc: g, accumulate: true, threads: 1)
            for e in 0..<batch {
                let ax = dAx + e * g, ah = dAh + e * g
                for j in 0..<g {
                    dBi[j] += ax[j]
                    dBh[j] += ah[j]
                }
            }
            // ∂x_t = ∂Aₓ·Wᵢᵀ and ∂h_{t−1} += ∂Aₕ·Wₕᵀ.
            if let dx = grad.inputGradient {
                gemmTransposedB(rows: batch, columns: d, depth: g, a: dAx, lda: g, b: wi, ldb: g, c: dx + step * d, ldc: t * d, accumulate: false)
            }
            gemmTransposedB(rows: batch, columns: h, depth: g, a: dAh, lda: g, b: wh, ldb: g, c: b.dh, ldc: h, accumulate: true)
        }
    }
}
