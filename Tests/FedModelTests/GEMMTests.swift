import Testing
@testable import FedModel

@Suite struct GEMMTests {
    /// Naive reference: C[i, n] (+)= Σ_r A(i, r)·B[r, n].
    func reference(_ m: Int, _ n: Int, _ k: Int, _ a: [Float], si: Int, sr: Int, _ b: [Float], _ c: [Float], accumulate: Bool) -> [Float] {
        var out = accumulate ? c : [Float](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var s: Double = 0
                for r in 0..<k { s += Double(a[i * si + r * sr]) * Double(b[r * n + j]) }
                out[i * n + j] += Float(s)
            }
        }
        return out
    }

    func random(_ count: Int, _ g: inout SeededGenerator) -> [Float] {
        (0..<count).map { _ in g.nextUniform(-1, 1) }
    }

    @Test(arguments: [(1, 1, 1), (3, 5, 7), (10, 200, 784), (13, 47, 9), (25, 33, 100), (12, 32, 64), (37, 64, 800)])
    func matchesNaiveProduct(shape: (Int, Int, Int)) {
        let (m, n, k) = shape
        var g = SeededGenerator(seed: UInt64(m * 1000 + n * 10 + k))
        let a = random(m * k, &g), b = random(k * n, &g), c0 = random(m * n, &g)
        for accumulate in [false, true] {
            for threads in [1, 2] {
                var c = c0
                a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in c.withUnsafeMutableBufferPointer { pc in
                    gemm(rows: m, columns: n, depth: k, a: pa.baseAddress!, rowStride: k, depthStride: 1,
                         b: pb.baseAddress!, ldb: n, c: pc.baseAddress!, ldc: n, accumulate: accumulate, threads: threads)
                }}}
                let expected = reference(m, n, k, a, si: k, sr: 1, b, c0, accumulate: accumulate)
                let worst = zip(c, expected).map { abs($0 - $1) }.max() ?? 0
                #expect(worst < 1e-3, "A·B \(m)x\(n)x\(k) accumulate=\(accumulate) threads=\(threads): max error \(worst)")
            }
        }
    }

    /// The streaming product for small batches against large weights must give the panel
    /// kernels' values exactly (the same fused multiply-adds in the same order), so a model
    /// trains to the same bits whichever product a layer picks.
    @Test(arguments: [(1, 32, 1), (3, 64, 7), (10, 96, 8), (10, 512, 3136), (16, 32, 9), (7, 160, 100)])
    func streamingProductEqualsPanelProductBitForBit(shape: (Int, Int, Int)) {
        let (m, n, k) = shape
        var g = SeededGenerator(seed: UInt64(m * 7 + n * 3 + k))
        let a = random(m * k, &g), b = random(k * n, &g), c0 = random(m * n, &g)
        var panels = c0, streamed = c0
        a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in
            panels.withUnsafeMutableBufferPointer { pc in
                gemm(rows: m, columns: n, depth: k, a: pa.baseAddress!, rowStride: k, depthStride: 1,
                     b: pb.baseAddress!, ldb: n, c: pc.baseAddress!, ldc: n, accumulate: true)
            }
            streamed.withUnsafeMutableBufferPointer { pc in
                withUnsafeTemporaryAllocation(byteCount: m * n * 4, alignment: 64) { scratch in
                    gemmStreamingB(rows: m, columns: n, depth: k, a: pa.baseAddress!, lda: k, b: pb.baseAddress!, ldb: n,
                                   c: pc.baseAddress!, ldc: n, scratch: scratch.baseAddress!.assumingMemoryBound(to: Float.self))
                }
            }
        }}
        #expect(panels.map(\.bitPattern) == streamed.map(\.bitPattern), "\(m)x\(n)x\(k)")
        let expected = reference(m, n, k, a, si: k, sr: 1, b, c0, accumulate: true)
        #expect((zip(streamed, expected).map { abs($0 - $1) }.max() ?? 0) < 1e-2)
    }

    @Test(arguments: [(5, 7, 3), (784, 200, 10), (26, 33, 17)])
    func transposedAMatchesNaive(shape: (Int, Int, Int)) {
        // C (m×n) = Aᵀ·B with A stored k×m.
        let (m, n, k) = shape
        var g = SeededGenerator(seed: 99)
        let a = random(k * m, &g), b = random(k * n, &g)
        var c = [Float](repeating: 0, count: m * n)
        a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in c.withUnsafeMutableBufferPointer { pc in
            gemm(rows: m, columns: n, depth: k, a: pa.baseAddress!, rowStride: 1, depthStride: m,
                 b: pb.baseAddress!, ldb: n, c: pc.baseAddress!, ldc: n, accumulate: false)
        }}}
        let expected = reference(m, n, k, a, si: 1, sr: m, b, c, accumulate: false)
        let worst = zip(c, expected).map { abs($0 - $1) }.max() ?? 0
        #expect(worst < 1e-3, "Aᵀ·B max error \(worst)")
    }

    @Test(arguments: [(10, 784, 200), (3, 5, 17), (11, 3136, 512), (1, 1, 1)])
    func transposedBMatchesNaive(shape: (Int, Int, Int)) {
        // C (m×n) = A (m×k) · Bᵀ with B stored n×k.
        let (m, n, k) = shape
        var g = SeededGenerator(seed: 5)
        let a = random(m * k, &g), b = random(n * k, &g)
        for threads in [1, 2] {
            var c = [Float](repeating: 0, count: m * n)
            a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in c.withUnsafeMutableBufferPointer { pc in
                gemmTransposedB(rows: m, columns: n, depth: k, a: pa.baseAddress!, lda: k, b: pb.baseAddress!, ldb: k,
                                c: pc.baseAddress!, ldc: n, accumulate: false, threads: threads)
            }}}
            var worst: Float = 0
            for i in 0..<m {
                for j in 0..<n {
                    var s: Double = 0
                    for r in 0..<k { s += Double(a[i * k + r]) * Double(b[j * k + r]) }
                    worst = max(worst, abs(c[i * n + j] - Float(s)))
                }
            }
            #expect(worst < 1e-3, "A·Bᵀ \(m)x\(n)x\(k) threads=\(threads) max error \(worst)")
        }
    }

    @Test func transposeIsExact() {
        let rows = 37, columns = 70
        let m = (0..<(rows * columns)).map(Float.init)
        var t = [Float](repeating: -1, count: rows * columns)
        m.withUnsafeBufferPointer { src in t.withUnsafeMutableBufferPointer { dst in
            transpose(src.baseAddress!, rows: rows, columns: columns, into: dst.baseAddress!)
        }}
        for r in 0..<rows { for c in 0..<columns { #expect(t[c * rows + r] == m[r * columns + c]) } }
    }
}
