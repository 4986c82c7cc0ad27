/// A running example-weighted sum of deltas kept per shard: a client that trained only some
/// shards contributes to those shards only, and each shard's mean is divided by the weight of
/// the clients that trained it. Memory is one model, whatever the number of clients.
public struct ShardedDeltaSum: Sendable {
    public let shardRanges: [Range<Int>]
    public private(set) var sum: [Float]
    public private(set) var weights: [Double]
    public private(set) var contributions = 0

    public init(shardRanges: [Range<Int>]) {
        self.shardRanges = shardRanges
        sum = [Float](repeating: 0, count: shardRanges.last?.upperBound ?? 0)
        weights = [Double](repeating: 0, count: shardRanges.count)
    }

    /// Adds weight × delta for the listed shards (`delta` is model-sized; other shards ignored).
    public mutating func add(delta: [Float], shards: [Int], weight: Double) {
        let w = Float(weight)
        for shard in shards {
            for i in shardRanges[shard] { sum[i] += w * delta[i] }
            weights[shard] += weight
        }
        contributions += 1
    }

    /// The mean delta, zero for shards nobody trained; nil when nothing was added.
    public var mean: [Float]? {
        guard contributions > 0 else { return nil }
        var result = [Float](repeating: 0, count: sum.count)
        for (shard, range) in shardRanges.enumerated() where weights[shard] > 0 {
            let scale = Float(1 / weights[shard])
            for i in range { result[i] = sum[i] * scale }
        }
        return result
    }
}
