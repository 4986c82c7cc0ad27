import FedModel

/// The one draw that picks a round's clients, shared by the coordinator and the simulator:
/// a partial Fisher-Yates shuffle of the pool (in the order given, which callers keep sorted
/// by client id) from the run's seed, the round and the attempt (retries after a round below
/// quorum draw again).
public enum ClientSelection {
    public static func draw<ID>(from pool: [ID], count: Int, seed: UInt64, round: Int, attempt: Int = 0) -> [ID] {
        var pool = pool
        var generator = attempt == 0
            ? SeededGenerator(seed: seed, stream: 0x5A3B, UInt64(round))
            : SeededGenerator(seed: seed, stream: 0x5A3B, UInt64(round), UInt64(attempt))
        let count = min(pool.count, count)
        for i in 0..<count {
            pool.swapAt(i, i + Int(generator.next() % UInt64(pool.count - i)))
        }
        return Array(pool.prefix(count))
    }

    /// The shards a client with `memoryBudget` bytes trains (Protocol.md, section 7): holding the
    /// model costs 4 bytes per parameter; training a shard costs 12 bytes per parameter of it
    /// (gradient, local copy, delta). Shards are taken largest first while they fit; a client
    /// whose budget fits none trains the smallest one. A budget of 0 means no limit. Only
    /// trainable shards are ever chosen (in a model with low-rank adapters, the adapters).
    public static func shardsToTrain(layout: ParameterLayout, memoryBudget: UInt64) -> [UInt16] {
        let trainable = layout.tensors.filter(\.trainable)
        let all = trainable.map { UInt16($0.index) }
        guard memoryBudget > 0 else { return all }
        var remaining = Int64(clamping: memoryBudget) - Int64(layout.parameterCount * 4)
        var chosen: [UInt16] = []
        for tensor in trainable.sorted(by: { ($0.count, $1.index) > ($1.count, $0.index) }) {
            let cost = Int64(tensor.count * 12)
            if cost <= remaining {
                chosen.append(UInt16(tensor.index))
                remaining -= cost
            }
        }
        if chosen.isEmpty, let smallest = trainable.min(by: { $0.count < $1.count }) {
            chosen = [UInt16(smallest.index)]
        }
        return chosen.sorted()
    }

    /// The width class of a client with `memoryBudget` bytes (Protocol.md, section 7): the
    /// widest whose training fits, at 16 bytes per parameter of its sub-model (the model, its
    /// gradient, the local copy and the delta, 4 bytes each). `parameterCounts` are the classes'
    /// sub-model sizes, narrowest first. A budget of 0 (unstated) gets the widest; a budget
    /// that fits none, the narrowest.
    public static func widthClass(memoryBudget: UInt64, parameterCounts: [Int]) -> Int {
        precondition(!parameterCounts.isEmpty, "no width classes")
        guard memoryBudget > 0 else { return parameterCounts.count - 1 }
        return parameterCounts.lastIndex { UInt64(16 * $0) <= memoryBudget } ?? 0
    }
}
