import Foundation
import Testing
@testable import FedModel

/// The low-rank reference: randomized subspace iteration gives the best rank-R approximation.
struct LowRankTests {
    /// M = 3·u₁v₁ᵀ + 1·u₂v₂ᵀ + 0.1·u₃v₃ᵀ with orthonormal u and v: rank 2 keeps the first two
    /// terms, so the error is exactly the third singular value (Eckart–Young).
    @Test func theRankRApproximationIsTheTruncatedSVD() {
        let rows = 12, cols = 7
        func unit(_ seed: Int, _ n: Int) -> [Float] {
            (0..<n).map { i -> Float in
                let angle = Double((i + 1) * (seed + 2)) * 0.7
                return Float(sin(angle))
            }
        }
        var us = [unit(1, rows), unit(2, rows), unit(3, rows)], vs = [unit(4, cols), unit(5, cols), unit(6, cols)]
        for set in [0, 1] {
            var vectors = set == 0 ? us : vs
            let n = vectors[0].count
            var flat = [Float](repeating: 0, count: n * 3)
            for i in 0..<n { for k in 0..<3 { flat[i * 3 + k] = vectors[k][i] } }
            LowRank.orthonormalize(&flat, rows: n, r: 3)
            for k in 0..<3 { vectors[k] = (0..<n).map { flat[$0 * 3 + k] } }
            if set == 0 { us = vectors } else { vs = vectors }
        }
        let sigmas: [Float] = [3, 1, 0.1]
        var m = [Float](repeating: 0, count: rows * cols)
        for i in 0..<rows {
            for j in 0..<cols {
                for k in 0..<3 { m[i * cols + j] += sigmas[k] * us[k][i] * vs[k][j] }
            }
        }
        for (rank, expected) in [(1, (1.0 + 0.01).squareRoot()), (2, 0.1)] {
            var approximation = m
            let floats = approximation.withUnsafeMutableBufferPointer { LowRank.truncate($0.baseAddress!, rows: rows, cols: cols, rank: rank, iterations: 4, seed: 7) }
            #expect(floats == (rows + cols) * rank)
            var squares = 0.0
            for (a, b) in zip(m, approximation) { squares += Double((a - b) * (a - b)) }
            let error = squares.squareRoot()
            #expect(abs(error - expected) < 1e-3, "rank \(rank): error \(error), the truncated SVD's \(expected)")
        }
        // Full rank (or more) leaves the matrix as it is.
        var whole = m
        #expect(whole.withUnsafeMutableBufferPointer { LowRank.truncate($0.baseAddress!, rows: rows, cols: cols, rank: 7, seed: 1) } == rows * cols)
        #expect(whole == m)
    }
}
