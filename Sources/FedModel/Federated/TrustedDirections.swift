/// The server's own descent directions on a small dataset it trusts, one per class (for value
/// targets, which have no classes, one per half of the examples): what the
/// trust rule of ``UpdateAggregator`` measures client updates against (after FLTrust's "root
/// data", Cao et al. 2021). A direction is the delta of one pass of SGD over the trusted
/// examples of one class (in batches of up to 256; one step for a class of up to 256 examples),
/// from the current global model.
public final class TrustedDirections {
    public let data: DatasetSlice
    /// The trusted examples of each class that has any.
    private let byClass: [[Int32]]
    private let batchSize: Int
    private let trainer: LocalTrainer
    private var parameters: [Float]

    public init(network: Network, data: DatasetSlice) throws {
        var byClass: [[Int32]]
        if data.dataset.hasClassLabels {
            byClass = [[Int32]](repeating: [], count: data.dataset.classes)
            for index in data.indices { byClass[Int(data.dataset.labels[Int(index)])].append(index) }
        } else {
            let half = data.indices.count / 2
            byClass = [Array(data.indices[..<half]), Array(data.indices[half...])]
        }
        byClass.removeAll { $0.isEmpty }
        guard byClass.count >= 2 else {
            throw DataError(data.dataset.name, "the trusted data must hold examples of at least two classes, it has \(byClass.count)")
        }
        if let problem = network.accepts(data.dataset) { throw DataError(data.dataset.name, "trusted data: \(problem)") }
        self.data = data
        self.byClass = byClass
        batchSize = min(256, byClass.map(\.count).max() ?? 1)
        trainer = LocalTrainer(network: network, batchCapacity: batchSize)
        parameters = [Float](repeating: 0, count: network.parameterCount)
    }

    /// The number of classes (directions).
    public var classes: Int { byClass.count }

    /// Picks `count` examples of `dataset` (all if fewer) with `seed`: the server's sample, copied
    /// out so that the rest of `dataset` can be freed.
    public static func sample(_ dataset: Dataset, count: Int, seed: UInt64) throws -> DatasetSlice {
        var generator = SeededGenerator(seed: seed, stream: 0x7A57)
        var all = Array(0..<Int32(dataset.count))
        all.withUnsafeMutableBufferPointer { generator.shuffle($0) }
        return try dataset.subset(all.prefix(count).map(Int.init), name: dataset.name + " (trusted sample)").all
    }

    /// One direction per class from `global`, trained with plain SGD at `learningRate`.
    public func directions(from global: [Float], learningRate: Float, seed: UInt64, round: Int) -> [[Float]] {
        let sgd = SGD(learningRate: learningRate)
        return byClass.enumerated().map { label, indices in
            var generator = SeededGenerator(seed: seed, stream: 0x7A57, UInt64(round), UInt64(label))
            parameters = global
            _ = trainer.train(
                parameters: &parameters, anchor: nil, data: DatasetSlice(dataset: data.dataset, indices: indices),
                epochs: 1, batchSize: batchSize, sgd: sgd, generator: &generator)
            var delta = parameters
            for i in delta.indices { delta[i] -= global[i] }
            return delta
        }
    }
}
