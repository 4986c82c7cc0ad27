/// Encodes one shard's float32 values (a delta, or model weights for the downlink) into a
/// self-describing byte string, and decodes it back, refusing anything malformed.
///
/// Layout (all integers little-endian; Protocol.md, "Encoded shard"):
///
///     offset size field
///      0     2   magic "FC" (0x46 0x43)
///      2     1   format version (1)
///      3     1   value codec: 0 fp32, 1 fp16, 2 q8, 3 q4, 4 q2, 5 sign
///      4     1   flags: bit 0 body is zlib-compressed, bit 1 sparse (top-k), bit 2 stochastic rounding
///      5     1   index encoding: 0 none (dense), 1 delta varints, 2 bitmap, 3 the receiver's
///                mask, 4 low-rank factors
///      6     2   the rank r of low-rank factors; otherwise reserved, 0
///      8     4   group size g (values per quantization group)
///     12     4   element count n (the shard's length)
///     16     4   kept count k (n when dense)
///     20     4   body length (uncompressed)
///     24     4   stored body length (bytes after the header)
///     28     4   CRC-32 of the uncompressed body
///     32     …   body, zlib-compressed when flag bit 0 is set
///
/// The body is the index section (sparse only) followed by the value section for the k kept
/// values in order. See ``valueSectionLength(codec:kept:groupSize:)`` for the value layout.
public enum ShardCodec {
    public static let headerSize = 32
    public static let formatVersion: UInt8 = 1

    /// How a sparse shard names its positions: delta varints, a bitmap, or not at all (`mask`:
    /// the receiver holds the pruning mask, and the values are those of its kept positions).
    /// Index encoding 4 is not an index: the shard is two low-rank factors (Protocol.md §8.6).
    enum IndexEncoding: UInt8 { case none = 0, varint = 1, bitmap = 2, mask = 3, factors = 4 }
    static let flagZlib: UInt8 = 1, flagSparse: UInt8 = 2, flagStochastic: UInt8 = 4

    // MARK: Encoding

    /// Encodes `values`. Throws ``CodecError`` (`nonFinite`) for NaN, infinities, or values
    /// outside float16's range with `fp16`: a client never sends what it cannot represent.
    ///
    /// `keeping` (ascending positions, a pruning mask) makes the shard sparse over exactly those
    /// positions, whatever their values; with top-k as well, the largest ⌈F·n⌉ of them are
    /// sent. A mask that keeps every position is dense. When the receiver holds the mask
    /// (`receiverHoldsMask`: an update for a pruned model), the positions are not written at
    /// all (index encoding 3) unless top-k chose among them.
    public static func encode<G: RandomNumberGenerator>(
        _ values: UnsafeBufferPointer<Float>, spec: CodecSpec, keeping: [UInt32]? = nil, receiverHoldsMask: Bool = false, generator: inout G
    ) throws -> [UInt8] {
        let n = values.count
        guard n <= Int(UInt32.max / 8) else { throw CodecError(.badHeader, "shard of \(n) values is too large") }
        for i in 0..<n where !values[i].isFinite {
            throw CodecError(.nonFinite, "value \(i) of the shard is \(values[i])")
        }
        // The header is written last, over 32 placeholder bytes: the body goes straight into
        // the output, with no copy.
        var out = [UInt8](repeating: 0, count: headerSize)
        var indexEncoding = IndexEncoding.none
        var keptStorage: [Float] = []
        let mask = keeping.flatMap { $0.count < n && !$0.isEmpty ? $0 : nil }
        if mask != nil || spec.topK != nil, n > 0 {
            var indices: [UInt32]
            if let mask {
                guard mask.last! < UInt32(n), zip(mask, mask.dropFirst()).allSatisfy({ $0 < $1 }) else {
                    throw CodecError(.badIndex, "mask positions are not ascending within 0..<\(n)")
                }
                indices = mask
                if let fraction = spec.topK, CodecSpec.keptCount(of: n, fraction: fraction) < mask.count {
                    let masked = mask.map { values[Int($0)] }
                    let chosen = masked.withUnsafeBufferPointer { topKIndices($0, k: CodecSpec.keptCount(of: n, fraction: fraction)) }
                    indices = chosen.map { mask[Int($0)] }
                }
            } else {
                indices = topKIndices(values, k: CodecSpec.keptCount(of: n, fraction: spec.topK!))
            }
            keptStorage = indices.map { values[Int($0)] }
            let varints = receiverHoldsMask && mask != nil && indices.count == mask!.count ? [] : encodeDeltaVarints(indices)
            let bitmapLength = (n + 7) / 8
            if varints.isEmpty {
                indexEncoding = .mask
            } else if varints.count <= bitmapLength {
                indexEncoding = .varint
                out += varints
            } else {
                indexEncoding = .bitmap
                out += encodeBitmap(indices, count: n)
            }
        }
        let k = indexEncoding == .none ? n : keptStorage.count
        try keptStorage.withUnsafeBufferPointer { sparseValues in
            let source = indexEncoding == .none ? values : sparseValues
            try appendValues(source, codec: spec.codec, groupSize: spec.groupSize, rounding: spec.rounding, to: &out, generator: &generator)
        }
        return finish(&out, n: n, k: k, spec: spec, indexEncoding: indexEncoding)
    }

    /// Encodes a `rows` × `columns` shard as its rank-r factors (Protocol.md §8.6): `p` is
    /// rows × r and `q` columns × r, both row-major, and the shard decodes to p·qᵀ. Their
    /// r·(rows + columns) values must be fewer than the shard's.
    public static func encodeFactors<G: RandomNumberGenerator>(
        p: [Float], q: [Float], rows: Int, columns: Int, rank r: Int, spec: CodecSpec, generator: inout G
    ) throws -> [UInt8] {
        precondition(r >= 1 && r <= min(rows, columns) && p.count == rows * r && q.count == columns * r, "factors do not match the shape")
        let n = rows * columns, k = r * (rows + columns)
        precondition(k < n && r <= Int(UInt16.max), "factors are not smaller than the shard")
        let values = p + q
        for i in values.indices where !values[i].isFinite {
            throw CodecError(.nonFinite, "factor value \(i) is \(values[i])")
        }
        var out = [UInt8](repeating: 0, count: headerSize)
        try values.withUnsafeBufferPointer {
            try appendValues($0, codec: spec.codec, groupSize: spec.groupSize, rounding: spec.rounding, to: &out, generator: &generator)
        }
        return finish(&out, n: n, k: k, spec: spec, indexEncoding: .factors, reserved: UInt16(r))
    }

    /// Compresses the body after the 32 placeholder bytes of `out` (when the spec asks and it
    /// helps) and writes the header.
    private static func finish(_ out: inout [UInt8], n: Int, k: Int, spec: CodecSpec, indexEncoding: IndexEncoding, reserved: UInt16 = 0) -> [UInt8] {
        let bodyLength = out.count - headerSize
        let checksum = out.withUnsafeBytes { crc32Checksum(UnsafeRawBufferPointer(rebasing: $0[headerSize...])) }
        var flags: UInt8 = 0
        if let level = spec.zlibLevel {
            let compressed = zlibCompress(Array(out[headerSize...]), level: level)
            if compressed.count < bodyLength {
                out.removeSubrange(headerSize...)
                out += compressed
                flags |= flagZlib
            }
        }
        if indexEncoding != .none && indexEncoding != .factors { flags |= flagSparse }
        if spec.rounding == .stochastic && spec.codec.bits != nil { flags |= flagStochastic }
        let header: [UInt8] = [0x46, 0x43, formatVersion, spec.codec.rawValue, flags, indexEncoding.rawValue, UInt8(reserved & 0xFF), UInt8(reserved >> 8)]
        out.replaceSubrange(0..<8, with: header)
        out.setUInt32(UInt32(spec.groupSize), at: 8)
        out.setUInt32(UInt32(n), at: 12)
        out.setUInt32(UInt32(k), at: 16)
        out.setUInt32(UInt32(bodyLength), at: 20)
        out.setUInt32(UInt32(out.count - headerSize), at: 24)
        out.setUInt32(checksum, at: 28)
        return out
    }

    /// Bytes of the value section for `kept` values:
    /// - fp32: 4 per value; fp16: 2 per value (IEEE binary16);
    /// - q8, q4, q2: per group of up to g values, the group minimum and step as float32, then the
    ///   values' levels q (x̂ = min + q·step, 0 ≤ q < 2^bits) packed least significant bits first;
    /// - sign: per group, the scale (mean |x|) as float32, then one bit per value, 1 for x ≥ 0
    ///   (x̂ = ±scale), least significant bit first.
    public static func valueSectionLength(codec: ValueCodec, kept: Int, groupSize: Int) -> Int {
        switch codec {
        case .fp32: return kept * 4
        case .fp16: return kept * 2
        case .q8, .q4, .q2, .sign:
            let bits = codec.bits!
            let groups = (kept + groupSize - 1) / groupSize
            let perGroupHeader = codec == .sign ? 4 : 8
            let full = kept / groupSize
            let last = kept % groupSize
            return groups * perGroupHeader + full * ((groupSize * bits + 7) / 8) + (last * bits + 7) / 8
        }
    }

    private static func appendValues<G: RandomNumberGenerator>(
        _ v: UnsafeBufferPointer<Float>, codec: ValueCodec, groupSize g: Int, rounding: Rounding,
        to body: inout [UInt8], generator: inout G
    ) throws {
        body.reserveCapacity(body.count + valueSectionLength(codec: codec, kept: v.count, groupSize: g))
        switch codec {
        case .fp32:
            #if _endian(little)
            body.append(contentsOf: UnsafeRawBufferPointer(v))
            #else
            for x in v { body.appendUInt32(x.bitPattern) }
            #endif
        case .fp16:
            for (i, x) in v.enumerated() {
                guard abs(x) <= Float(Float16.greatestFiniteMagnitude) else {
                    throw CodecError(.nonFinite, "value \(i) (\(x)) is outside float16's range")
                }
                let h = Float16(x).bitPattern
                body.append(UInt8(h & 0xFF))
                body.append(UInt8(h >> 8))
            }
        case .sign:
            var start = 0
            while start < v.count {
                let end = min(v.count, start + g)
                var sum = 0.0
                for i in start..<end { sum += Double(abs(v[i])) }
                body.appendUInt32(Float(sum / Double(end - start)).bitPattern)
                var byte: UInt8 = 0, bit = 0
                for i in start..<end {
                    if v[i] >= 0 { byte |= 1 << bit }
                    bit += 1
                    if bit == 8 { body.append(byte); byte = 0; bit = 0 }
                }
                if bit > 0 { body.append(byte) }
                start = end
            }
        case .q8, .q4, .q2:
            // A concrete generator seeded from the caller's keeps the per-value draw cheap.
            var uniform = SplitMix64(seed: rounding == .stochastic ? generator.next() : 0)
            let bits = codec.bits!
            let levels = (1 << bits) - 1
            var start = 0
            while start < v.count {
                let end = min(v.count, start + g)
                var low = v[start], high = v[start]
                for i in start..<end {
                    low = min(low, v[i])
                    high = max(high, v[i])
                }
                let step = Float((Double(high) - Double(low)) / Double(levels))
                body.appendUInt32(low.bitPattern)
                body.appendUInt32(step.bitPattern)
                let inverse = step > 0 ? 1 / Double(step) : 0
                var byte: UInt8 = 0, bit = 0
                for i in start..<end {
                    let scaled = (Double(v[i]) - Double(low)) * inverse
                    let q: Int
                    switch rounding {
                    case .nearest: q = Int(scaled.rounded())
                    case .stochastic: q = Int((scaled + uniform.nextUnit()).rounded(.down))
                    }
                    byte |= UInt8(min(levels, max(0, q))) << bit
                    bit += bits
                    if bit == 8 { body.append(byte); byte = 0; bit = 0 }
                }
                if bit > 0 { body.append(byte) }
                start = end
            }
        }
    }

    /// Indices of the k largest magnitudes, ascending. O(n) expected (quickselect for the
    /// threshold, then one scan).
    static func topKIndices(_ values: UnsafeBufferPointer<Float>, k: Int) -> [UInt32] {
        let n = values.count
        if k >= n { return (0..<UInt32(n)).map { $0 } }
        var magnitudes = values.map { abs($0) }
        let threshold = magnitudes.withUnsafeMutableBufferPointer { quickselectDescending($0, k - 1) }
        var result: [UInt32] = []
        result.reserveCapacity(k)
        var above = 0
        for x in values where abs(x) > threshold { above += 1 }
        var tiesAllowed = k - above
        for i in 0..<n {
            let m = abs(values[i])
            if m > threshold {
                result.append(UInt32(i))
            } else if m == threshold && tiesAllowed > 0 {
                result.append(UInt32(i))
                tiesAllowed -= 1
            }
        }
        return result
    }

    /// The value that would be at position `k` if `a` were sorted in descending order.
    private static func quickselectDescending(_ a: UnsafeMutableBufferPointer<Float>, _ k: Int) -> Float {
        var low = 0, high = a.count - 1
        while low < high {
            let pivot = a[(low + high) / 2]
            var i = low, j = high
            while i <= j {
                while a[i] > pivot { i += 1 }
                while a[j] < pivot { j -= 1 }
                if i <= j {
                    a.swapAt(i, j)
                    i += 1
                    j -= 1
                }
            }
            if k <= j { high = j } else if k >= i { low = i } else { return a[k] }
        }
        return a[k]
    }

    static func encodeDeltaVarints(_ indices: [UInt32]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(indices.count * 2)
        var previous: Int64 = -1
        for index in indices {
            var delta = UInt64(Int64(index) - previous)
            previous = Int64(index)
            while delta >= 0x80 {
                out.append(UInt8(delta & 0x7F) | 0x80)
                delta >>= 7
            }
            out.append(UInt8(delta))
        }
        return out
    }

    static func encodeBitmap(_ indices: [UInt32], count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: (count + 7) / 8)
        for index in indices { out[Int(index) >> 3] |= 1 << (index & 7) }
        return out
    }
}

extension Array where Element == UInt8 {
    mutating func setUInt32(_ value: UInt32, at offset: Int) {
        for i in 0..<4 { self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }

    mutating func appendUInt32(_ value: UInt32) {
        append(UInt8(value & 0xFF))
        append(UInt8(value >> 8 & 0xFF))
        append(UInt8(value >> 16 & 0xFF))
        append(UInt8(value >> 24))
    }
}

/// SplitMix64: small and fast; used for the per-value draws of stochastic rounding (and by the
/// fuzzer for its inputs).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }

    @inline(__always)
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    @inline(__always)
    mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1p-53 }
}
