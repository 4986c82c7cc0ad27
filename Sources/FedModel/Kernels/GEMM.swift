import CMemoryHints

/// Single-precision matrix multiply on raw row-major buffers, the one kernel that every
/// layer's forward and backward pass reduces to.
///
/// Computes `C[i, n] (+)= Σ_r A(i, r) · B[r, n]` for `i < rows`, `n < columns`, `r < depth`,
/// where `A(i, r) = a[i·rowStride + r·depthStride]`. With `rowStride = lda, depthStride = 1`
/// this is `C = A·B`; with `rowStride = 1, depthStride = lda` it is `C = Aᵀ·B`, which is how
/// weight gradients (`xᵀ·dy`) are formed without transposing anything.
///
/// The columns are cut into panels of 32, 16, 8, 4, 2 and 1 floats and the rows into tiles of
/// up to 12; each tile keeps its whole block of C in vector registers for the
/// full reduction, so a row of B loaded once is multiplied into every row of the tile
/// (register tiling). A row panel of B stays in cache while the tiles walk down A.
///
/// - Complexity: O(rows · columns · depth), no allocation.
@inlinable
public func gemm(
    rows: Int, columns: Int, depth: Int,
    a: UnsafePointer<Float>, rowStride: Int, depthStride: Int,
    b: UnsafePointer<Float>, ldb: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int,
    accumulate: Bool
) {
    gemmKernel(
        rows: rows, columns: columns, depth: depth, a: a, rowStride: rowStride,
        depthStride: depthStride, b: b, ldb: ldb, c: c, ldc: ldc, accumulate: accumulate)
}

@usableFromInline
func gemmKernel(
    rows: Int, columns: Int, depth: Int,
    a: UnsafePointer<Float>, rowStride: Int, depthStride: Int,
    b: UnsafePointer<Float>, ldb: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int,
    accumulate: Bool
) {
    precondition(rows >= 0 && columns >= 0 && depth >= 0, "negative gemm dimension")
    if rows == 0 || columns == 0 { return }
    if depth == 0 {
        if !accumulate {
            for i in 0..<rows { (c + i * ldc).update(repeating: 0, count: columns) }
        }
        return
    }
    var n0 = 0
    while n0 < columns {
        let remaining = columns - n0
        let width: Int
        if remaining >= 32 {
            width = 32
            gemmPanel32(rows, depth, a, rowStride, depthStride, b + n0, ldb, c + n0, ldc, accumulate)
        } else if remaining >= 16 {
            width = 16
            gemmPanel16(rows, depth, a, rowStride, depthStride, b + n0, ldb, c + n0, ldc, accumulate)
        } else if remaining >= 8 {
            width = 8
            gemmPanel8(rows, depth, a, rowStride, depthStride, b + n0, ldb, c + n0, ldc, accumulate)
        } else if remaining >= 4 {
            width = 4
            gemmPanel4(rows, depth, a, rowStride, depthStride, b + n0, ldb, c + n0, ldc, accumulate)
        } else if remaining >= 2 {
            width = 2
            gemmPanel2(rows, depth, a, rowStride, depthStride, b + n0, ldb, c + n0, ldc, accumulate)
        } else {
            width = 1
            gemmColumn(rows, depth, a, rowStride, depthStride, b + n0, ldb, c + n0, ldc, accumulate)
        }
        n0 += width
    }
}

/// The last single column when `columns` is odd.
private func gemmColumn(
    _ rows: Int, _ depth: Int,
    _ a: UnsafePointer<Float>, _ si: Int, _ sr: Int,
    _ b: UnsafePointer<Float>, _ ldb: Int,
    _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ accumulate: Bool
) {
    for i in 0..<rows {
        var sum: Float = 0
        var pa = a + i * si
        var pb = b
        for _ in 0..<depth {
            sum += pa.pointee * pb.pointee
            pa += sr
            pb += ldb
        }
        c[i * ldc] = accumulate ? c[i * ldc] + sum : sum
    }
}

/// Writes the transpose of a `rows × columns` row-major matrix into `destination`
/// (`columns × rows`), in cache-sized blocks.
public func transpose(
    _ source: UnsafePointer<Float>, rows: Int, columns: Int,
    into destination: UnsafeMutablePointer<Float>
) {
    let block = 32
    var r0 = 0
    while r0 < rows {
        let r1 = min(rows, r0 + block)
        var c0 = 0
        while c0 < columns {
            let c1 = min(columns, c0 + block)
            for r in r0..<r1 {
                let src = source + r * columns
                for col in c0..<c1 {
                    destination[col * rows + r] = src[col]
                }
            }
            c0 = c1
        }
        r0 = r1
    }
}

/// `C (+)= A·Bᵀ` with A `rows × depth` and B `columns × depth`, both row-major: the form of
/// ∂x = ∂y·Wᵀ when W is stored `[in, out]`. Rows of B are read once per tile of A rows,
/// so a large W is never transposed or re-read per example.
///
/// - Complexity: O(rows · columns · depth), no allocation.
public func gemmTransposedB(
    rows: Int, columns: Int, depth: Int,
    a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int,
    accumulate: Bool
) {
    precondition(rows >= 0 && columns >= 0 && depth >= 0, "negative gemm dimension")
    if rows == 0 || columns == 0 { return }
    gemmDotProducts(rows, columns, depth, a, lda, b, ldb, c, ldc, accumulate)
}

/// Work below this many multiply-adds is not worth waking a second core for.
let parallelGEMMThreshold = 1 << 22

/// ``gemm(rows:columns:depth:a:rowStride:depthStride:b:ldb:c:ldc:accumulate:)`` split over
/// `threads` cores: by row tiles when there are enough rows, otherwise by column panels.
/// Each thread writes a disjoint block of C.
public func gemm(
    rows: Int, columns: Int, depth: Int,
    a: UnsafePointer<Float>, rowStride: Int, depthStride: Int,
    b: UnsafePointer<Float>, ldb: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int,
    accumulate: Bool, threads: Int
) {
    let parts = splitCount(rows: rows, columns: columns, depth: depth, rowQuantum: 12, columnQuantum: 32, threads: threads)
    switch parts {
    case .serial:
        gemmKernel(rows: rows, columns: columns, depth: depth, a: a, rowStride: rowStride, depthStride: depthStride, b: b, ldb: ldb, c: c, ldc: ldc, accumulate: accumulate)
    case .rows(let chunks):
        parallelFor(chunks.count) { t in
            let r = chunks[t]
            gemmKernel(rows: r.count, columns: columns, depth: depth, a: a + r.lowerBound * rowStride, rowStride: rowStride, depthStride: depthStride, b: b, ldb: ldb, c: c + r.lowerBound * ldc, ldc: ldc, accumulate: accumulate)
        }
    case .columns(let chunks):
        parallelFor(chunks.count) { t in
            let n = chunks[t]
            gemmKernel(rows: rows, columns: n.count, depth: depth, a: a, rowStride: rowStride, depthStride: depthStride, b: b + n.lowerBound, ldb: ldb, c: c + n.lowerBound, ldc: ldc, accumulate: accumulate)
        }
    }
}

/// ``gemmTransposedB(rows:columns:depth:a:lda:b:ldb:c:ldc:accumulate:)`` split over `threads` cores.
public func gemmTransposedB(
    rows: Int, columns: Int, depth: Int,
    a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int,
    accumulate: Bool, threads: Int
) {
    let parts = splitCount(rows: rows, columns: columns, depth: depth, rowQuantum: 10, columnQuantum: 2, threads: threads)
    switch parts {
    case .serial:
        gemmTransposedB(rows: rows, columns: columns, depth: depth, a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc, accumulate: accumulate)
    case .rows(let chunks):
        parallelFor(chunks.count) { t in
            let r = chunks[t]
            gemmTransposedB(rows: r.count, columns: columns, depth: depth, a: a + r.lowerBound * lda, lda: lda, b: b, ldb: ldb, c: c + r.lowerBound * ldc, ldc: ldc, accumulate: accumulate)
        }
    case .columns(let chunks):
        parallelFor(chunks.count) { t in
            let n = chunks[t]
            gemmTransposedB(rows: rows, columns: n.count, depth: depth, a: a, lda: lda, b: b + n.lowerBound * ldb, ldb: ldb, c: c + n.lowerBound, ldc: ldc, accumulate: accumulate)
        }
    }
}

enum GEMMSplit {
    case serial
    case rows([Range<Int>])
    case columns([Range<Int>])
}

/// How to cut a product among threads: whole row tiles (preferred, B stays shared) or
/// whole column panels, in multiples of the kernels' tile sizes.
func splitCount(rows: Int, columns: Int, depth: Int, rowQuantum: Int, columnQuantum: Int, threads: Int) -> GEMMSplit {
    guard threads > 1, rows * columns * depth >= parallelGEMMThreshold else { return .serial }
    if let chunks = evenChunks(rows, quantum: rowQuantum, parts: threads) { return .rows(chunks) }
    if let chunks = evenChunks(columns, quantum: columnQuantum, parts: threads) { return .columns(chunks) }
    return .serial
}

/// `total` cut into `parts` ranges whose bounds are multiples of `quantum`, or nil if
/// there are fewer than `parts` quanta.
func evenChunks(_ total: Int, quantum: Int, parts: Int) -> [Range<Int>]? {
    let quanta = total / quantum
    guard quanta >= parts else { return nil }
    var result: [Range<Int>] = []
    var start = 0
    for p in 0..<parts {
        let end = p == parts - 1 ? total : (quanta * (p + 1) / parts) * quantum
        result.append(start..<end)
        start = end
    }
    return result
}

/// `C += A·B` for a few rows of A (a small batch) against a large B that does not stay in
/// cache between calls, such as a dense layer's weight: B is read once, row after row, in
/// whole contiguous rows (so the hardware prefetcher streams it) instead of in column panels
/// that jump a row of B at every step. The running sums live in `scratch` (rows·columns floats,
/// a few kilobytes that stay in L1) and are added to C at the end, so every element of C is
/// the same sequence of fused multiply-adds, in the same order, as in ``gemm``: the results
/// are identical bit for bit.
///
/// - Precondition: `columns` is a multiple of 32.
/// - Complexity: O(rows · columns · depth), no allocation.
func gemmStreamingB(
    rows: Int, columns: Int, depth: Int,
    a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int,
    scratch: UnsafeMutablePointer<Float>
) {
    precondition(columns % 32 == 0, "gemmStreamingB needs whole 32-column panels")
    precondition(Int(bitPattern: scratch) % 64 == 0, "gemmStreamingB needs 64-byte aligned scratch")
    scratch.update(repeating: 0, count: rows * columns)
    let sums = UnsafeMutableRawPointer(scratch)
    let rowBytes = columns &* 4
    var r = 0
    // Eight rows of B at a time: each 32-column strip of them is loaded once into registers
    // and multiplied into every row's sums, eight fused multiply-adds per load of the sums.
    while r &+ 8 <= depth {
        let rowB = UnsafeRawPointer(b + r &* ldb)
        let bStep = ldb &* 4
        // The same strip of the block two blocks ahead, one cache line per row of B.
        let ahead = r &+ 24 <= depth ? rowB + 16 &* bStep : nil
        var n = 0
        while n < rowBytes {
            let p = rowB + n
            if let ahead {
                let q = ahead + n
                fed_prefetch(q); fed_prefetch(q + 64)
                fed_prefetch(q + bStep); fed_prefetch(q + bStep + 64)
                fed_prefetch(q + 2 &* bStep); fed_prefetch(q + 2 &* bStep + 64)
                fed_prefetch(q + 3 &* bStep); fed_prefetch(q + 3 &* bStep + 64)
                fed_prefetch(q + 4 &* bStep); fed_prefetch(q + 4 &* bStep + 64)
                fed_prefetch(q + 5 &* bStep); fed_prefetch(q + 5 &* bStep + 64)
                fed_prefetch(q + 6 &* bStep); fed_prefetch(q + 6 &* bStep + 64)
                fed_prefetch(q + 7 &* bStep); fed_prefetch(q + 7 &* bStep + 64)
            }
            let b00 = p.loadUnaligned(as: SIMD16<Float>.self), b01 = p.loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
            let b10 = (p + bStep).loadUnaligned(as: SIMD16<Float>.self), b11 = (p + bStep).loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
            let b20 = (p + 2 &* bStep).loadUnaligned(as: SIMD16<Float>.self), b21 = (p + 2 &* bStep).loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
            let b30 = (p + 3 &* bStep).loadUnaligned(as: SIMD16<Float>.self), b31 = (p + 3 &* bStep).loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
            let b40 = (p + 4 &* bStep).loadUnaligned(as: SIMD16<Float>.self), b41 = (p + 4 &* bStep).loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
            let b50 = (p + 5 &* bStep).loadUnaligned(as: SIMD16<Float>.self), b51 = (p + 5 &* bStep).loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
            let b60 = (p + 6 &* bStep).loadUnaligned(as: SIMD16<Float>.self), b61 = (p + 6 &* bStep).loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
            let b70 = (p + 7 &* bStep).loadUnaligned(as: SIMD16<Float>.self), b71 = (p + 7 &* bStep).loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
            var i = 0
            while i < rows {
                let pa = a + (i &* lda &+ r)
                let s = sums + (i &* rowBytes &+ n)
                var s0 = s.load(as: SIMD16<Float>.self), s1 = s.load(fromByteOffset: 64, as: SIMD16<Float>.self)
                var x = SIMD16<Float>(repeating: pa[0])
                s0 = s0.addingProduct(x, b00); s1 = s1.addingProduct(x, b01)
                x = SIMD16<Float>(repeating: pa[1])
                s0 = s0.addingProduct(x, b10); s1 = s1.addingProduct(x, b11)
                x = SIMD16<Float>(repeating: pa[2])
                s0 = s0.addingProduct(x, b20); s1 = s1.addingProduct(x, b21)
                x = SIMD16<Float>(repeating: pa[3])
                s0 = s0.addingProduct(x, b30); s1 = s1.addingProduct(x, b31)
                x = SIMD16<Float>(repeating: pa[4])
                s0 = s0.addingProduct(x, b40); s1 = s1.addingProduct(x, b41)
                x = SIMD16<Float>(repeating: pa[5])
                s0 = s0.addingProduct(x, b50); s1 = s1.addingProduct(x, b51)
                x = SIMD16<Float>(repeating: pa[6])
                s0 = s0.addingProduct(x, b60); s1 = s1.addingProduct(x, b61)
                x = SIMD16<Float>(repeating: pa[7])
                s0 = s0.addingProduct(x, b70); s1 = s1.addingProduct(x, b71)
                s.storeBytes(of: s0, as: SIMD16<Float>.self)
                s.storeBytes(of: s1, toByteOffset: 64, as: SIMD16<Float>.self)
                i &+= 1
            }
            n &+= 128
        }
        r &+= 8
    }
    while r < depth {
        let rowB = UnsafeRawPointer(b + r &* ldb)
        var n = 0
        while n < rowBytes {
            let b0 = (rowB + n).loadUnaligned(as: SIMD16<Float>.self), b1 = (rowB + n).loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
            for i in 0..<rows {
                let s = sums + (i &* rowBytes &+ n)
                let x = SIMD16<Float>(repeating: a[i &* lda &+ r])
                s.storeBytes(of: s.load(as: SIMD16<Float>.self).addingProduct(x, b0), as: SIMD16<Float>.self)
                s.storeBytes(of: s.load(fromByteOffset: 64, as: SIMD16<Float>.self).addingProduct(x, b1), toByteOffset: 64, as: SIMD16<Float>.self)
            }
            n &+= 128
        }
        r &+= 1
    }
    for i in 0..<rows {
        let out = c + i &* ldc, sum = scratch + i &* columns
        for n in 0..<columns { out[n] += sum[n] }
    }
}
