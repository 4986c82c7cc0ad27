/// Encodes a whole model-sized vector (a delta or the weights) shard by shard with one
/// ``CodecSpec``; the shards are the model layout's tensors, given as ranges of the flat vector.
public struct UpdateCodec: Sendable {
    public let spec: CodecSpec
    public let shardRanges: [Range<Int>]
    public let count: Int
    /// Per shard, its matrix shape when it may travel as low-rank factors (nil for a vector).
    public let columns: [Int?]
    /// Per shard, the shape it is factored at under a `lowrank:R` spec, nil when it travels
    /// whole (always nil without low rank).
    public let factorShapes: [FactorShape?]

    /// A shard's matrix and the rank of its factors.
    public struct FactorShape: Sendable, Equatable {
        public var rows: Int
        public var columns: Int
        public var rank: Int
    }

    /// `count` is the vector's size when the shards do not end it (some of a model's tensors
    /// are not encoded, such as the frozen ones of a model with adapters). `columns` gives each
    /// shard's tensor's last dimension (nil for a vector): a `lowrank:R` spec needs it.
    public init(spec: CodecSpec, shardRanges: [Range<Int>], count: Int? = nil, columns: [Int?]? = nil) {
        precondition(count == nil || count! >= (shardRanges.last?.upperBound ?? 0), "shards beyond the vector")
        precondition(columns == nil || columns!.count == shardRanges.count, "columns do not match the shards")
        precondition(spec.lowRank == nil || columns != nil, "a low-rank codec needs the shards' shapes")
        self.spec = spec
        self.shardRanges = shardRanges
        self.count = count ?? shardRanges.last?.upperBound ?? 0
        self.columns = columns ?? shardRanges.map { _ in nil }
        factorShapes = zip(shardRanges, self.columns).map { range, columns in
            spec.factorRank(count: range.count, columns: columns).map { FactorShape(rows: range.count / columns!, columns: columns!, rank: $0) }
        }
    }

    /// One encoded byte string per shard. `masks` (a pruning mask's kept positions per shard,
    /// nil for a whole shard) makes masked shards sparse over their kept positions; when the
    /// receiver holds the masks (an update), the positions are not written. Under a `lowrank:R`
    /// spec each factored shard is compressed from its warm start in `warmStarts` (columns × r,
    /// the task's; ``LowRankFactors``).
    public func encode<G: RandomNumberGenerator>(
        _ vector: [Float], masks: [[UInt32]?]? = nil, receiverHoldsMasks: Bool = false, warmStarts: [[Float]?]? = nil, generator: inout G
    ) throws -> [[UInt8]] {
        precondition(vector.count == count, "vector does not match the layout")
        precondition(masks == nil || masks!.count == shardRanges.count, "masks do not match the layout")
        return try vector.withUnsafeBufferPointer { all in
            try shardRanges.enumerated().map { index, range in
                let values = UnsafeBufferPointer(rebasing: all[range])
                if let shape = factorShapes[index] {
                    guard let start = warmStarts?[index], start.count == shape.columns * shape.rank else {
                        throw CodecError(.badSpec, "shard \(index) is coded as rank-\(shape.rank) factors and has no warm start of \(shape.columns)x\(shape.rank) values")
                    }
                    let (p, q) = LowRankFactors.compress(values, rows: shape.rows, columns: shape.columns, warmStart: start, rank: shape.rank)
                    return try ShardCodec.encodeFactors(p: p, q: q, rows: shape.rows, columns: shape.columns, rank: shape.rank, spec: spec, generator: &generator)
                }
                return try ShardCodec.encode(values, spec: spec, keeping: masks?[index], receiverHoldsMask: receiverHoldsMasks, generator: &generator)
            }
        }
    }

    /// Decodes every shard into `vector` (which must have the layout's size). Each shard is
    /// checked against its own expected length; on error `vector` may be partly written.
    public func decode(_ shards: [[UInt8]], into vector: inout [Float], masks: [[UInt32]?]? = nil) throws {
        precondition(vector.count == count, "vector does not match the layout")
        guard shards.count == shardRanges.count else {
            throw CodecError(.wrongElementCount, "\(shards.count) encoded shards, the model has \(shardRanges.count)")
        }
        try vector.withUnsafeMutableBufferPointer { all in
            for (index, (bytes, range)) in zip(shards, shardRanges).enumerated() {
                try bytes.withUnsafeBytes { raw in
                    try ShardCodec.decode(raw, into: UnsafeMutableBufferPointer(rebasing: all[range]), mask: masks?[index], columns: factorShapes[index]?.columns)
                }
            }
        }
    }
}

/// Error feedback (Seide et al. 2014; Karimireddy et al. 2019): what compression dropped from
/// one update is added to the next, so nothing is lost for good, only delayed.
public struct ErrorFeedback: Sendable {
    public private(set) var residual: [Float]

    public init(count: Int) {
        residual = [Float](repeating: 0, count: count)
    }

    /// delta += residual (the update to send now).
    public func compensate(_ delta: inout [Float]) {
        precondition(delta.count == residual.count, "delta does not match the residual")
        for i in delta.indices { delta[i] += residual[i] }
    }

    /// residual = sent − what the receiver decoded.
    public mutating func record(sent: [Float], decoded: [Float]) {
        precondition(sent.count == residual.count && decoded.count == residual.count, "size mismatch")
        for i in residual.indices { residual[i] = sent[i] - decoded[i] }
    }
}
