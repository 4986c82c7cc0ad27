extension ShardCodec {
    /// The header fields of an encoded shard, after validation.
    public struct Header: Sendable, Equatable {
        public var codec: ValueCodec
        public var zlib: Bool
        public var sparse: Bool
        public var stochastic: Bool
        public var groupSize: Int
        public var elementCount: Int
        public var keptCount: Int
        public var bodyLength: Int
        public var storedLength: Int
        public var checksum: UInt32
        var indexEncoding: IndexEncoding
        /// The rank of a shard coded as low-rank factors (index encoding 4), 0 otherwise.
        public var rank = 0
        /// The columns of a factored shard's matrix (the receiver's tensor shape), 0 otherwise.
        var columns = 0
        /// Sparse over the receiver's pruning mask, positions not written (index encoding 3).
        public var isCodedOverMask: Bool { indexEncoding == .mask }
    }

    /// Decodes an encoded shard whose length must be `expectedCount` (the size of that shard
    /// in the current model layout). Memory used is bounded by that count, whatever the
    /// header claims.
    public static func decode(_ bytes: [UInt8], expectedCount: Int) throws -> [Float] {
        var output = [Float](repeating: 0, count: expectedCount)
        try bytes.withUnsafeBytes { raw in
            try output.withUnsafeMutableBufferPointer { try decode(raw, into: $0) }
        }
        return output
    }

    /// Decodes into `output`, whose count is the expected element count. Positions a sparse
    /// shard does not carry are set to zero.
    /// `mask` is the pruning mask the receiver holds for this shard (ascending kept positions),
    /// needed to read a shard coded over it (index encoding 3).
    /// `columns` is the shard's tensor's last dimension when it may arrive as low-rank factors
    /// (an update under a `lowrank:R` spec); nil refuses factors.
    public static func decode(_ bytes: UnsafeRawBufferPointer, into output: UnsafeMutableBufferPointer<Float>, mask: [UInt32]? = nil, columns: Int? = nil) throws {
        var ignored: [UInt32]?
        try decode(bytes, into: output, mask: mask, columns: columns, keptPositions: &ignored)
    }

    /// Decodes into `output` and sets `keptPositions` to the positions a sparse shard carries
    /// (ascending), or nil for a dense one: a sparse model shard's positions are its pruning
    /// mask.
    public static func decode(_ bytes: UnsafeRawBufferPointer, into output: UnsafeMutableBufferPointer<Float>, mask: [UInt32]? = nil, columns: Int? = nil,
                              keptPositions: inout [UInt32]?) throws {
        let header = try parseHeader(bytes, expectedCount: output.count, columns: columns)
        let stored = UnsafeRawBufferPointer(rebasing: bytes[headerSize...])
        if header.zlib {
            let inflated = try zlibDecompress(stored, expectedLength: header.bodyLength)
            keptPositions = try inflated.withUnsafeBytes { try decodeBody($0, header: header, mask: mask, into: output) }
        } else {
            // Decoded in place: an uncompressed body is not copied first.
            keptPositions = try decodeBody(stored, header: header, mask: mask, into: output)
        }
    }

    @discardableResult
    private static func decodeBody(_ body: UnsafeRawBufferPointer, header: Header, mask: [UInt32]?, into output: UnsafeMutableBufferPointer<Float>) throws -> [UInt32]? {
        guard crc32Checksum(body) == header.checksum else {
            throw CodecError(.badChecksum, "body checksum 0x\(String(crc32Checksum(body), radix: 16)) does not match the header's 0x\(String(header.checksum, radix: 16))")
        }
        var cursor = 0
        var indices: [UInt32] = []
        switch header.indexEncoding {
        case .none, .factors: break
        case .varint: indices = try readDeltaVarints(body, count: header.keptCount, limit: header.elementCount, cursor: &cursor)
        case .bitmap: indices = try readBitmap(body, kept: header.keptCount, count: header.elementCount, cursor: &cursor)
        case .mask:
            guard let mask else { throw CodecError(.badIndex, "the shard is coded over a pruning mask and this receiver holds none") }
            guard mask.count == header.keptCount else {
                throw CodecError(.badIndex, "the shard is coded over a mask of \(header.keptCount) positions; the receiver's mask keeps \(mask.count)")
            }
            guard mask.last.map({ Int($0) < header.elementCount }) ?? true else { throw CodecError(.badIndex, "the receiver's mask reaches beyond the shard") }
            indices = mask
        }
        if header.sparse, header.indexEncoding != .mask {
            // One encoding per shard: varints when they are no longer than the bitmap.
            let varintLength = header.indexEncoding == .varint ? cursor : deltaVarintLength(indices)
            let bitmapLength = (header.elementCount + 7) / 8
            guard (header.indexEncoding == .varint) == (varintLength <= bitmapLength) else {
                throw CodecError(.badIndex, header.indexEncoding == .varint
                    ? "\(varintLength) bytes of index varints where the bitmap takes \(bitmapLength)"
                    : "a bitmap of \(bitmapLength) bytes where index varints take \(varintLength)")
            }
        }
        let valueBytes = valueSectionLength(codec: header.codec, kept: header.keptCount, groupSize: header.groupSize)
        let remaining = body.count - cursor
        guard remaining >= valueBytes else {
            throw CodecError(.truncated, "value section has \(remaining) bytes, \(valueBytes) expected")
        }
        guard remaining == valueBytes else {
            throw CodecError(.trailingBytes, "\(remaining - valueBytes) bytes after the value section")
        }
        let values = UnsafeRawBufferPointer(rebasing: body[cursor...])
        if header.indexEncoding == .factors {
            var factors = [Float](repeating: 0, count: header.keptCount)
            try factors.withUnsafeMutableBufferPointer { try readValues(values, header: header, into: $0) }
            try multiplyFactors(factors, rank: header.rank, columns: header.columns, into: output)
            return nil
        }
        if header.sparse {
            var kept = [Float](repeating: 0, count: header.keptCount)
            try kept.withUnsafeMutableBufferPointer { try readValues(values, header: header, into: $0) }
            output.update(repeating: 0)
            for (value, index) in zip(kept, indices) { output[Int(index)] = value }
            return indices
        } else {
            try readValues(values, header: header, into: output)
            return nil
        }
    }

    /// x̂[i·c + j] = binary32(Σₜ binary64(P[i·r + t]) × binary64(Q[j·r + t])), the sum in
    /// binary64 in order of t from +0 (each product is exact in binary64): P (rows × r) then Q
    /// (columns × r), row-major, in `factors` (Protocol.md §8.6).
    static func multiplyFactors(_ factors: [Float], rank r: Int, columns: Int, into output: UnsafeMutableBufferPointer<Float>) throws {
        let rows = output.count / columns
        var q = [Double](repeating: 0, count: columns * r)
        for i in q.indices { q[i] = Double(factors[rows * r + i]) }
        var p = [Double](repeating: 0, count: r)
        for i in 0..<rows {
            for t in 0..<r { p[t] = Double(factors[i * r + t]) }
            for j in 0..<columns {
                var sum = 0.0
                for t in 0..<r { sum += p[t] * q[j * r + t] }
                let value = Float(sum)
                guard value.isFinite else { throw CodecError(.nonFinite, "value \(i * columns + j) of the factors' product is \(value) in binary32") }
                output[i * columns + j] = value
            }
        }
    }

    /// Validates the fixed header against the expected element count. `columns` is the shard's
    /// tensor's last dimension when it may come as low-rank factors; nil refuses factors.
    public static func parseHeader(_ bytes: UnsafeRawBufferPointer, expectedCount: Int, columns: Int? = nil) throws -> Header {
        guard bytes.count >= headerSize else {
            throw CodecError(.truncated, "\(bytes.count) bytes, shorter than the \(headerSize)-byte header")
        }
        guard bytes[0] == 0x46, bytes[1] == 0x43 else {
            throw CodecError(.badMagic, "magic 0x\(String(bytes[0], radix: 16))\(String(bytes[1], radix: 16)) is not \"FC\"")
        }
        guard bytes[2] == formatVersion else { throw CodecError(.unsupportedVersion, "encoded-shard format version \(bytes[2]), this build reads \(formatVersion)") }
        guard let codec = ValueCodec(rawValue: bytes[3]) else { throw CodecError(.unknownCodec, "codec byte \(bytes[3])") }
        let flags = bytes[4]
        guard flags & ~(flagZlib | flagSparse | flagStochastic) == 0 else { throw CodecError(.badHeader, "unknown flag bits 0x\(String(flags, radix: 16))") }
        guard let indexEncoding = IndexEncoding(rawValue: bytes[5]) else { throw CodecError(.badHeader, "index encoding \(bytes[5])") }
        let rank = Int(bytes[6]) | Int(bytes[7]) << 8
        guard rank == 0 || indexEncoding == .factors else { throw CodecError(.badHeader, "reserved bytes are not zero") }
        let groupSize = Int(bytes.loadLittleEndianUInt32(at: 8))
        let n = Int(bytes.loadLittleEndianUInt32(at: 12))
        let k = Int(bytes.loadLittleEndianUInt32(at: 16))
        let bodyLength = Int(bytes.loadLittleEndianUInt32(at: 20))
        let storedLength = Int(bytes.loadLittleEndianUInt32(at: 24))
        let checksum = bytes.loadLittleEndianUInt32(at: 28)
        let sparse = flags & flagSparse != 0
        guard n == expectedCount else {
            throw CodecError(.wrongElementCount, "shard declares \(n) values, the model layout has \(expectedCount)")
        }
        guard (1...65_536).contains(groupSize) else { throw CodecError(.badHeader, "group size \(groupSize) outside 1...65536") }
        guard sparse == (indexEncoding != .none && indexEncoding != .factors) else { throw CodecError(.badHeader, "sparse flag and index encoding disagree") }
        if indexEncoding == .factors {
            guard let columns, columns > 0, n % columns == 0 else {
                throw CodecError(.badHeader, "low-rank factors where the receiver expects a whole shard")
            }
            let rows = n / columns
            guard rank >= 1, rank <= min(rows, columns) else { throw CodecError(.badHeader, "rank \(rank) outside 1...\(min(rows, columns)) for a \(rows)x\(columns) matrix") }
            guard k == rank * (rows + columns), k < n else {
                throw CodecError(.badHeader, "kept count \(k) is not the \(rank * (rows + columns)) values of rank-\(rank) factors of a \(rows)x\(columns) matrix, or not fewer than its \(n)")
            }
        } else if sparse {
            guard k >= 1, k <= n else { throw CodecError(.badHeader, "kept count \(k) outside 1...\(n)") }
        } else {
            guard k == n else { throw CodecError(.badHeader, "dense shard with kept count \(k) ≠ \(n)") }
        }
        let indexBound: Int
        switch indexEncoding {
        case .none: indexBound = 0
        case .varint: indexBound = k * 5
        case .bitmap: indexBound = (n + 7) / 8
        case .mask, .factors: indexBound = 0
        }
        let bound = indexBound + valueSectionLength(codec: codec, kept: k, groupSize: groupSize)
        guard bodyLength <= bound else {
            throw CodecError(.bodyTooLarge, "body of \(bodyLength) bytes exceeds the \(bound) a \(codec) shard of \(n) values can need")
        }
        let zlib = flags & flagZlib != 0
        let actual = bytes.count - headerSize
        guard actual >= storedLength else { throw CodecError(.truncated, "\(actual) body bytes present, header declares \(storedLength)") }
        guard actual == storedLength else { throw CodecError(.trailingBytes, "\(actual - storedLength) bytes after the declared body") }
        if !zlib {
            guard storedLength == bodyLength else { throw CodecError(.badHeader, "uncompressed body of \(storedLength) bytes, header declares \(bodyLength)") }
        }
        return Header(
            codec: codec, zlib: zlib, sparse: sparse, stochastic: flags & flagStochastic != 0,
            groupSize: groupSize, elementCount: n, keptCount: k, bodyLength: bodyLength,
            storedLength: storedLength, checksum: checksum, indexEncoding: indexEncoding,
            rank: rank, columns: indexEncoding == .factors ? columns! : 0)
    }

    /// Bytes the delta varints of ascending `indices` take.
    static func deltaVarintLength(_ indices: [UInt32]) -> Int {
        var length = 0, previous: Int64 = -1
        for index in indices {
            let delta = Int64(index) - previous
            previous = Int64(index)
            length += delta < 1 << 7 ? 1 : delta < 1 << 14 ? 2 : delta < 1 << 21 ? 3 : delta < 1 << 28 ? 4 : 5
        }
        return length
    }

    private static func readDeltaVarints(_ body: UnsafeRawBufferPointer, count: Int, limit: Int, cursor: inout Int) throws -> [UInt32] {
        var indices: [UInt32] = []
        indices.reserveCapacity(count)
        var previous = -1
        for _ in 0..<count {
            var delta = 0
            var shift = 0
            while true {
                guard cursor < body.count else { throw CodecError(.truncated, "index section ends inside a varint") }
                let byte = body[cursor]
                cursor += 1
                guard shift <= 28 else { throw CodecError(.badIndex, "index varint longer than 5 bytes") }
                delta |= Int(byte & 0x7F) << shift
                if byte & 0x80 == 0 { break }
                shift += 7
            }
            guard delta > 0 else { throw CodecError(.repeatedIndex, "index \(previous) repeated") }
            let index = previous + delta
            guard index < limit else { throw CodecError(.badIndex, "index \(index) outside the shard's \(limit) values") }
            indices.append(UInt32(index))
            previous = index
        }
        return indices
    }

    private static func readBitmap(_ body: UnsafeRawBufferPointer, kept: Int, count: Int, cursor: inout Int) throws -> [UInt32] {
        let length = (count + 7) / 8
        guard body.count >= length else { throw CodecError(.truncated, "bitmap of \(body.count) bytes, \(length) expected") }
        var indices: [UInt32] = []
        indices.reserveCapacity(kept)
        for byteIndex in 0..<length {
            var byte = body[byteIndex]
            while byte != 0 {
                let bit = byte.trailingZeroBitCount
                let index = byteIndex * 8 + bit
                guard index < count else { throw CodecError(.badIndex, "bitmap marks index \(index) outside the shard's \(count) values") }
                indices.append(UInt32(index))
                byte &= byte - 1
            }
        }
        guard indices.count == kept else { throw CodecError(.badIndex, "bitmap marks \(indices.count) values, header declares \(kept)") }
        cursor = length
        return indices
    }

    private static func readValues(_ bytes: UnsafeRawBufferPointer, header: Header, into output: UnsafeMutableBufferPointer<Float>) throws {
        let k = output.count
        let g = header.groupSize
        switch header.codec {
        case .fp32:
            #if _endian(little)
            UnsafeMutableRawBufferPointer(output).copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[0..<(k * 4)]))
            #else
            for i in 0..<k { output[i] = Float(bitPattern: bytes.loadLittleEndianUInt32(at: i * 4)) }
            #endif
            if let i = FiniteScan.firstNonFinite(UnsafeBufferPointer(output)) {
                throw CodecError(.nonFinite, "value \(i) is \(output[i])")
            }
        case .fp16:
            for i in 0..<k {
                let x = Float(Float16(bitPattern: UInt16(bytes[2 * i]) | UInt16(bytes[2 * i + 1]) << 8))
                guard x.isFinite else { throw CodecError(.nonFinite, "value \(i) is \(x)") }
                output[i] = x
            }
        case .sign:
            var offset = 0
            var start = 0
            while start < k {
                let end = min(k, start + g)
                let scale = Float(bitPattern: bytes.loadLittleEndianUInt32(at: offset))
                guard scale.isFinite, scale >= 0 else { throw CodecError(.nonFinite, "group scale \(scale)") }
                offset += 4
                for i in start..<end {
                    let bit = (bytes[offset + (i - start) / 8] >> ((i - start) % 8)) & 1
                    output[i] = bit == 1 ? scale : -scale
                }
                offset += (end - start + 7) / 8
                start = end
            }
        case .q8, .q4, .q2:
            let bits = header.codec.bits!
            let mask = UInt8((1 << bits) - 1)
            var offset = 0
            var start = 0
            while start < k {
                let end = min(k, start + g)
                let low = Float(bitPattern: bytes.loadLittleEndianUInt32(at: offset))
                let step = Float(bitPattern: bytes.loadLittleEndianUInt32(at: offset + 4))
                guard low.isFinite, step.isFinite, step >= 0 else {
                    throw CodecError(.nonFinite, "group minimum \(low) and step \(step) must be finite, the step not negative")
                }
                offset += 8
                for i in start..<end {
                    let position = (i - start) * bits
                    let q = (bytes[offset + position / 8] >> (position % 8)) & mask
                    // Protocol.md §8: q·s is exact in binary64, the sum is rounded to binary64,
                    // then once more to binary32 (both to nearest, ties to even).
                    let value = Float(Double(low) + Double(q) * Double(step))
                    guard value.isFinite else { throw CodecError(.nonFinite, "value \(i) (\(low) + \(q) × \(step)) is not finite in binary32") }
                    output[i] = value
                }
                offset += ((end - start) * bits + 7) / 8
                start = end
            }
        }
    }
}

extension UnsafeRawBufferPointer {
    func loadLittleEndianUInt32(at offset: Int) -> UInt32 {
        UInt32(self[offset]) | UInt32(self[offset + 1]) << 8 | UInt32(self[offset + 2]) << 16 | UInt32(self[offset + 3]) << 24
    }
}
