/// The server's own descent directions on a small dataset it trusts, one per class: what the
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
        var byClass = [[Int32]](repeating: [], count: data.dataset.classes)
        for index in data.indices { byClass[Int(data.dataset.labels[Int(index)])].append(index) }
        byClass.removeAll { $0.isEmpty }
        guard byClass.count >= 2 else {
            throw DataError(data.dataset.name, "the trusted data must hold examples of at least two classes, it has \(byClass.count)")
        }
        guard data.dataset.sampleShape.count == network.inputShape.count else {
            throw DataError(data.dataset.name, "trusted data has \(data.dataset.sampleShape.count) features per example, the model expects \(network.inputShape.count)")
        }
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
        let chosen = all.prefix(count).map(Int.init)
        let width = dataset.sampleShape.count
        var features = [Float]()
        features.reserveCapacity(chosen.count * width)
        for i in chosen { features.append(contentsOf: dataset.features[(i * width)..<((i + 1) * width)]) }
        let copy = try Dataset(
            name: dataset.name + " (trusted sample)", sampleShape: dataset.sampleShape, classes: dataset.classes,
            features: features, labels: chosen.map { dataset.labels[$0] })
        return copy.all
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
