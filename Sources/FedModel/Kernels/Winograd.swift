import Foundation

/// Winograd's minimal filtering F(2×2, k×k) for stride-1 "same" convolutions (Lavin and Gray,
/// "Fast Algorithms for Convolutional Neural Networks", 2016).
///
/// Each 2×2 block of outputs is computed from an α×α block of inputs (α = k + 1) as
/// `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`: after the input and filter transforms, the α² positions
/// are independent matrix products over the channels, `M[ξν] (tiles × out) = V[ξν] (tiles × in)
/// · U[ξν] (in × out)`, which run on ``gemm``. For k = 5 that is 36 multiplies per 2×2 outputs
/// per channel pair instead of 100 (2.8 times fewer), for k = 3 16 instead of 36.
///
/// The matrices come from the Toom–Cook construction with the points 0, 1, −1, 2, −2 (and
/// ∞): G evaluates the filter polynomial at the points, Bᵀ is the transposed inverse of the
/// evaluation (Vandermonde) matrix, Aᵀ evaluates the two-tap output polynomial. The results
/// equal the direct sums up to float rounding (relative error about 1e-6 for k = 5).
struct WinogradPlan: Sendable {
    let kernel: Int
    /// Input tile side: k + 1.
    let alpha: Int
    /// Bᵀ, α×α row-major.
    let bt: [Float]
    /// G, α×k row-major.
    let g: [Float]
    /// Aᵀ, 2×α row-major.
    let at: [Float]

    /// Kernel sizes with a plan (more points than 0, ±1, ±2 lose too much float precision).
    static let kernels: Set<Int> = [3, 5]

    init(kernel k: Int) {
        precondition(Self.kernels.contains(k), "no Winograd plan for \(k)x\(k)")
        let a = k + 1
        let points: [Double] = Array([0, 1, -1, 2, -2].prefix(a - 1))
        // Evaluation matrix of a polynomial of degree α−1 at the points, and its leading coefficient (∞).
        var vandermonde = [[Double]](repeating: [Double](repeating: 0, count: a), count: a)
        for (j, p) in points.enumerated() {
            for c in 0..<a { vandermonde[j][c] = pow(p, Double(c)) }
        }
        vandermonde[a - 1][a - 1] = 1
        let inverse = invert(vandermonde)
        var bt = [Float](repeating: 0, count: a * a)
        for i in 0..<a { for j in 0..<a { bt[i * a + j] = Float(inverse[j][i]) } }
        var g = [Float](repeating: 0, count: a * k)
        for (j, p) in points.enumerated() {
            for c in 0..<k { g[j * k + c] = Float(pow(p, Double(c))) }
        }
        g[(a - 1) * k + (k - 1)] = 1
        var at = [Float](repeating: 0, count: 2 * a)
        for (j, p) in points.enumerated() {
            at[j] = 1
            at[a + j] = Float(p)
        }
        at[a + a - 1] = 1
        kernel = k
        alpha = a
        self.bt = bt
        self.g = g
        self.at = at
    }

    /// Floats of a transformed filter: α²·in·out.
    func transformedFilterCount(inputs: Int, outputs: Int) -> Int { alpha * alpha * inputs * outputs }

    /// U[ξν][i][o] = (G g Gᵀ)[ξ, ν] for the filter `weights` stored `[k, k, in, out]`.
    /// `outputs` must be a multiple of 16.
    func transformFilter(_ weights: UnsafePointer<Float>, inputs: Int, outputs: Int, into u: UnsafeMutablePointer<Float>) {
        let (k, a) = (kernel, alpha)
        let planes = inputs * outputs
        // G's nonzero entries row by row (its rows for the points 0 and ∞ hold one each), read
        // through pointers: with the matrix's bounds-checked, filtered loops this transform,
        // run twice per training step, cost 2.6% of a CNN round.
        var terms: [(column: Int, value: Float)] = []
        var rowStart = [0]
        for x in 0..<a {
            for r in 0..<k where g[x * k + r] != 0 { terms.append((r, g[x * k + r])) }
            rowStart.append(terms.count)
        }
        terms.withUnsafeBufferPointer { terms in rowStart.withUnsafeBufferPointer { rowStart in
        withUnsafeTemporaryAllocation(of: SIMD16<Float>.self, capacity: k * k + a * k) { buffer in
            let taps = buffer.baseAddress!, half = taps + k * k
            for i in 0..<inputs {
                var o = 0
                while o < outputs {
                    for t in 0..<(k * k) {
                        taps[t] = UnsafeRawPointer(weights + (t * planes + i * outputs + o)).loadUnaligned(as: SIMD16<Float>.self)
                    }
                    // half = G·g (α×k), then U = half·Gᵀ (α×α), written straight to the output.
                    for x in 0..<a {
                        for col in 0..<k {
                            var sum = SIMD16<Float>()
                            for term in rowStart[x]..<rowStart[x + 1] {
                                sum = sum.addingProduct(SIMD16(repeating: terms[term].value), taps[terms[term].column * k + col])
                            }
                            half[x * k + col] = sum
                        }
                    }
                    for x in 0..<a {
                        for y in 0..<a {
                            var sum = SIMD16<Float>()
                            for term in rowStart[y]..<rowStart[y + 1] {
                                sum = sum.addingProduct(SIMD16(repeating: terms[term].value), half[x * k + terms[term].column])
                            }
                            UnsafeMutableRawPointer(u + ((x * a + y) * planes + i * outputs + o)).storeBytes(of: sum, as: SIMD16<Float>.self)
                        }
                    }
                    o += 16
                }
            }
        }
        } }
    }

    /// `output[b, y, x, o] = bias[o] + Σ input[b, y+ky−p, x+kx−p, i]·w[ky, kx, i, o]` (zero
    /// padding p = k/2) with the filter given transformed (``transformFilter``). NHWC; channel
    /// counts must be multiples of 16. Tiles are cut into chunks small enough for the
    /// transformed inputs and products to stay in the L2 cache, and the chunks shared among
    /// `threads` cores.
    func correlate(
        _ input: UnsafePointer<Float>, batch: Int, height h: Int, width w: Int, inputs: Int,
        filter u: UnsafePointer<Float>, outputs: Int, bias: UnsafePointer<Float>?,
        into output: UnsafeMutablePointer<Float>, threads: Int
    ) {
        let a = alpha
        let (tilesY, tilesX) = ((h + 1) / 2, (w + 1) / 2)
        let tiles = batch * tilesY * tilesX
        // About 256 KiB of transformed inputs and products per chunk, in whole row tiles of the product kernel.
        let chunk = max(12, (1 << 18) / (a * a * (inputs + outputs) * 4) / 12 * 12)
        let chunks = (tiles + chunk - 1) / chunk
        let parts = tiles * inputs * outputs * a * a >= parallelGEMMThreshold ? threads : 1
        forEachBatchChunk(chunks, threads: parts) { range in
            let vCount = a * a * chunk * inputs, mCount = a * a * chunk * outputs
            let memory = UnsafeMutableRawPointer.allocate(byteCount: (vCount + mCount) * 4, alignment: 64)
            defer { memory.deallocate() }
            let v = memory.bindMemory(to: Float.self, capacity: vCount + mCount)
            let m = v + vCount
            for index in range {
                let first = index * chunk, count = min(chunk, tiles - first)
                transformInputs(input, firstTile: first, count: count, height: h, width: w, channels: inputs, chunk: chunk, into: v)
                for xi in 0..<(a * a) {
                    gemm(
                        rows: count, columns: outputs, depth: inputs,
                        a: v + xi * chunk * inputs, rowStride: inputs, depthStride: 1,
                        b: u + xi * inputs * outputs, ldb: outputs,
                        c: m + xi * chunk * outputs, ldc: outputs, accumulate: false)
                }
                transformOutputs(m, firstTile: first, count: count, height: h, width: w, channels: outputs, chunk: chunk, bias: bias, into: output)
            }
        }
    }

    /// Floats of the scratch one ``accumulateFilterGradient(_:outputGradient:images:height:width:inputs:outputs:into:)``
    /// call needs for its tiles: their transformed inputs and transformed ∂y, a chunk at a time.
    func filterGradientScratchCount(inputs: Int, outputs: Int) -> Int {
        alpha * alpha * gradientChunk(inputs: inputs, outputs: outputs) * (inputs + outputs)
    }

    /// Tiles per chunk of the filter gradient: about 512 KiB of transformed inputs and ∂y, which
    /// is also the depth of its products (deeper than the forward pass's chunks, since these
    /// products accumulate into one small matrix per position instead of writing a large one).
    private func gradientChunk(inputs: Int, outputs: Int) -> Int {
        max(16, (1 << 19) / (alpha * alpha * (inputs + outputs) * 4))
    }

    /// ∂U[ξν][i][o] = Σ_t V[ξν][t][i]·∂M[ξν][t][o] over the tiles of `images`, where V is the
    /// transformed input block of tile t (as in the forward pass) and ∂M = A ∂Y Aᵀ the
    /// transformed 2×2 block of ∂y: since every tile's output is Aᵀ[U ⊙ V]A, linear in U, this
    /// is the gradient with respect to the transformed filter U, with 2.8 times fewer
    /// multiplies than the direct ∂W for 5×5 (``filterGradient(_:inputs:outputs:into:)``
    /// turns it into ∂W). Overwrites `du` (α²·in·out floats); `scratch` holds
    /// ``filterGradientScratchCount(inputs:outputs:)`` floats. One core; tiles in order.
    func accumulateFilterGradient(
        _ input: UnsafePointer<Float>, outputGradient dy: UnsafePointer<Float>, images: Range<Int>,
        height h: Int, width w: Int, inputs: Int, outputs: Int,
        scratch: UnsafeMutablePointer<Float>, into du: UnsafeMutablePointer<Float>
    ) {
        let a = alpha
        let perImage = ((h + 1) / 2) * ((w + 1) / 2)
        let chunk = gradientChunk(inputs: inputs, outputs: outputs)
        let v = scratch, dm = scratch + a * a * chunk * inputs
        var first = images.lowerBound * perImage, written = false
        let end = images.upperBound * perImage
        if first == end { du.update(repeating: 0, count: a * a * inputs * outputs) }
        while first < end {
            let count = min(chunk, end - first)
            transformInputs(input, firstTile: first, count: count, height: h, width: w, channels: inputs, chunk: chunk, into: v)
            transformOutputGradients(dy, firstTile: first, count: count, height: h, width: w, channels: outputs, chunk: chunk, into: dm)
            for xi in 0..<(a * a) {
                gemm(
                    rows: inputs, columns: outputs, depth: count,
                    a: v + xi * chunk * inputs, rowStride: 1, depthStride: inputs,
                    b: dm + xi * chunk * outputs, ldb: outputs,
                    c: du + xi * inputs * outputs, ldc: outputs, accumulate: written)
            }
            written = true
            first += count
        }
    }

    /// ∂M[ξν][t][c] = (A ∂Y Aᵀ)[ξ, ν] for the 2×2 block ∂Y of `dy` at each tile (zero outside
    /// the image): the adjoint of the forward pass's output transform.
    private func transformOutputGradients(
        _ dy: UnsafePointer<Float>, firstTile: Int, count: Int, height h: Int, width w: Int,
        channels: Int, chunk: Int, into dm: UnsafeMutablePointer<Float>
    ) {
        let a = alpha
        let (tilesY, tilesX) = ((h + 1) / 2, (w + 1) / 2)
        withUnsafeTemporaryAllocation(of: SIMD16<Float>.self, capacity: 3 * a) { buffer in
            let s = buffer.baseAddress!, column = s + 2 * a
            for local in 0..<count {
                let tile = firstTile + local
                let image = tile / (tilesY * tilesX), rest = tile % (tilesY * tilesX)
                let y0 = 2 * (rest / tilesX), x0 = 2 * (rest % tilesX)
                let base = UnsafeRawPointer(dy + image * h * w * channels)
                var c = 0
                while c < channels {
                    @inline(__always) func load(_ p: Int, _ q: Int) -> SIMD16<Float> {
                        y0 + p < h && x0 + q < w
                            ? base.loadUnaligned(fromByteOffset: (((y0 + p) * w + x0 + q) * channels + c) * 4, as: SIMD16<Float>.self)
                            : SIMD16<Float>()
                    }
                    // s = ∂Y·Aᵀ (2×α) row by row, then ∂M = A·s (α×α) column by column.
                    for p in 0..<2 { applyA(load(p, 0), load(p, 1), into: s + p * a) }
                    for col in 0..<a {
                        applyA(s[col], s[a + col], into: column)
                        for xi in 0..<a {
                            UnsafeMutableRawPointer(dm + (((xi * a + col) * chunk + local) * channels + c)).storeBytes(of: column[xi], as: SIMD16<Float>.self)
                        }
                    }
                    c += 16
                }
            }
        }
    }

    /// The α values A·(y0, y1) (A = (Aᵀ)ᵀ, α×2) at `p`: the rows of ``at`` written out.
    @inline(__always)
    func applyA(_ y0: SIMD16<Float>, _ y1: SIMD16<Float>, into p: UnsafeMutablePointer<SIMD16<Float>>) {
        if alpha == 6 {
            (p[0], p[1], p[2], p[3], p[4], p[5]) = (y0, y0 + y1, y0 - y1, y0 + 2 * y1, y0 - 2 * y1, y1)
        } else {
            (p[0], p[1], p[2], p[3]) = (y0, y0 + y1, y0 - y1, y1)
        }
    }

    /// ∂W[ky, kx, i, o] = (Gᵀ ∂U G)[ky, kx] from the gradient ∂U with respect to the transformed
    /// filter (the adjoint of ``transformFilter(_:inputs:outputs:into:)``), stored `[k, k, in, out]`.
    func filterGradient(_ du: UnsafePointer<Float>, inputs: Int, outputs: Int, into weights: UnsafeMutablePointer<Float>) {
        let (k, a) = (kernel, alpha)
        let planes = inputs * outputs
        // Gᵀ's nonzero entries row by row (G's column by column).
        var terms: [(row: Int, value: Float)] = []
        var columnStart = [0]
        for r in 0..<k {
            for x in 0..<a where g[x * k + r] != 0 { terms.append((x, g[x * k + r])) }
            columnStart.append(terms.count)
        }
        terms.withUnsafeBufferPointer { terms in columnStart.withUnsafeBufferPointer { columnStart in
        withUnsafeTemporaryAllocation(of: SIMD16<Float>.self, capacity: a * a + a * k) { buffer in
            let taps = buffer.baseAddress!, half = taps + a * a
            for i in 0..<inputs {
                var o = 0
                while o < outputs {
                    for t in 0..<(a * a) {
                        taps[t] = UnsafeRawPointer(du + (t * planes + i * outputs + o)).loadUnaligned(as: SIMD16<Float>.self)
                    }
                    // half = ∂U·G (α×k), then ∂W = Gᵀ·half (k×k).
                    for x in 0..<a {
                        for col in 0..<k {
                            var sum = SIMD16<Float>()
                            for term in columnStart[col]..<columnStart[col + 1] {
                                sum = sum.addingProduct(SIMD16(repeating: terms[term].value), taps[x * a + terms[term].row])
                            }
                            half[x * k + col] = sum
                        }
                    }
                    for r in 0..<k {
                        for col in 0..<k {
                            var sum = SIMD16<Float>()
                            for term in columnStart[r]..<columnStart[r + 1] {
                                sum = sum.addingProduct(SIMD16(repeating: terms[term].value), half[terms[term].row * k + col])
                            }
                            UnsafeMutableRawPointer(weights + ((r * k + col) * planes + i * outputs + o)).storeBytes(of: sum, as: SIMD16<Float>.self)
                        }
                    }
                    o += 16
                }
            }
        }
        } }
    }

    /// V[ξν][t][c] = (Bᵀ d B)[ξ, ν] for the α×α input block d of each tile.
    private func transformInputs(
        _ input: UnsafePointer<Float>, firstTile: Int, count: Int, height h: Int, width w: Int,
        channels: Int, chunk: Int, into v: UnsafeMutablePointer<Float>
    ) {
        let a = alpha, pad = kernel / 2
        let (tilesY, tilesX) = ((h + 1) / 2, (w + 1) / 2)
        withUnsafeTemporaryAllocation(of: SIMD16<Float>.self, capacity: a * a) { buffer in
            let d = buffer.baseAddress!
            for local in 0..<count {
                let tile = firstTile + local
                let image = tile / (tilesY * tilesX), rest = tile % (tilesY * tilesX)
                let y0 = 2 * (rest / tilesX) - pad, x0 = 2 * (rest % tilesX) - pad
                let base = UnsafeRawPointer(input + image * h * w * channels)
                let inside = y0 >= 0 && y0 + a <= h && x0 >= 0 && x0 + a <= w
                var c = 0
                while c < channels {
                    if inside {
                        for r in 0..<a {
                            let row = base + (((y0 + r) * w + x0) * channels + c) * 4
                            for col in 0..<a { d[r * a + col] = row.loadUnaligned(fromByteOffset: col * channels * 4, as: SIMD16<Float>.self) }
                        }
                    } else {
                        for r in 0..<a {
                            let y = y0 + r
                            for col in 0..<a {
                                let x = x0 + col
                                d[r * a + col] = y >= 0 && y < h && x >= 0 && x < w
                                    ? base.loadUnaligned(fromByteOffset: ((y * w + x) * channels + c) * 4, as: SIMD16<Float>.self)
                                    : SIMD16<Float>()
                            }
                        }
                    }
                    // Bᵀ on every column of d, then on every row: d becomes Bᵀ d B.
                    for col in 0..<a { applyBT(d + col, stride: a) }
                    for r in 0..<a { applyBT(d + r * a, stride: 1) }
                    for x in 0..<(a * a) {
                        UnsafeMutableRawPointer(v + ((x * chunk + local) * channels + c)).storeBytes(of: d[x], as: SIMD16<Float>.self)
                    }
                    c += 16
                }
            }
        }
    }

    /// x ← Bᵀ x for the α values at `p`, `p + stride`, ...: the rows of ``bt`` written out, since
    /// a general α×α product costs more than the rest of the transform.
    @inline(__always)
    func applyBT(_ p: UnsafeMutablePointer<SIMD16<Float>>, stride: Int) {
        if alpha == 6 {
            let (d0, d1, d2, d3, d4, d5) = (p[0], p[stride], p[2 * stride], p[3 * stride], p[4 * stride], p[5 * stride])
            let s12 = d1 + d2, s34 = d3 + d4, m21 = d2 - d1, m34 = d3 - d4
            let m31 = d3 - d1, m42 = d4 - d2
            p[0] = d0 - 1.25 * d2 + 0.25 * d4
            p[stride] = (2 / 3 as Float) * s12 - (1 / 6 as Float) * s34
            p[2 * stride] = (2 / 3 as Float) * m21 + (1 / 6 as Float) * m34
            p[3 * stride] = (1 / 12 as Float) * m31 + (1 / 24 as Float) * m42
            p[4 * stride] = (1 / 24 as Float) * m42 - (1 / 12 as Float) * m31
            p[5 * stride] = 4 * d1 - 5 * d3 + d5
        } else {
            let (d0, d1, d2, d3) = (p[0], p[stride], p[2 * stride], p[3 * stride])
            p[0] = d0 - d2
            p[stride] = 0.5 * (d1 + d2)
            p[2 * stride] = 0.5 * (d2 - d1)
            p[3 * stride] = d3 - d1
        }
    }

    /// Y = Aᵀ M A for each tile, plus the bias, written where the 2×2 block lies inside the output.
    private func transformOutputs(
        _ m: UnsafePointer<Float>, firstTile: Int, count: Int, height h: Int, width w: Int,
        channels: Int, chunk: Int, bias: UnsafePointer<Float>?, into output: UnsafeMutablePointer<Float>
    ) {
        let a = alpha
        let (tilesY, tilesX) = ((h + 1) / 2, (w + 1) / 2)
        let planeStride = chunk * channels * 4
        withUnsafeTemporaryAllocation(of: SIMD16<Float>.self, capacity: 2 * a) { buffer in
            let s = buffer.baseAddress!
            for local in 0..<count {
                let tile = firstTile + local
                let image = tile / (tilesY * tilesX), rest = tile % (tilesY * tilesX)
                let y0 = 2 * (rest / tilesX), x0 = 2 * (rest % tilesX)
                let base = output + image * h * w * channels
                var c = 0
                while c < channels {
                    // s = Aᵀ·M (2×α), column by column, then Y = s·A (2×2).
                    let first = UnsafeRawPointer(m + (local * channels + c))
                    for col in 0..<a {
                        let (top, bottom) = applyAT(first + col * planeStride, stride: a * planeStride)
                        s[col] = top
                        s[a + col] = bottom
                    }
                    let offset = bias.map { UnsafeRawPointer($0 + c).loadUnaligned(as: SIMD16<Float>.self) } ?? SIMD16<Float>()
                    for p in 0..<2 where y0 + p < h {
                        let (left, right) = applyAT(UnsafeRawPointer(s + p * a), stride: 64)
                        let row = base + ((y0 + p) * w + x0) * channels + c
                        UnsafeMutableRawPointer(row).storeBytes(of: offset + left, as: SIMD16<Float>.self)
                        if x0 + 1 < w { UnsafeMutableRawPointer(row + channels).storeBytes(of: offset + right, as: SIMD16<Float>.self) }
                    }
                    c += 16
                }
            }
        }
    }

    /// Aᵀ x for the α vectors at `p`, `p + stride` bytes, ...: the two rows of ``at`` written out.
    @inline(__always)
    func applyAT(_ p: UnsafeRawPointer, stride: Int) -> (SIMD16<Float>, SIMD16<Float>) {
        @inline(__always) func x(_ i: Int) -> SIMD16<Float> { p.loadUnaligned(fromByteOffset: i * stride, as: SIMD16<Float>.self) }
        if alpha == 6 {
            let (m0, m1, m2, m3, m4, m5) = (x(0), x(1), x(2), x(3), x(4), x(5))
            let s12 = m1 + m2, s34 = m3 + m4
            return (m0 + s12 + s34, (m1 - m2) + 2 * (m3 - m4) + m5)
        } else {
            let (m0, m1, m2, m3) = (x(0), x(1), x(2), x(3))
            return (m0 + m1 + m2, m1 - m2 + m3)
        }
    }
}

/// The inverse of a small square matrix by Gauss–Jordan elimination with partial pivoting.
private func invert(_ matrix: [[Double]]) -> [[Double]] {
    let n = matrix.count
    var left = matrix
    var right = (0..<n).map { i in (0..<n).map { $0 == i ? 1.0 : 0.0 } }
    for column in 0..<n {
        let pivot = (column..<n).max { abs(left[$0][column]) < abs(left[$1][column]) }!
        left.swapAt(column, pivot)
        right.swapAt(column, pivot)
        let scale = left[column][column]
        for j in 0..<n {
            left[column][j] /= scale
            right[column][j] /= scale
        }
        for row in 0..<n where row != column {
            let factor = left[row][column]
            if factor == 0 { continue }
            for j in 0..<n {
                left[row][j] -= factor * left[column][j]
                right[row][j] -= factor * right[column][j]
            }
        }
    }
    return right
}
