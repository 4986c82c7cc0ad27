import FedModel
import Foundation

/// Federated averaging with every client simulated in this process (McMahan et al. 2017):
/// each round samples a fraction C of the K clients, each trains E local epochs of SGD with
/// minibatch B from the current global model on its own slice of the data, and the server
/// adds the example-weighted mean of their deltas to the global model.
///
/// Clients train side by side, one per worker thread. Their deltas stream into one running
/// weighted sum (memory: one model plus one per worker), added in sampling order, so a run
/// is bitwise reproducible from its seed whatever the thread timing.
public final class Simulation {
    public let configuration: SimulationConfiguration
    public let network: Network
    public let trainData: Dataset
    public let testData: Dataset
    /// Each client's example indices into ``trainData``.
    public let clientIndices: [[Int32]]
    /// The current global model.
    public private(set) var global: [Float]
    public private(set) var records: [RoundRecord] = []

    private let trainers: [LocalTrainer]
    private let evaluator: Evaluator
    private let testSlice: DatasetSlice
    private var localModels: [[Float]]

    /// Builds the run: validates the configuration, loads and checks the data, partitions it.
    public convenience init(configuration: SimulationConfiguration) throws {
        try configuration.validate()
        let directory = URL(fileURLWithPath: configuration.data)
        let train = try MNIST.load(directory: directory, train: true)
        let test = try MNIST.load(directory: directory, train: false)
        try self.init(configuration: configuration, train: train, test: test)
    }

    /// Builds the run on already loaded data.
    public init(configuration: SimulationConfiguration, train: Dataset, test: Dataset) throws {
        try configuration.validate()
        let spec = try configuration.modelSpec()
        let network = try Network(spec)
        guard train.sampleShape.count == spec.input.count else {
            throw ConfigurationError("data \(train.name) has \(train.sampleShape.count) features per example, the model expects \(spec.input.count)")
        }
        guard test.sampleShape.count == spec.input.count else {
            throw ConfigurationError("test data \(test.name) has \(test.sampleShape.count) features per example, the model expects \(spec.input.count)")
        }
        self.configuration = configuration
        self.network = network
        trainData = train
        testData = test
        do {
            clientIndices = try configuration.partitionValue().split(
                labels: train.labels, classes: train.classes, clients: configuration.clients, seed: configuration.seed)
        } catch let error as DataError {
            throw ConfigurationError("partition \(configuration.partition): \(error.problem)")
        }
        global = network.initialParameters(seed: configuration.seed)
        let workers = min(configuration.effectiveThreads, configuration.clientsPerRound)
        let batch = configuration.batchSize
        trainers = (0..<workers).map { _ in LocalTrainer(network: network, batchCapacity: batch) }
        localModels = Array(repeating: global, count: workers)
        evaluator = Evaluator(network: network, threads: configuration.effectiveThreads)
        testSlice = test.all
    }

    /// The clients sampled in `round`: C·K distinct clients, drawn from the run's seed.
    public func sampleClients(round: Int) -> [Int] {
        var generator = SeededGenerator(seed: configuration.seed, stream: 0x5A3B, UInt64(round))
        var pool = Array(0..<configuration.clients)
        let m = configuration.clientsPerRound
        for i in 0..<m {
            let j = i + Int(generator.next() % UInt64(pool.count - i))
            pool.swapAt(i, j)
        }
        return Array(pool[0..<m])
    }

    /// Runs one round and returns its record. Throws ``ConfigurationError`` when a client's
    /// training diverged (non-finite loss), leaving the global model as it was before the round.
    @discardableResult
    public func runRound() throws -> RoundRecord {
        let round = records.count + 1
        let start = Date()
        let selected = sampleClients(round: round)
        let c = configuration
        let sgd = SGD(
            learningRate: Float(c.learningRate), momentum: Float(c.momentum),
            weightDecay: Float(c.weightDecay), proximalMu: Float(c.proximalMu))
        let state = RoundState(parameterCount: network.parameterCount)
        let global = self.global
        let anchor: [Float]? = c.proximalMu > 0 ? global : nil
        let trainers = self.trainers
        let data = trainData
        let indices = clientIndices
        localModels.withUnsafeMutableBufferPointer { locals in
            let localsBox = locals
            parallelFor(trainers.count) { worker in
                while let slot = state.claim(limit: selected.count) {
                    let client = selected[slot]
                    localsBox[worker].withUnsafeMutableBufferPointer { $0.update(fromContentsOf: global) }
                    var generator = SeededGenerator(seed: c.seed, stream: 0xC11E, UInt64(round), UInt64(client))
                    let summary = trainers[worker].train(
                        parameters: &localsBox[worker], anchor: anchor,
                        data: DatasetSlice(dataset: data, indices: indices[client]),
                        epochs: c.localEpochs, batchSize: c.batchSize, sgd: sgd, generator: &generator)
                    state.commit(slot: slot, local: localsBox[worker], global: global,
                                 examples: indices[client].count, loss: summary.meanLoss)
                }
            }
        }
        if let client = state.divergedClient {
            throw ConfigurationError(
                "training diverged in round \(round): client \(selected[client]) reached a non-finite loss; lower learning_rate (now \(c.learningRate))")
        }
        state.sum.apply(to: &self.global)
        var record = RoundRecord(
            round: round, testAccuracy: nil, testLoss: nil,
            trainLoss: state.trainLossSum / max(1, state.sum.totalWeight),
            clients: selected.count,
            uplinkBytes: selected.count * network.parameterCount * MemoryLayout<Float>.size,
            downlinkBytes: selected.count * network.parameterCount * MemoryLayout<Float>.size,
            seconds: 0)
        if round % c.evaluateEvery == 0 || round == c.rounds {
            let evaluation = evaluator.evaluate(self.global, on: testSlice)
            record.testAccuracy = evaluation.accuracy
            record.testLoss = evaluation.loss
        }
        record.seconds = Date().timeIntervalSince(start)
        records.append(record)
        return record
    }

    /// Runs until `rounds` are done (or the target is reached with `stop_at_target`),
    /// calling `progress` after each round.
    public func run(progress: (RoundRecord) -> Void = { _ in }) throws -> SimulationReport {
        while records.count < configuration.rounds {
            let record = try runRound()
            progress(record)
            if configuration.stopAtTarget, configuration.targetAccuracy > 0,
               let accuracy = record.testAccuracy, accuracy >= configuration.targetAccuracy {
                break
            }
        }
        return report
    }

    /// The report of the rounds run so far.
    public var report: SimulationReport {
        let accuracies = records.compactMap(\.testAccuracy)
        let target = configuration.targetAccuracy > 0 ? configuration.targetAccuracy : nil
        let total = records.reduce(0) { $0 + $1.seconds }
        let summary = SimulationSummary(
            roundsRun: records.count,
            finalAccuracy: records.last?.testAccuracy,
            bestAccuracy: accuracies.max(),
            targetAccuracy: target,
            roundsToTarget: target.flatMap { t in records.first { ($0.testAccuracy ?? 0) >= t }?.round },
            totalSeconds: total,
            meanSecondsPerRound: records.isEmpty ? 0 : total / Double(records.count),
            uplinkBytes: records.reduce(0) { $0 + $1.uplinkBytes },
            downlinkBytes: records.reduce(0) { $0 + $1.downlinkBytes })
        return SimulationReport(config: configuration.reportValues, rounds: records, summary: summary)
    }
}

/// Shared by the workers of one round: hands out clients in sampling order and adds their
/// deltas to the running sum strictly in that order (a worker that finishes early waits
/// for its turn), which makes the floating-point sum independent of thread timing.
private final class RoundState: @unchecked Sendable {
    private let condition = NSCondition()
    private var nextSlot = 0
    private var committed = 0
    var sum: WeightedDeltaSum
    var trainLossSum = 0.0
    /// Sampling slot of the first client whose training produced a non-finite loss.
    var divergedClient: Int?

    init(parameterCount: Int) {
        sum = WeightedDeltaSum(parameterCount: parameterCount)
    }

    func claim(limit: Int) -> Int? {
        condition.lock()
        defer { condition.unlock() }
        guard nextSlot < limit else { return nil }
        nextSlot += 1
        return nextSlot - 1
    }

    func commit(slot: Int, local: [Float], global: [Float], examples: Int, loss: Double) {
        condition.lock()
        while committed != slot { condition.wait() }
        if !loss.isFinite || divergedClient != nil {
            divergedClient = divergedClient ?? slot
        } else {
            sum.add(local: local, global: global, weight: Double(examples))
        }
        trainLossSum += loss * Double(examples)
        committed += 1
        condition.broadcast()
        condition.unlock()
    }
}
