/// How a dataset is split among simulated clients.
public enum Partition: Hashable, Sendable, CustomStringConvertible {
    /// Shuffled, then equal shares (sizes differ by at most one).
    case iid
    /// McMahan et al.'s pathological non-IID split: sort by label, cut into
    /// `clients × shardsPerClient` equal shards, give each client `shardsPerClient` at random.
    case shards(perClient: Int)
    /// Label skew: for every class, the clients' shares of it are drawn from Dirichlet(alpha).
    case dirichlet(alpha: Double)
    /// Quantity-based label skew (NIID-Bench's "#C = k", Li et al. 2021): client i holds label
    /// i mod classes and k − 1 other labels drawn at random; each label's examples are shuffled
    /// and cut into equal parts among the clients that hold it.
    case labels(perClient: Int)
    /// The split the data carries: one client per user or device id, in increasing id order,
    /// each holding that id's examples (as LEAF's FEMNIST or Shakespeare are split).
    case natural

    public var description: String {
        switch self {
        case .iid: "iid"
        case .shards(let k): "shards(\(k) per client)"
        case .dirichlet(let alpha): "dirichlet(alpha=\(alpha))"
        case .labels(let k): "labels(\(k) per client)"
        case .natural: "natural"
        }
    }

    /// Splits `dataset`'s examples among `clients`, returning each client's indices. Splits by
    /// label (``shards``, ``dirichlet``) need class labels.
    public func split(_ dataset: Dataset, clients: Int, seed: UInt64) throws -> [[Int32]] {
        if !dataset.hasClassLabels {
            switch self {
            case .shards, .dirichlet, .labels:
                throw DataError("partition", "\(self) splits by class label and \(dataset.name) has target values; use iid or natural")
            case .iid, .natural:
                break
            }
        }
        return try split(labels: dataset.labels, classes: dataset.classes, clients: clients, seed: seed, groups: dataset.groups, count: dataset.count)
    }

    /// Splits the examples of `labels` among `clients`, returning each client's indices.
    /// `groups` (a user id per example) is needed by ``natural`` only; `count` stands in for
    /// `labels.count` when there are no labels (value targets, ``iid`` and ``natural`` only).
    public func split(labels: [Int32], classes: Int, clients: Int, seed: UInt64, groups: [Int32]? = nil, count: Int? = nil) throws -> [[Int32]] {
        let count = count ?? labels.count
        guard clients > 0 else { throw DataError("partition", "need at least one client") }
        guard count >= clients else {
            throw DataError("partition", "\(clients) clients but only \(count) examples")
        }
        var generator = SeededGenerator(seed: seed, stream: 0x9A27)
        switch self {
        case .natural:
            guard let groups else { throw DataError("partition", "natural needs a user or device id per training example (train_ids.npy)") }
            var byGroup: [Int32: [Int32]] = [:]
            for (i, group) in groups.enumerated() { byGroup[group, default: []].append(Int32(i)) }
            guard byGroup.count == clients else {
                throw DataError("partition", "the data has \(byGroup.count) users and natural gives each its own client: set clients = \(byGroup.count), not \(clients)")
            }
            return byGroup.keys.sorted().map { byGroup[$0]! }
        case .iid:
            var order = (0..<Int32(count)).map { $0 }
            order.withUnsafeMutableBufferPointer { generator.shuffle($0) }
            return equalChunks(order, count: clients)
        case .shards(let perClient):
            guard perClient > 0 else { throw DataError("partition", "shards per client must be positive") }
            let shardCount = clients * perClient
            guard shardCount <= labels.count else {
                throw DataError("partition", "\(shardCount) shards (\(clients) clients × \(perClient)) but only \(labels.count) examples")
            }
            // Stable sort by label, then cut.
            var byLabel = [[Int32]](repeating: [], count: classes)
            for (i, label) in labels.enumerated() { byLabel[Int(label)].append(Int32(i)) }
            let sorted = byLabel.flatMap { $0 }
            let shardList = equalChunks(sorted, count: shardCount)
            var shardOrder = Array(0..<shardCount)
            shardOrder.withUnsafeMutableBufferPointer { generator.shuffle($0) }
            return (0..<clients).map { c in
                (0..<perClient).flatMap { shardList[shardOrder[c * perClient + $0]] }
            }
        case .labels(let k):
            guard k >= 1, k <= classes else { throw DataError("partition", "labels per client must be in 1...\(classes), got \(k)") }
            var holders = [[Int]](repeating: [], count: classes)
            for c in 0..<clients {
                var chosen = [c % classes]
                while chosen.count < k {
                    let label = Int(generator.next() % UInt64(classes))
                    if !chosen.contains(label) { chosen.append(label) }
                }
                for label in chosen { holders[label].append(c) }
            }
            var byLabel = [[Int32]](repeating: [], count: classes)
            for (i, label) in labels.enumerated() { byLabel[Int(label)].append(Int32(i)) }
            var result = [[Int32]](repeating: [], count: clients)
            for label in 0..<classes where !holders[label].isEmpty {
                var members = byLabel[label]
                members.withUnsafeMutableBufferPointer { generator.shuffle($0) }
                for (part, client) in zip(equalChunks(members, count: holders[label].count), holders[label]) {
                    result[client].append(contentsOf: part)
                }
            }
            if let empty = result.firstIndex(where: \.isEmpty) {
                throw DataError("partition", "client \(empty) has no examples: its labels have too few to share")
            }
            return result
        case .dirichlet(let alpha):
            guard alpha > 0, alpha.isFinite else { throw DataError("partition", "dirichlet alpha must be positive, got \(alpha)") }
            var byLabel = [[Int32]](repeating: [], count: classes)
            for (i, label) in labels.enumerated() { byLabel[Int(label)].append(Int32(i)) }
            for attempt in 0..<100 {
                _ = attempt
                var result = [[Int32]](repeating: [], count: clients)
                for var members in byLabel where !members.isEmpty {
                    members.withUnsafeMutableBufferPointer { generator.shuffle($0) }
                    let weights = (0..<clients).map { _ in generator.nextGamma(shape: alpha) }
                    let total = weights.reduce(0, +)
                    var start = 0
                    var cumulative = 0.0
                    for c in 0..<clients {
                        cumulative += weights[c]
                        let end = c == clients - 1 ? members.count : min(members.count, Int((cumulative / total * Double(members.count)).rounded()))
                        if end > start { result[c].append(contentsOf: members[start..<end]) }
                        start = max(start, end)
                    }
                }
                if result.allSatisfy({ !$0.isEmpty }) { return result }
            }
            throw DataError("partition", "dirichlet(alpha=\(alpha)) left some of \(clients) clients without data in 100 draws; raise alpha or lower the client count")
        }
    }
}

/// Cuts `items` into `count` contiguous chunks whose sizes differ by at most one.
func equalChunks(_ items: [Int32], count: Int) -> [[Int32]] {
    let base = items.count / count
    let extra = items.count % count
    var chunks: [[Int32]] = []
    chunks.reserveCapacity(count)
    var start = 0
    for c in 0..<count {
        let size = base + (c < extra ? 1 : 0)
        chunks.append(Array(items[start..<(start + size)]))
        start += size
    }
    return chunks
}
