/// Rank-R approximation of a weight matrix's update: the accuracy reference a low-rank update
/// codec is measured against (a per-client truncated SVD), computed by randomized subspace
/// iteration (Halko, Martinsson and Tropp 2011): with Ω a seeded Gaussian `cols × R` matrix,
///
///     Q = orth(M·Ω);  repeat `iterations` times: Q = orth(M·orth(Mᵀ·Q));  M ≈ Q·(Qᵀ·M)
///
/// which converges to the best rank-R approximation (the truncated SVD, by Eckart and Young)
/// as the power iterations separate the leading singular values. A tensor of shape
/// `[d₁, …, dₖ, out]` is the `(d₁⋯dₖ) × out` matrix (convolution kernels included).
public enum LowRank {
    /// Replaces the `rows × cols` row-major matrix `m` by its rank-`rank` approximation.
    /// Returns the floats a factor pair (Q·S and the right factor) takes: (rows + cols)·rank.
    @discardableResult
    public static func truncate(_ m: UnsafeMutablePointer<Float>, rows: Int, cols: Int, rank: Int, iterations: Int = 2, seed: UInt64) -> Int {
        let r = min(rank, rows, cols)
        guard r > 0, r < min(rows, cols) else { return rows * cols }
        var generator = SeededGenerator(seed: seed, stream: 0x10A4)
        var omega = (0..<(cols * r)).map { _ in Float(generator.nextGaussian()) }
        var q = [Float](repeating: 0, count: rows * r)
        var z = [Float](repeating: 0, count: cols * r)
        multiply(m, rows: rows, cols: cols, by: omega, r: r, into: &q)
        orthonormalize(&q, rows: rows, r: r)
        for _ in 0..<iterations {
            multiplyTransposed(m, rows: rows, cols: cols, by: q, r: r, into: &z)
            orthonormalize(&z, rows: cols, r: r)
            multiply(m, rows: rows, cols: cols, by: z, r: r, into: &q)
            orthonormalize(&q, rows: rows, r: r)
        }
        // B = Qᵀ·M (r × cols, stored transposed in z as cols × r), then M = Q·B.
        multiplyTransposed(m, rows: rows, cols: cols, by: q, r: r, into: &z)
        for i in 0..<rows {
            for j in 0..<cols {
                var sum: Float = 0
                for k in 0..<r { sum += q[i * r + k] * z[j * r + k] }
                m[i * cols + j] = sum
            }
        }
        omega.removeAll()
        return (rows + cols) * r
    }

    /// out (rows × r) = M (rows × cols) · x (cols × r).
    static func multiply(_ m: UnsafePointer<Float>, rows: Int, cols: Int, by x: [Float], r: Int, into out: inout [Float]) {
        for i in 0..<rows {
            for k in 0..<r { out[i * r + k] = 0 }
            for j in 0..<cols {
                let value = m[i * cols + j]
                for k in 0..<r { out[i * r + k] += value * x[j * r + k] }
            }
        }
    }

    /// out (cols × r) = Mᵀ · x (rows × r).
    static func multiplyTransposed(_ m: UnsafePointer<Float>, rows: Int, cols: Int, by x: [Float], r: Int, into out: inout [Float]) {
        for index in 0..<(cols * r) { out[index] = 0 }
        for i in 0..<rows {
            for j in 0..<cols {
                let value = m[i * cols + j]
                for k in 0..<r { out[j * r + k] += value * x[i * r + k] }
            }
        }
    }

    /// Modified Gram–Schmidt on the r columns of a `rows × r` row-major matrix; a column that
    /// vanishes stays zero.
    static func orthonormalize(_ a: inout [Float], rows: Int, r: Int) {
        for k in 0..<r {
            for p in 0..<k {
                var dot: Double = 0
                for i in 0..<rows { dot += Double(a[i * r + k]) * Double(a[i * r + p]) }
                for i in 0..<rows { a[i * r + k] -= Float(dot) * a[i * r + p] }
            }
            var norm: Double = 0
            for i in 0..<rows { norm += Double(a[i * r + k]) * Double(a[i * r + k]) }
            let scale: Float = norm > 1e-30 ? Float(1 / norm.squareRoot()) : 0
            for i in 0..<rows { a[i * r + k] *= scale }
        }
    }
}
