import Testing
@testable import FedCodec

/// The `lowrank:R` codec: its spec strings, factor-coded shards (Protocol.md §8.6), the power
/// step from a warm start, and what a decoder refuses.
@Suite struct LowRankCodecTests {
    /// A rows × columns matrix of exact rank `rank` plus a little noise.
    static func matrix(rows: Int, columns: Int, rank: Int, noise: Float = 0, seed: UInt64 = 1) -> [Float] {
        var generator = SplitMix64(seed: seed)
        func draw() -> Float { Float(Double(generator.next() >> 11) * 0x1p-53 - 0.5) }
        let a = (0..<(rows * rank)).map { _ in draw() }, b = (0..<(columns * rank)).map { _ in draw() }
        return (0..<(rows * columns)).map { index in
            let (i, j) = (index / columns, index % columns)
            return (0..<rank).reduce(Float(0)) { $0 + a[i * rank + $1] * b[j * rank + $1] } + noise * draw()
        }
    }

    @Test func specStrings() throws {
        let spec = try CodecSpec(parsing: "lowrank:4+q8+ef")
        #expect(spec.lowRank == 4 && spec.codec == .q8 && spec.errorFeedback && spec.topK == nil)
        #expect(spec.description == "lowrank:4+q8+ef")
        #expect(try CodecSpec(parsing: spec.description) == spec)
        let fp32 = try CodecSpec(parsing: "lowrank:1+fp32")
        #expect(!spec.isLossless && !fp32.isLossless)
        for bad in ["lowrank:0+q8", "lowrank:1025+q8", "lowrank:+q8", "lowrank:2.5+q8", "lowrank:4", "lowrank:4+topk:0.1+q8", "topk:0.1+lowrank:4+q8", "lowrank:-1+q8"] {
            #expect(throws: CodecError.self, "\(bad)") { try CodecSpec(parsing: bad) }
        }
        // Factored only where the factors are fewer values than the matrix.
        #expect(spec.factorRank(count: 784 * 200, columns: 200) == 4)
        #expect(spec.factorRank(count: 200, columns: nil) == nil)
        #expect(spec.factorRank(count: 10 * 3, columns: 3) == nil)  // 4 → 3; 3·13 ≥ 30
        let rank1 = try CodecSpec(parsing: "lowrank:1+q8")
        #expect(rank1.factorRank(count: 10 * 3, columns: 3) == 1)
        #expect(CodecSpec(codec: .q8).factorRank(count: 784 * 200, columns: 200) == nil)
    }

    /// A matrix of rank r comes back (nearly) exactly from rank-r factors whatever the warm
    /// start, and the shard is the size the layout says.
    @Test func exactRankRoundTrips() throws {
        let (rows, columns, r) = (60, 40, 3)
        let m = Self.matrix(rows: rows, columns: columns, rank: r)
        let spec = try CodecSpec(parsing: "lowrank:3+fp32+raw")
        let codec = UpdateCodec(spec: spec, shardRanges: [0..<(rows * columns)], columns: [columns])
        #expect(codec.factorShapes == [UpdateCodec.FactorShape(rows: rows, columns: columns, rank: r)])
        var generator = SplitMix64(seed: 3)
        let start = LowRankFactors.initialWarmStart(columns: columns, rank: r, seed: 7)
        let encoded = try codec.encode(m, warmStarts: [start], generator: &generator)
        #expect(encoded[0].count == ShardCodec.headerSize + 4 * r * (rows + columns))
        #expect(encoded[0][5] == 4 && encoded[0][6] == 3 && encoded[0][7] == 0)
        var decoded = [Float](repeating: 0, count: m.count)
        try codec.decode(encoded, into: &decoded)
        let error = zip(m, decoded).map { abs($0 - $1) }.max()!
        #expect(error < 1e-5, "largest error \(error)")
    }

    /// One power step from a good warm start captures most of a noisy low-rank matrix; a
    /// quantized, compressed shard decodes to what the factors multiply to.
    @Test func powerStepFromAWarmStart() throws {
        let (rows, columns, r) = (200, 100, 2)
        let m = Self.matrix(rows: rows, columns: columns, rank: r, noise: 0.01)
        // The coordinator's warm start after a round whose update was `m` itself.
        let start = m.withUnsafeBufferPointer {
            LowRankFactors.nextWarmStart($0, rows: rows, columns: columns, previous: LowRankFactors.initialWarmStart(columns: columns, rank: r, seed: 1), rank: r)
        }
        // Orthonormal columns.
        for s in 0..<r {
            for t in 0..<r {
                let dot = (0..<columns).reduce(0.0) { $0 + Double(start[$1 * r + s]) * Double(start[$1 * r + t]) }
                #expect(abs(dot - (s == t ? 1 : 0)) < 1e-5)
            }
        }
        let (p, q) = m.withUnsafeBufferPointer { LowRankFactors.compress($0, rows: rows, columns: columns, warmStart: start, rank: r) }
        let approx = (0..<(rows * columns)).map { index in (0..<r).reduce(Float(0)) { $0 + p[index / columns * r + $1] * q[index % columns * r + $1] } }
        let residual = zip(m, approx).reduce(0.0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) }
        let total = m.reduce(0.0) { $0 + Double($1 * $1) }
        #expect(residual < 0.01 * total, "kept \(1 - residual / total) of the energy")

        var generator = SplitMix64(seed: 3)
        let spec = try CodecSpec(parsing: "lowrank:2+q8")
        let bytes = try ShardCodec.encodeFactors(p: p, q: q, rows: rows, columns: columns, rank: r, spec: spec, generator: &generator)
        var decoded = [Float](repeating: 0, count: m.count)
        try bytes.withUnsafeBytes { raw in try decoded.withUnsafeMutableBufferPointer { try ShardCodec.decode(raw, into: $0, columns: columns) } }
        let header = try bytes.withUnsafeBytes { try ShardCodec.parseHeader($0, expectedCount: m.count, columns: columns) }
        #expect(header.rank == 2 && header.keptCount == 2 * (rows + columns) && !header.sparse)
        #expect(spec.nonconformance(of: header, factorRank: 2) == nil)
        #expect(spec.nonconformance(of: header, factorRank: 1) != nil)
        #expect(spec.nonconformance(of: header) != nil)
        let quantError = zip(approx, decoded).map { abs($0 - $1) }.max()!
        #expect(quantError < 0.02 * m.map(abs).max()!, "q8 factors: largest error \(quantError)")
    }

    /// A zero delta: zero factors, zero shard; the warm start survives a zero update.
    @Test func zeroMatrix() throws {
        let (rows, columns, r) = (30, 20, 2)
        let zero = [Float](repeating: 0, count: rows * columns)
        let start = LowRankFactors.initialWarmStart(columns: columns, rank: r, seed: 5)
        let next = zero.withUnsafeBufferPointer { LowRankFactors.nextWarmStart($0, rows: rows, columns: columns, previous: start, rank: r) }
        #expect(zip(next, start).allSatisfy { abs($0 - $1) < 1e-6 })
        let codec = UpdateCodec(spec: try CodecSpec(parsing: "lowrank:2+q4+raw"), shardRanges: [0..<(rows * columns)], columns: [columns])
        var generator = SplitMix64(seed: 1)
        let encoded = try codec.encode(zero, warmStarts: [start], generator: &generator)
        var decoded = [Float](repeating: 1, count: zero.count)
        try codec.decode(encoded, into: &decoded)
        #expect(decoded.allSatisfy { $0 == 0 })
        #expect(throws: CodecError.self) { try codec.encode(zero, generator: &generator) }
    }

    /// Hostile factor-coded shards are refused with the error Protocol.md §8.4 and §8.6 name.
    @Test func decoderRefusals() throws {
        let (rows, columns, r) = (12, 8, 2)
        let m = Self.matrix(rows: rows, columns: columns, rank: r)
        var generator = SplitMix64(seed: 1)
        let start = LowRankFactors.initialWarmStart(columns: columns, rank: r, seed: 2)
        let (p, q) = m.withUnsafeBufferPointer { LowRankFactors.compress($0, rows: rows, columns: columns, warmStart: start, rank: r) }
        let good = try ShardCodec.encodeFactors(p: p, q: q, rows: rows, columns: columns, rank: r, spec: try CodecSpec(parsing: "fp32+raw"), generator: &generator)
        func refusal(_ bytes: [UInt8], columns: Int? = 8) -> CodecError.Code? {
            var out = [Float](repeating: 0, count: rows * 8)
            do {
                try bytes.withUnsafeBytes { raw in try out.withUnsafeMutableBufferPointer { try ShardCodec.decode(raw, into: $0, columns: columns) } }
                return nil
            } catch let error as CodecError { return error.code } catch { return nil }
        }
        #expect(refusal(good) == nil)
        #expect(refusal(good, columns: nil) == .badHeader, "factors where a whole shard is expected")
        #expect(refusal(good, columns: 7) == .badHeader, "columns that do not divide the count")
        #expect(refusal(good, columns: 6) == .badHeader, "k does not match the other shape")
        var rank0 = good; rank0[6] = 0
        #expect(refusal(rank0) == .badHeader)
        var rank9 = good; rank9[6] = 9
        #expect(refusal(rank9) == .badHeader, "rank above min(rows, columns)")
        var sparse = good; sparse[4] |= 2
        #expect(refusal(sparse) == .badHeader, "sparse flag on factors")
        var reserved = try ShardCodec.encode(m.withUnsafeBufferPointer { $0 }, spec: try CodecSpec(parsing: "fp32+raw"), generator: &generator)
        reserved[6] = 2
        #expect(refusal(reserved) == .badHeader, "a rank on a whole shard")
        var infinite = good
        infinite.replaceSubrange(32..<36, with: [0x00, 0x00, 0x80, 0x7f])
        let checksum = infinite[32...].withUnsafeBytes { crc32Checksum($0) }
        infinite.setUInt32(checksum, at: 28)
        #expect(refusal(infinite) == .nonFinite)
        // Finite factors whose product overflows binary32.
        let huge = try ShardCodec.encodeFactors(p: [Float](repeating: 3e38, count: rows * r), q: [Float](repeating: 3e38, count: columns * r),
                                                rows: rows, columns: columns, rank: r, spec: try CodecSpec(parsing: "fp32+raw"), generator: &generator)
        #expect(refusal(huge) == .nonFinite)
        var truncated = good; truncated.removeLast(4)
        #expect(refusal(truncated) == .truncated)
        // Rank 5 of a 12x8 matrix: 100 factor values, not fewer than its 96.
        var notSmaller = good; notSmaller[6] = 5; notSmaller.setUInt32(100, at: 16)
        #expect(refusal(notSmaller) == .badHeader)
    }
}
