import Foundation
@testable import FedCodec

/// The encoded-shard cases of the vectors file: every base codec with and without top-k,
/// several group sizes including partial last groups, degenerate groups, ties and near-ties,
/// and extreme values; then bytes a decoder must refuse.
enum ShardVectorCases {
    static var valid: [(name: String, spec: String, input: [Float])] {
        let example: [Float] = [0.5, -0.25, 0.25, -1]
        let ten: [Float] = (0..<10).map { Float($0) * 0.37 - 1.2 }
        let smooth: [Float] = (0..<1000).map { Float(sin(Double($0) * 0.05)) * 0.01 }
        var noise = SplitMix64(seed: 42)
        let gaussian: [Float] = (0..<1000).map { _ in
            let u = Double(noise.next() >> 11) * 0x1p-53, v = Double(noise.next() >> 11) * 0x1p-53
            return Float(sqrt(-2 * log(max(u, 1e-300))) * cos(2 * Double.pi * v)) * 0.01
        }
        let tie = Float(126.5)
        var cases: [(String, String, [Float])] = []
        for base in ["fp32", "fp16", "q8", "q4", "q2", "sign"] {
            cases.append(("\(base): Protocol.md's example values", "\(base)+raw", example))
            cases.append(("\(base): 1,000 values", "\(base)+raw", gaussian))
            cases.append(("\(base): top-k, 1% of 1,000 values (delta varints)", "topk:0.01+\(base)+raw", gaussian))
            cases.append(("\(base): top-k, half of 10 values (bitmap)", "topk:0.5+\(base)+raw", ten))
            cases.append(("\(base): zlib (decoding pinned, not the bytes)", "\(base)", smooth))
        }
        for base in ["q8", "q4", "q2", "sign"] {
            cases.append(("\(base): group size 4, partial last group of 2", "\(base)+g4+raw", ten))
            cases.append(("\(base): group size 3", "\(base)+g3+raw", ten))
            cases.append(("\(base): group size 1", "\(base)+g1+raw", Array(ten.prefix(5))))
            cases.append(("\(base): group size 7 over 1,000 values", "\(base)+g7+raw", gaussian))
            cases.append(("\(base): degenerate group, max = min", "\(base)+raw", [0.3, 0.3, 0.3]))
            cases.append(("\(base): all zeros, signed zeros", "\(base)+raw", [0, -0.0, 0, -0.0, 0]))
            cases.append(("\(base): top-k with equal magnitudes (lowest positions kept)", "topk:0.5+\(base)+raw", [1, -1, 1, -1, 0.5, -0.5, 1, 0.25]))
        }
        cases += [
            ("q8: exact ties round away from zero (0.5, 1.5, 126.5, 127.5, 254.5 with step 1)", "q8+raw", [0, 255, 0.5, 1.5, tie, 127.5, 254.5]),
            ("q8: near-ties one binary32 ulp either side of 126.5", "q8+raw", [0, 255, tie.nextDown, tie.nextUp, Float(0.5).nextDown, Float(0.5).nextUp]),
            ("q4: exact ties (step 1)", "q4+raw", [0, 15, 0.5, 6.5, 7.5, 14.5]),
            ("q2: exact ties (step 1)", "q2+raw", [0, 3, 0.5, 1.5, 2.5]),
            ("q8: a step that is not exact in binary32", "q8+raw", [0, 1, 0.1, 0.2, 0.3, 1.0 / 3]),
            ("q8: extreme values, the whole binary32 range", "q8+raw", [-Float.greatestFiniteMagnitude, Float.greatestFiniteMagnitude, 0, 1]),
            ("q8: subnormal values", "q8+raw", [Float.leastNonzeroMagnitude, 0, -Float.leastNonzeroMagnitude, Float.leastNormalMagnitude]),
            ("q4: values of very different magnitudes", "q4+raw", [1e-30, 1e30, -1e30, 1]),
            ("fp32: subnormals, signed zero, extremes", "fp32+raw", [Float.leastNonzeroMagnitude, -0.0, Float.greatestFiniteMagnitude, -Float.greatestFiniteMagnitude, 1e-40]),
            ("fp16: range edges, subnormals, underflow and rounding", "fp16+raw", [65504, -65504, 6.0e-8, 1e-8, 0.1, 2049, 2051, -0.0]),
            ("sign: -0 counts as non-negative", "sign+raw", [-0.0, -1, 2, -3]),
            ("sign: extreme values", "sign+raw", [Float.greatestFiniteMagnitude, -Float.greatestFiniteMagnitude]),
            ("q8: top-k keeping every value (k = n, bitmap)", "topk:1+q8+raw", [3, -1, 2]),
            ("q8: stochastic rounding (decoding pinned, not the bytes)", "q8+sr+raw", gaussian),
            ("q4: stochastic rounding with top-k and group size 64", "topk:0.2+q4+g64+sr+raw", gaussian),
        ]
        return cases
    }

    /// Pruned shards: a model shard sent sparse over its mask (positions written; a kept weight
    /// that is zero still travels), and updates over a mask the receiver holds (index encoding
    /// 3: no positions written).
    static var masked: [(name: String, spec: String, input: [Float], mask: [Int], receiverHoldsMask: Bool)] {
        let ten: [Float] = [0.5, 0, -0.25, 3, 0, 0, 1e-3, -7, 0.125, 2]
        let mask = [1, 3, 6, 8, 9]
        var noise = SplitMix64(seed: 7)
        let thousand: [Float] = (0..<1000).map { _ in Float(Double(noise.next() >> 11) * 0x1p-53 - 0.5) * 0.02 }
        let sparseMask = (0..<1000).filter { $0 % 10 == 3 || $0 % 17 == 0 }
        return [
            ("fp32: pruned model shard, its mask as delta varints (a kept zero travels)", "fp32+raw", ten, mask, false),
            ("q8: pruned model shard of 1,000 values, mask as delta varints", "q8+raw", thousand, sparseMask, false),
            ("fp32: update over the receiver's mask (index encoding 3)", "fp32+raw", ten, mask, true),
            ("q8: update over the receiver's mask (index encoding 3)", "q8+raw", thousand, sparseMask, true),
            ("q4: update over the receiver's mask, group size 64 (index encoding 3)", "q4+g64+raw", thousand, sparseMask, true),
            ("q8: top-k inside the receiver's mask (positions written, as delta varints)", "topk:0.05+q8+raw", thousand, sparseMask, true),
        ]
    }

    /// Low-rank factors (index encoding 4, Protocol.md §8.6): the factors P (rows × r) then Q
    /// (columns × r) of a shard of `count` values whose matrix has `columns` columns.
    static var factored: [(name: String, spec: String, count: Int, columns: Int, factors: [Float])] {
        var noise = SplitMix64(seed: 11)
        func draw(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in Float(Double(noise.next() >> 11) * 0x1p-53 - 0.5) * scale } }
        // Rank 3 of 8 x 8 where x̂[0][0] = 2^24·1 + 1·1 + 1·1: 16,777,218 summed in binary64,
        // 16,777,216 if summed in binary32.
        var ties = [Float](repeating: 0.5, count: 3 * 16)
        ties.replaceSubrange(0..<3, with: [16_777_216, 1, 1])
        ties.replaceSubrange(24..<27, with: [1, 1, 1])
        return [
            ("fp32: rank-1 factors of a 4 x 3 matrix (index encoding 4)", "lowrank:1+fp32+raw", 12, 3, [1, -0.5, 0.25, 2, 0.5, -1, 3]),
            ("fp32: rank-3 factors whose products sum in binary64 (2^24 + 1 + 1)", "lowrank:3+fp32+raw", 64, 8, ties),
            ("fp16: rank-2 factors of a 6 x 5 matrix", "lowrank:2+fp16+raw", 30, 5, draw(22)),
            ("q8: rank-2 factors of a 20 x 10 matrix", "lowrank:2+q8+raw", 200, 10, draw(60, scale: 0.1)),
            ("q4: rank-3 factors of a 40 x 30 matrix, group size 64", "lowrank:3+q4+g64+raw", 1200, 30, draw(210)),
            ("q2: rank-1 factors of a 16 x 16 matrix, group size 8", "lowrank:1+q2+g8+raw", 256, 16, draw(32)),
            ("sign: rank-1 factors of an 8 x 8 matrix", "lowrank:1+sign+raw", 64, 8, draw(16)),
            ("q8: rank-5 factors of a 30 x 12 matrix, group size 32", "lowrank:5+q8+g32+raw", 360, 12, draw(210)),
            ("q8: rank-4 factors of a 100 x 50 matrix, zlib (decoding pinned, not the bytes)", "lowrank:4+q8", 5000, 50, draw(600, scale: 0.01)),
        ]
    }

    /// Factor-coded shards a decoder refuses, with the columns it expects (nil: it expects the
    /// shard whole).
    static var invalidFactors: [(name: String, count: Int, columns: Int?, encoded: [UInt8], error: String)] {
        get throws {
            let factors = try encodeFactorShard([1, -0.5, 0.25, 2, 0.5, -1, 3], count: 12, columns: 3, "lowrank:1+fp32+raw")
            let body = Array(factors.dropFirst(ShardCodec.headerSize))
            let huge = try encodeFactorShard([Float](repeating: 3e38, count: 7), count: 12, columns: 3, "lowrank:1+fp32+raw")
            return [
                ("low-rank factors where the receiver expects the whole shard", 12, nil, factors, "badHeader"),
                ("low-rank factors whose columns do not divide the count", 12, 5, factors, "badHeader"),
                ("low-rank factors of another shape (k is not r·(rows + columns))", 12, 2, factors, "badHeader"),
                ("low-rank factors of rank 0", 12, 3, patched(factors, header: [6: 0]), "badHeader"),
                ("low-rank factors of rank 4 for a 4 x 3 matrix (above min(rows, columns))", 12, 3, patched(factors, header: [6: 4], u32: [16: 28]), "badHeader"),
                ("low-rank factors of rank 2 for a 4 x 3 matrix (14 values, not fewer than 12)", 12, 3, patched(factors, header: [6: 2], u32: [16: 14]), "badHeader"),
                ("low-rank factors with the sparse flag", 12, 3, patched(factors, header: [4: 2]), "badHeader"),
                ("a rank in the reserved bytes of a dense shard", 4, 2, patched(try encodeShard([1, 2, 3, 4], "fp32+raw"), header: [6: 1]), "badHeader"),
                ("low-rank factors one value short", 12, 3, patched(factors, body: Array(body.dropLast(4))), "truncated"),
                ("low-rank factors with a NaN", 12, 3, patched(factors, body: u32(0x7fc0_0000) + body.dropFirst(4)), "nonFinite"),
                ("low-rank factors whose product overflows binary32", 12, 3, huge, "nonFinite"),
            ]
        }
    }

    /// Rewrites a raw (uncompressed) shard's header fields and body, fixing its lengths and
    /// CRC-32 unless told not to.
    static func patched(_ shard: [UInt8], header: [Int: UInt8] = [:], u32: [Int: UInt32] = [:], body: [UInt8]? = nil, fixLengths: Bool = true) -> [UInt8] {
        var bytes = shard
        if let body {
            bytes = Array(bytes.prefix(ShardCodec.headerSize)) + body
        }
        if fixLengths {
            let bodyBytes = Array(bytes.dropFirst(ShardCodec.headerSize))
            let crc = bodyBytes.withUnsafeBytes { crc32Checksum($0) }
            setU32(&bytes, 20, UInt32(bodyBytes.count))
            setU32(&bytes, 24, UInt32(bodyBytes.count))
            setU32(&bytes, 28, crc)
        }
        for (offset, value) in header { bytes[offset] = value }
        for (offset, value) in u32 { setU32(&bytes, offset, value) }
        return bytes
    }

    static func setU32(_ bytes: inout [UInt8], _ offset: Int, _ value: UInt32) {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }

    static func u32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }

    /// Updates coded over a mask that the receiver cannot read: it holds no mask, or another one.
    static var invalidOverMask: [(name: String, count: Int, encoded: [UInt8], error: String, mask: [Int]?)] {
        get throws {
            let overMask = try encodeShard([0.5, 0, -0.25, 3, 0, 0, 1e-3, -7, 0.125, 2], "fp32+raw", keeping: [1, 3, 6, 8, 9], receiverHoldsMask: true)
            return [
                ("update over a mask, decoded by a receiver holding none", 10, overMask, "badIndex", nil),
                ("update over a mask of 5 positions, the receiver's mask keeps 4", 10, overMask, "badIndex", [1, 3, 6, 8]),
                ("update over a mask, the receiver's mask reaches beyond the shard", 10, overMask, "badIndex", [1, 3, 6, 8, 10]),
            ]
        }
    }

    static var invalid: [(name: String, count: Int, encoded: [UInt8], error: String)] {
        get throws {
            let q8 = try encodeShard([0.5, -0.25, 0.25, -1], "q8+raw")
            let fp32 = try encodeShard([1, 2, 3, 4], "fp32+raw")
            let fp16 = try encodeShard([1, 2, 3, 4], "fp16+raw")
            let sign = try encodeShard([1, -2, 3, -4], "sign+raw")
            let twenty: [Float] = (0..<20).map { $0 == 3 || $0 == 17 ? 1 : 0 }
            let sparse = try encodeShard(twenty, "topk:0.1+q8+raw")   // varints 04 0e
            let zlib = try encodeShard([Float](repeating: 0.25, count: 400), "fp32")
            let valueSection = Array(sparse.dropFirst(ShardCodec.headerSize + 2))
            let bitmap: [UInt8] = [0x08, 0x00, 0x02]                    // positions 3 and 17
            var cases: [(String, Int, [UInt8], String)] = [
                ("bad magic", 4, patched(q8, header: [0: 0x46, 1: 0x44]), "badMagic"),
                ("format version 2", 4, patched(q8, header: [2: 2]), "unsupportedVersion"),
                ("value codec 6", 4, patched(q8, header: [3: 6]), "unknownCodec"),
                ("unknown flag bit 3", 4, patched(q8, header: [4: 8]), "badHeader"),
                ("index encoding 5", 4, patched(q8, header: [4: 2, 5: 5]), "badHeader"),
                ("reserved byte set", 4, patched(q8, header: [7: 1]), "badHeader"),
                ("group size 0", 4, patched(q8, u32: [8: 0]), "badHeader"),
                ("group size 65,537", 4, patched(q8, u32: [8: 65_537]), "badHeader"),
                ("element count other than the layout's", 5, q8, "wrongElementCount"),
                ("dense shard with k ≠ n", 4, patched(q8, u32: [16: 3]), "badHeader"),
                ("sparse flag without an index encoding", 4, patched(q8, header: [4: 2]), "badHeader"),
                ("sparse shard with k = 0", 20, patched(sparse, u32: [16: 0]), "badHeader"),
                ("sparse shard with k > n", 20, patched(sparse, u32: [16: 21]), "badHeader"),
                ("body length beyond what the codec can need", 4, patched(q8, u32: [20: 13, 24: 13], body: Array(q8.dropFirst(32)) + [0], fixLengths: false), "bodyTooLarge"),
                ("uncompressed body whose stored length differs from the body length", 4, patched(q8, u32: [20: 11]), "badHeader"),
                ("truncated header", 4, Array(q8.prefix(20)), "truncated"),
                ("truncated body", 4, Array(q8.dropLast()), "truncated"),
                ("bytes after the body", 4, q8 + [0], "trailingBytes"),
                ("value section one byte short", 4, patched(q8, body: Array(q8.dropFirst(32).dropLast())), "truncated"),
                ("body one byte longer than the codec can need", 4, patched(q8, body: Array(q8.dropFirst(32)) + [0]), "bodyTooLarge"),
                ("value section one byte long", 20, patched(sparse, body: Array(sparse.dropFirst(32)) + [0]), "trailingBytes"),
                ("CRC-32 mismatch", 4, patched(q8, u32: [28: 0x1234_5678]), "badChecksum"),
                ("varint delta 0 repeats an index", 20, patched(sparse, body: [0x04, 0x00] + valueSection), "repeatedIndex"),
                ("varint index beyond n", 20, patched(sparse, body: [0x04, 0x7f] + valueSection), "badIndex"),
                ("varint longer than 5 bytes", 20, patched(sparse, body: [0x04, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01] + valueSection), "badIndex"),
                ("bitmap where varints are shorter (not the canonical index encoding)", 20, patched(sparse, header: [5: 2], body: bitmap + valueSection), "badIndex"),
                ("bitmap with the wrong number of bits", 20, patched(sparse, header: [5: 2], body: [0x08, 0x00, 0x06] + valueSection), "badIndex"),
                ("bitmap marking a position beyond n", 20, patched(sparse, header: [5: 2], body: [0x08, 0x00, 0x12] + valueSection), "badIndex"),
                ("fp32 NaN", 4, patched(fp32, body: u32(1) + u32(0x7fc0_0000) + u32(0) + u32(0)), "nonFinite"),
                ("fp32 infinity", 4, patched(fp32, body: u32(0) + u32(0) + u32(0) + u32(0xff80_0000)), "nonFinite"),
                ("fp16 infinity", 4, patched(fp16, body: [0, 0x7c, 0, 0, 0, 0, 0, 0]), "nonFinite"),
                ("q8 negative step", 4, patched(q8, body: u32(0) + u32(Float(-1).bitPattern) + [0, 1, 2, 3]), "nonFinite"),
                ("q8 NaN minimum", 4, patched(q8, body: u32(0x7fc0_0000) + u32(0) + [0, 1, 2, 3]), "nonFinite"),
                ("q8 value that overflows binary32", 4, patched(q8, body: u32(Float.greatestFiniteMagnitude.bitPattern) + u32(Float(1e37).bitPattern) + [0, 0, 0, 255]), "nonFinite"),
                ("sign NaN scale", 4, patched(sign, body: u32(0x7fc0_0000) + [0x05]), "nonFinite"),
                ("sign negative scale", 4, patched(sign, body: u32(Float(-1).bitPattern) + [0x05]), "nonFinite"),
                ("zlib stream that is not zlib", 400, patched(zlib, body: [1, 2, 3, 4, 5], fixLengths: false) .withStoredLength(5), "decompressionFailed"),
            ]
            // zlib streams that inflate to fewer or more bytes than declared, end early, or are
            // followed by other bytes.
            let body = Array(repeating: UInt8(0), count: 1600)
            let stream = zlibCompress(body, level: 6)
            func zlibShard(declared: Int, stored: [UInt8]) -> [UInt8] {
                var bytes = Array(zlib.prefix(ShardCodec.headerSize)) + stored
                setU32(&bytes, 20, UInt32(declared))
                setU32(&bytes, 24, UInt32(stored.count))
                setU32(&bytes, 28, body.withUnsafeBytes { crc32Checksum($0) })
                return bytes
            }
            cases += [
                ("zlib stream that inflates to fewer bytes than the body length", 400, zlibShard(declared: 1600, stored: zlibCompress(Array(body.dropLast(4)), level: 6)), "truncated"),
                ("zlib stream that inflates to more bytes than the body length", 400, zlibShard(declared: 1596, stored: stream), "bodyTooLarge"),
                ("zlib stream cut short", 400, zlibShard(declared: 1600, stored: Array(stream.dropLast(3))), "truncated"),
                ("bytes after the zlib stream", 400, zlibShard(declared: 1600, stored: stream + [0]), "trailingBytes"),
            ]
            return cases
        }
    }
}

extension Array where Element == UInt8 {
    func withStoredLength(_ length: UInt32) -> [UInt8] {
        var bytes = self
        ShardVectorCases.setU32(&bytes, 24, length)
        return bytes
    }
}
