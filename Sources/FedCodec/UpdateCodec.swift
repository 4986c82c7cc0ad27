/// Encodes a whole model-sized vector (a delta or the weights) shard by shard with one
/// ``CodecSpec``; the shards are the model layout's tensors, given as ranges of the flat vector.
public struct UpdateCodec: Sendable {
    public let spec: CodecSpec
    public let shardRanges: [Range<Int>]
    public let count: Int

    /// `count` is the vector's size when the shards do not end it (some of a model's tensors
    /// are not encoded, such as the frozen ones of a model with adapters).
    public init(spec: CodecSpec, shardRanges: [Range<Int>], count: Int? = nil) {
        precondition(count == nil || count! >= (shardRanges.last?.upperBound ?? 0), "shards beyond the vector")
        self.spec = spec
        self.shardRanges = shardRanges
        self.count = count ?? shardRanges.last?.upperBound ?? 0
    }

    /// One encoded byte string per shard. `masks` (a pruning mask's kept positions per shard,
    /// nil for a whole shard) makes masked shards sparse over their kept positions; when the
    /// receiver holds the masks (an update), the positions are not written.
    public func encode<G: RandomNumberGenerator>(_ vector: [Float], masks: [[UInt32]?]? = nil, receiverHoldsMasks: Bool = false, generator: inout G) throws -> [[UInt8]] {
        precondition(vector.count == count, "vector does not match the layout")
        precondition(masks == nil || masks!.count == shardRanges.count, "masks do not match the layout")
        return try vector.withUnsafeBufferPointer { all in
            try shardRanges.enumerated().map { index, range in
                try ShardCodec.encode(UnsafeBufferPointer(rebasing: all[range]), spec: spec, keeping: masks?[index],
                                      receiverHoldsMask: receiverHoldsMasks, generator: &generator)
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
                    try ShardCodec.decode(raw, into: UnsafeMutableBufferPointer(rebasing: all[range]), mask: masks?[index])
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
