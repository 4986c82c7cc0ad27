/// A running example-weighted sum of deltas kept per shard: a client that trained only some
/// shards contributes to those shards only, and each shard's mean is divided by the weight of
/// the clients that trained it. Memory is one model, whatever the number of clients.
public struct ShardedDeltaSum: Sendable {
    public let shardRanges: [Range<Int>]
    public private(set) var sum: [Float]
    public private(set) var weights: [Double]
    public private(set) var contributions = 0
    /// Per parameter, the weight of the updates that carried it, once an update covering only
    /// some places of its shards (a width-scaled sub-model's) was added; nil before.
    public private(set) var coverage: [Double]?

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
            if coverage != nil { for i in shardRanges[shard] { coverage![i] += weight } }
        }
        contributions += 1
    }

    /// Adds weight × delta at `positions` only (a sub-model's places in the model): each of them
    /// is then averaged over the updates that carried it (HeteroFL).
    public mutating func add(delta: [Float], positions: [Int32], weight: Double) {
        if coverage == nil {
            var perPosition = [Double](repeating: 0, count: sum.count)
            for (shard, range) in shardRanges.enumerated() where weights[shard] > 0 {
                for i in range { perPosition[i] = weights[shard] }
            }
            coverage = perPosition
        }
        let w = Float(weight)
        for position in positions {
            let i = Int(position)
            sum[i] += w * delta[i]
            coverage![i] += weight
        }
        contributions += 1
    }

    /// The mean delta, zero for shards nobody trained; nil when nothing was added.
    public var mean: [Float]? {
        guard contributions > 0 else { return nil }
        var result = [Float](repeating: 0, count: sum.count)
        if let coverage {
            for i in result.indices where coverage[i] > 0 { result[i] = sum[i] * Float(1 / coverage[i]) }
            return result
        }
        for (shard, range) in shardRanges.enumerated() where weights[shard] > 0 {
            let scale = Float(1 / weights[shard])
            for i in range { result[i] = sum[i] * scale }
        }
        return result
    }
}
