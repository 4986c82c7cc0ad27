import FedCodec
import FedModel
import FedStore
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
    /// The malicious clients (`attackers` × K of them, drawn from the seed).
    public let attackers: Set<Int>
    /// The training set with poisoned labels (label-flipping attackers train on it).
    private let poisonedData: Dataset?
    /// Each client's device (speed and links), drawn once from the seed.
    private let profiles: [DeviceModel.Profile]
    private let evaluator: Evaluator
    private let testSlice: DatasetSlice
    private var localModels: [[Float]]
    private let uplink: UpdateCodec
    private let downlink: UpdateCodec
    /// Per worker: the delta being sent and what the server decoded of it.
    private var sentDeltas: [[Float]]
    private var decodedDeltas: [[Float]]
    /// Error-feedback residuals of the clients that have sent an update (only with `+ef`).
    private let residuals = ResidualStore()
    /// Where rounds are committed (`fedsim --db`), in the coordinator's schema.
    public var store: RunStore?
    /// Turns each round's mean delta into the new global model (FedAvg, FedAvgM, FedAdam, ...).
    public private(set) var serverOptimizer: ServerOptimizer
    /// The last round's reference norm for the norm bound.
    private var referenceNorm: Double?
    /// Trust rule: the server's directions on its trusted sample, and what it has seen of each client.
    private let trusted: TrustedDirections?
    public private(set) var ledger = TrustLedger()

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
        sentDeltas = Array(repeating: global, count: workers)
        decodedDeltas = Array(repeating: global, count: workers)
        let ranges = network.layout.tensors.map(\.range)
        uplink = UpdateCodec(spec: try configuration.uplinkSpec(), shardRanges: ranges)
        downlink = UpdateCodec(spec: try configuration.downlinkSpec(), shardRanges: ranges)
        evaluator = Evaluator(network: network, threads: configuration.effectiveThreads)
        var attackerDraw = SeededGenerator(seed: configuration.seed, stream: 0xBAD0)
        var everyone = Array(0..<configuration.clients)
        everyone.withUnsafeMutableBufferPointer { attackerDraw.shuffle($0) }
        attackers = Set(everyone.prefix(Int((configuration.attackers * Double(configuration.clients)).rounded())))
        poisonedData = configuration.attackers > 0 && configuration.attack == Attack.labelFlip.rawValue
            ? try Dataset(name: train.name + " (labels flipped)", sampleShape: train.sampleShape, classes: train.classes,
                          features: train.features, labels: train.labels.map { UInt8(train.classes - 1) - $0 })
            : nil
        profiles = (0..<configuration.clients).map { configuration.devices.profile(client: $0, seed: configuration.seed) }
        testSlice = test.all
        serverOptimizer = ServerOptimizer(settings: try configuration.serverOptimizerSettings(), parameterCount: network.parameterCount)
        do {
            trusted = configuration.aggregation.needsTrustedDirections
                ? try TrustedDirections(network: network, data: try TrustedDirections.sample(train, count: configuration.trustedExamples, seed: configuration.seed))
                : nil
        } catch let error as DataError {
            throw ConfigurationError("trusted_examples: \(error.problem)")
        }
    }

    /// The clients sampled in `round`: C·K distinct clients (⌈C·K × over_selection⌉ with
    /// over-selection) drawn from the run's seed among the clients online in that round.
    public func sampleClients(round: Int) -> [Int] {
        var generator = SeededGenerator(seed: configuration.seed, stream: 0x5A3B, UInt64(round))
        let devices = configuration.devices
        var pool = devices.availability < 1
            ? (0..<configuration.clients).filter { devices.isAvailable(client: $0, round: round, seed: configuration.seed) }
            : Array(0..<configuration.clients)
        let wanted = Int((Double(configuration.clientsPerRound) * devices.overSelection).rounded(.up))
        let m = min(wanted, pool.count)
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
        let startTime = Date()
        let selected = sampleClients(round: round)
        let c = configuration
        let devices = c.devices
        let dropped = selected.map { devices.dropsOut(client: $0, round: round, seed: c.seed) }
        // Whether arrival order decides which updates count: then updates are held (encoded)
        // until every selected client's simulated arrival time is known.
        let cut = selected.count > c.clientsPerRound || devices.roundDeadline > 0 || c.aggregation.holdsUpdates
        let sgd = SGD(
            learningRate: Float(c.learningRate), momentum: Float(c.momentum),
            weightDecay: Float(c.weightDecay), proximalMu: Float(c.proximalMu))
        let state = RoundState(
            aggregator: UpdateAggregator(
                shardRanges: network.layout.tensors.map(\.range), settings: c.aggregation, previousReferenceNorm: referenceNorm, ledger: ledger),
            holdUpdates: cut)
        // The model every participant starts from: the global model as the downlink codec
        // delivers it. The server keeps its own exact copy and applies deltas to that.
        var downlinkGenerator = SeededGenerator(seed: c.seed, stream: 0xD0, UInt64(round))
        let downloaded = try downlink.encode(self.global, generator: &downlinkGenerator)
        var received = self.global
        if !downlink.spec.isLossless { try downlink.decode(downloaded, into: &received) }
        let downloadBytes = downloaded.reduce(0) { $0 + $1.count }
        let start = received
        let anchor: [Float]? = c.proximalMu > 0 ? start : nil
        let trainers = self.trainers
        let data = trainData
        let poisoned = poisonedData
        let attackers = self.attackers
        let attack = Attack(rawValue: c.attack) ?? .signFlip
        let indices = clientIndices
        let uplink = self.uplink
        let residuals = self.residuals
        let parameterCount = network.parameterCount
        withUnsafeMutableBuffers(&localModels, &sentDeltas, &decodedDeltas) { locals, sent, decoded in
            parallelFor(trainers.count) { worker in
                while let slot = state.claim(limit: selected.count) {
                    let client = selected[slot]
                    var outcome = ClientOutcome(examples: indices[client].count, loss: 0)
                    guard !dropped[slot] else {
                        outcome.dropped = true
                        state.commit(slot: slot, delta: decoded[worker], encoded: [], outcome: outcome)
                        continue
                    }
                    _ = locals[worker].withUnsafeMutableBufferPointer { $0.update(fromContentsOf: start) }
                    var generator = SeededGenerator(seed: c.seed, stream: 0xC11E, UInt64(round), UInt64(client))
                    let malicious = round >= c.attackFromRound && attackers.contains(client)
                    let summary = trainers[worker].train(
                        parameters: &locals[worker], anchor: anchor,
                        data: DatasetSlice(dataset: malicious ? (poisoned ?? data) : data, indices: indices[client]),
                        epochs: c.localEpochs, batchSize: c.batchSize, sgd: sgd, generator: &generator)
                    outcome.loss = summary.meanLoss
                    var encoded: [[UInt8]] = []
                    if summary.meanLoss.isFinite {
                        do {
                            for i in 0..<parameterCount { sent[worker][i] = locals[worker][i] - start[i] }
                            if malicious {
                                var noise = SeededGenerator(seed: c.seed, stream: 0xBAD, UInt64(round), UInt64(client))
                                attack.apply(to: &sent[worker], scale: Float(c.attackScale), noise: c.attackNoise, generator: &noise)
                            }
                            let feedback = uplink.spec.errorFeedback ? residuals.take(client, count: parameterCount) : nil
                            feedback?.compensate(&sent[worker])
                            var codecGenerator = SeededGenerator(seed: c.seed, stream: 0xC0DE, UInt64(round), UInt64(client))
                            encoded = try uplink.encode(sent[worker], generator: &codecGenerator)
                            outcome.uplinkBytes = encoded.reduce(0) { $0 + $1.count }
                            try uplink.decode(encoded, into: &decoded[worker])
                            if var feedback {
                                feedback.record(sent: sent[worker], decoded: decoded[worker])
                                residuals.put(client, feedback)
                            }
                        } catch {
                            outcome.failure = "client \(client)'s update could not be encoded with \(uplink.spec): \(error)"
                        }
                    } else if c.attackers > 0 {
                        // Under attack a poisoned global model can make honest training blow up:
                        // the server refuses the non-finite update, as the coordinator does.
                        outcome.refused = true
                    } else {
                        outcome.failure = "training diverged in round \(round): client \(client) reached a non-finite loss; lower learning_rate (now \(c.learningRate))"
                    }
                    state.commit(slot: slot, delta: decoded[worker], encoded: encoded, outcome: outcome)
                }
            }
        }
        if let failure = state.failure {
            throw ConfigurationError(failure)
        }
        // The virtual clock: when each delivered update reaches the server.
        var simulatedSeconds: Double?
        if devices.hasClock || cut {
            let arrivals = state.participations.map { p -> Double in
                guard !p.outcome.dropped, !p.outcome.refused else { return .infinity }
                return profiles[selected[p.slot]].seconds(
                    downlinkBytes: downloadBytes, examples: p.outcome.examples * c.localEpochs, uplinkBytes: p.outcome.uplinkBytes)
            }
            let order = arrivals.indices.sorted { (arrivals[$0], $0) < (arrivals[$1], $1) }
            let deadline = devices.roundDeadline > 0 ? devices.roundDeadline : Double.infinity
            var accepted = 0
            var last = 0.0
            for i in order where arrivals[i].isFinite {
                if accepted < c.clientsPerRound, arrivals[i] <= deadline {
                    accepted += 1
                    last = arrivals[i]
                } else {
                    state.participations[i].outcome.late = true
                }
            }
            let enough = accepted == c.clientsPerRound
            simulatedSeconds = devices.hasClock ? (enough || deadline == .infinity ? last : deadline) : nil
        }
        if cut { try state.aggregateHeld(using: uplink, scratch: &decodedDeltas[0], clients: selected) }
        if let trusted {
            state.aggregator.setTrustedDirections(trusted.directions(from: self.global, learningRate: Float(c.learningRate), seed: c.seed, round: round))
        }
        var dpGenerator = SeededGenerator(seed: c.seed, stream: 0xD9, UInt64(round))
        let (mean, aggregation) = state.aggregator.finish(generator: &dpGenerator)
        if let reference = aggregation.referenceNorm { referenceNorm = reference }
        ledger = state.aggregator.ledger
        if let mean {
            serverOptimizer.apply(delta: mean, to: &self.global)
        }
        let delivered = state.participations.filter(\.outcome.counts)
        let examples = delivered.reduce(0) { $0 + $1.outcome.examples }
        var record = RoundRecord(
            round: round, testAccuracy: nil, testLoss: nil,
            trainLoss: delivered.reduce(0) { $0 + $1.outcome.loss * Double($1.outcome.examples) } / Double(max(1, examples)),
            clients: delivered.count,
            uplinkBytes: state.participations.reduce(0) { $0 + $1.outcome.uplinkBytes },
            downlinkBytes: selected.count * downloadBytes,
            seconds: 0,
            selected: selected.count,
            dropped: state.participations.filter(\.outcome.dropped).count,
            late: state.participations.filter(\.outcome.late).count,
            simulatedSeconds: simulatedSeconds)
        if round % c.evaluateEvery == 0 || round == c.rounds {
            let evaluation = evaluator.evaluate(self.global, on: testSlice)
            record.testAccuracy = evaluation.accuracy
            record.testLoss = evaluation.loss
        }
        record.seconds = Date().timeIntervalSince(startTime)
        if let store {
            try store.commit(
                RoundRow(round: round, startedAt: startTime, endedAt: Date(), selected: selected.count, completed: delivered.count,
                         refused: state.participations.filter(\.outcome.refused).count, uplinkBytes: record.uplinkBytes, downlinkBytes: record.downlinkBytes,
                         trainingLoss: record.trainLoss, testAccuracy: record.testAccuracy, testLoss: record.testLoss),
                checkpoint: Checkpoint(round: round, modelVersion: UInt32(round), model: global,
                                       optimizerM: serverOptimizer.m, optimizerV: serverOptimizer.v, modelSHA256: RunStore.sha256(global)),
                participations: state.participations.map { p in
                    Participation(client: String(format: "client-%06d", selected[p.slot]), state: p.outcome.state, bytes: p.outcome.uplinkBytes,
                                  examples: p.outcome.examples, localLoss: p.outcome.dropped ? nil : p.outcome.loss, codec: c.codec, errorCode: nil)
                })
        }
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
    public var report: SimulationReport { makeReport(records) }

    /// The report of rounds run through the TCP transport.
    func reportOverTCP(_ rounds: [RoundRecord]) -> SimulationReport { makeReport(rounds) }

    private func makeReport(_ records: [RoundRecord]) -> SimulationReport {
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
            downlinkBytes: records.reduce(0) { $0 + $1.downlinkBytes },
            simulatedSeconds: configuration.devices.hasClock ? records.reduce(0) { $0 + ($1.simulatedSeconds ?? 0) } : nil)
        return SimulationReport(config: configuration.reportValues, rounds: records, summary: summary)
    }
}

/// Shared by the workers of one round: hands out clients in sampling order and adds their
/// deltas to the running sum strictly in that order (a worker that finishes early waits
/// for its turn), which makes the floating-point sum independent of thread timing.
///
/// When arrival order decides which updates count (over-selection, a deadline), updates are
/// held encoded instead, and ``aggregateHeld(using:scratch:)`` adds the ones that count, in
/// sampling order, once the virtual clock has decided.
final class RoundState: @unchecked Sendable {
    private let condition = NSCondition()
    private var nextSlot = 0
    private var committed = 0
    let holdUpdates: Bool
    var aggregator: UpdateAggregator
    private let allShards: [Int]
    /// Each client's outcome, in sampling order.
    var participations: [(slot: Int, outcome: ClientOutcome)] = []
    /// Encoded updates by slot, while they wait for the cut.
    private var held: [Int: [[UInt8]]] = [:]
    /// Why the round failed: the first client (in sampling order) whose training diverged or
    /// whose update could not be encoded. A failed round is not applied.
    var failure: String?

    init(aggregator: UpdateAggregator, holdUpdates: Bool = false) {
        self.aggregator = aggregator
        self.holdUpdates = holdUpdates
        allShards = Array(aggregator.shardRanges.indices)
    }

    func claim(limit: Int) -> Int? {
        condition.lock()
        defer { condition.unlock() }
        guard nextSlot < limit else { return nil }
        nextSlot += 1
        return nextSlot - 1
    }

    func commit(slot: Int, delta: [Float], encoded: [[UInt8]], outcome: ClientOutcome) {
        condition.lock()
        while committed != slot { condition.wait() }
        if let problem = outcome.failure {
            failure = failure ?? problem
        } else if failure == nil, !outcome.dropped, !outcome.refused {
            if holdUpdates {
                held[slot] = encoded
            } else {
                aggregator.add(delta: delta, shards: allShards, weight: Double(outcome.examples))
            }
        }
        participations.append((slot, outcome))
        committed += 1
        condition.broadcast()
        condition.unlock()
    }

    /// Decodes and adds the held updates that count (not late), in sampling order.
    func aggregateHeld(using codec: UpdateCodec, scratch: inout [Float], clients: [Int]) throws {
        for p in participations where p.outcome.counts {
            guard let encoded = held[p.slot] else { continue }
            try codec.decode(encoded, into: &scratch)
            aggregator.add(delta: scratch, shards: allShards, weight: Double(p.outcome.examples), client: String(clients[p.slot]))
        }
        held = [:]
    }
}

extension Attack {
    /// Turns an honest delta into this attack's update (label flipping happens in training).
    func apply(to delta: inout [Float], scale: Float, noise: Double, generator: inout SeededGenerator) {
        switch self {
        case .signFlip: for i in delta.indices { delta[i] = -delta[i] }
        case .scale: for i in delta.indices { delta[i] *= scale }
        case .noise: for i in delta.indices { delta[i] = Float(noise * generator.nextGaussian()) }
        case .labelFlip: break
        }
    }
}

/// What one client's training produced, for the round's totals.
struct ClientOutcome {
    var examples: Int
    var loss: Double
    var uplinkBytes = 0
    var failure: String?
    /// Dropped out before delivering (nothing was trained or sent).
    var dropped = false
    /// Refused by the server (a non-finite update).
    var refused = false
    /// Delivered after the deadline or after the round had enough updates: not aggregated.
    var late = false

    /// Whether the update is part of the aggregate.
    var counts: Bool { !dropped && !late && !refused && failure == nil }

    /// The participation state recorded in the store.
    var state: String { dropped ? "dropped" : refused ? "refused" : late ? "late" : "accepted" }
}

/// Error-feedback residuals by client id. Each client is trained by one worker at a time, so
/// the lock only guards the dictionary itself.
private final class ResidualStore: @unchecked Sendable {
    private let lock = NSLock()
    private var residuals: [Int: ErrorFeedback] = [:]

    func take(_ client: Int, count: Int) -> ErrorFeedback {
        lock.withLock { residuals.removeValue(forKey: client) } ?? ErrorFeedback(count: count)
    }

    func put(_ client: Int, _ feedback: ErrorFeedback) {
        lock.withLock { residuals[client] = feedback }
    }
}

/// Calls `body` with mutable buffers over three arrays of per-worker vectors.
private func withUnsafeMutableBuffers(
    _ a: inout [[Float]], _ b: inout [[Float]], _ c: inout [[Float]],
    _ body: (UnsafeMutableBufferPointer<[Float]>, UnsafeMutableBufferPointer<[Float]>, UnsafeMutableBufferPointer<[Float]>) -> Void
) {
    a.withUnsafeMutableBufferPointer { a in
        b.withUnsafeMutableBufferPointer { b in
            c.withUnsafeMutableBufferPointer { c in body(a, b, c) }
        }
    }
}
