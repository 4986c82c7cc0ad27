#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// The low-rank update coding of `lowrank:R` (PowerSGD, Vogels et al. 2019, adapted to
/// federated rounds; Protocol.md §8.6).
///
/// A client cannot keep a factor of its own from one round to the next (with a tenth of the
/// clients per round it trains rarely), so the coordinator keeps one: with every task it sends,
/// per weight matrix, an orthonormal warm start Q₀ (columns × r). The client runs one power
/// iteration from it on its delta M (plus its error-feedback residual): P = orth(M·Q₀), Q = Mᵀ·P,
/// and sends P and Q; M ≈ P·Qᵀ, the projection of M on the span of P. After the round the
/// coordinator runs the same step on the update it applied to get the next warm start, so the
/// clients' subspace follows the model's.
///
/// Matrices are row-major; every product accumulates in binary64.
public enum LowRankFactors {
    /// One power-iteration step on the `rows` × `columns` matrix `m` from the warm start `q0`
    /// (columns × r): P = orth(m·q0) (rows × r) and Q = mᵀ·P (columns × r). Each column pair is
    /// then balanced (P's column times √‖Qₜ‖, Q's divided by it), which leaves P·Qᵀ as it is
    /// and gives both factors values of one scale, so they quantize alike in shared groups.
    public static func compress(_ m: UnsafeBufferPointer<Float>, rows: Int, columns: Int, warmStart q0: [Float], rank r: Int) -> (p: [Float], q: [Float]) {
        precondition(m.count == rows * columns && q0.count == columns * r, "factor shapes do not match")
        var p = multiply(m, rows: rows, columns: columns, by: q0.map(Double.init), rank: r)
        orthonormalize(&p, rows: rows, rank: r)
        var q = multiply(m, rows: rows, columns: columns, by: p, rank: r, transposed: true)
        for t in 0..<r {
            let scale = norm(q, rows: columns, rank: r, column: t).squareRoot()
            guard scale > 0, scale.isFinite else { continue }
            for i in 0..<rows { p[i * r + t] *= scale }
            for j in 0..<columns { q[j * r + t] /= scale }
        }
        return (p.map { Float($0) }, q.map { Float($0) })
    }

    /// The next warm start from the update the coordinator applied: orth(Δᵀ·orth(Δ·q0)). A
    /// direction Δ does not reach keeps its column of `previous`.
    public static func nextWarmStart(_ delta: UnsafeBufferPointer<Float>, rows: Int, columns: Int, previous q0: [Float], rank r: Int) -> [Float] {
        precondition(delta.count == rows * columns && q0.count == columns * r, "factor shapes do not match")
        var p = multiply(delta, rows: rows, columns: columns, by: q0.map(Double.init), rank: r)
        orthonormalize(&p, rows: rows, rank: r)
        var q = multiply(delta, rows: rows, columns: columns, by: p, rank: r, transposed: true)
        orthonormalize(&q, rows: columns, rank: r)
        for t in 0..<r where (0..<columns).allSatisfy({ q[$0 * r + t] == 0 }) {
            for j in 0..<columns { q[j * r + t] = Double(q0[j * r + t]) }
        }
        orthonormalize(&q, rows: columns, rank: r)
        return q.map { Float($0) }
    }

    /// The first warm start of a matrix: Gaussian columns drawn from `seed`, orthonormalized.
    public static func initialWarmStart(columns: Int, rank r: Int, seed: UInt64) -> [Float] {
        var generator = SplitMix64(seed: seed)
        var q = (0..<(columns * r)).map { _ in
            let u = max(generator.nextUnit(), 1e-300), v = generator.nextUnit()
            return (-2 * log(u)).squareRoot() * cos(2 * Double.pi * v)
        }
        orthonormalize(&q, rows: columns, rank: r)
        return q.map { Float($0) }
    }

    /// m (rows × columns) · b (columns × r), or with `transposed` mᵀ (columns × rows) · b (rows × r).
    static func multiply(_ m: UnsafeBufferPointer<Float>, rows: Int, columns: Int, by b: [Double], rank r: Int, transposed: Bool = false) -> [Double] {
        var out = [Double](repeating: 0, count: (transposed ? columns : rows) * r)
        b.withUnsafeBufferPointer { b in
            out.withUnsafeMutableBufferPointer { out in
                for i in 0..<rows {
                    for j in 0..<columns {
                        let x = Double(m[i * columns + j])
                        if x == 0 { continue }
                        let (target, source) = transposed ? (j * r, i * r) : (i * r, j * r)
                        for t in 0..<r { out[target + t] += x * b[source + t] }
                    }
                }
            }
        }
        return out
    }

    /// Orthonormalizes the r columns of a `rows` × r row-major matrix in place (modified
    /// Gram-Schmidt, twice); a column that is, or becomes, negligible is set to zero.
    static func orthonormalize(_ a: inout [Double], rows: Int, rank r: Int) {
        for t in 0..<r {
            let original = norm(a, rows: rows, rank: r, column: t)
            for _ in 0..<2 {
                for s in 0..<t {
                    var dot = 0.0
                    for i in 0..<rows { dot += a[i * r + s] * a[i * r + t] }
                    for i in 0..<rows { a[i * r + t] -= dot * a[i * r + s] }
                }
            }
            let length = norm(a, rows: rows, rank: r, column: t)
            let keep = length > 1e-12 * original && length > 0 && length.isFinite
            for i in 0..<rows { a[i * r + t] = keep ? a[i * r + t] / length : 0 }
        }
    }

    private static func norm(_ a: [Double], rows: Int, rank r: Int, column t: Int) -> Double {
        var sum = 0.0
        for i in 0..<rows { sum += a[i * r + t] * a[i * r + t] }
        return sum.squareRoot()
    }
}
