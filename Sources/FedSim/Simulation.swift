import FedCodec
import FedCoordinator
import FedModel
import FedRounds
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
    /// With the low-rank reference (`svd_rank`), the bytes one update's rank-R factor pairs
    /// would take as float32 (the other tensors whole), with a 32-byte header per shard.
    public var lowRankUpdateBytes: Int? {
        guard configuration.svdRank > 0 else { return nil }
        return network.layout.tensors.filter(\.trainable).reduce(0) { total, tensor in
            guard tensor.shape.count >= 2 else { return total + 32 + 4 * tensor.count }
            let cols = tensor.shape.last!, rows = tensor.count / cols
            return total + 32 + 4 * min(tensor.count, (rows + cols) * min(configuration.svdRank, rows, cols))
        }
    }

    /// Training examples held out of the clients' data for the server (distillation), if any.
    public let serverData: Dataset?
    /// Each client's example indices into ``trainData``.
    public let clientIndices: [[Int32]]
    /// The server half of every round (the coordinator's engine).
    public private(set) var engine: RoundEngine
    /// Each client's id (`client-000017`), as the engine and the store know it.
    public let clientIDs: [String]
    private let clientIndex: [String: Int]
    /// Whether simulated clients keep their shards between rounds (a model with frozen tensors).
    private var keepsShards: Bool { network.layout.tensors.contains { !$0.trainable } }
    /// Whether simulated arrival times decide which updates count (over-selection, a deadline).
    private let arrivalDecides: Bool
    /// The latest test evaluation in full (per-class accuracy, RMSE and MAE for the report).
    private let latest = LatestEvaluation()
    private var finalEvaluation: Evaluation? { latest.value }
    /// The current global model.
    public var global: [Float] { engine.global }
    public private(set) var records: [RoundRecord] = []
    /// Whether the engine has been told who is online (every round with an availability model,
    /// else in this process's first round: the first of the run or of its resumption).
    private var clientsJoined = false

    private let trainers: [LocalTrainer]
    /// Width classes (HeteroFL): each client's class, and per class its sub-model (nil at full
    /// width) with its trainers (one per worker) and codecs over the sub-model's tensors.
    public let widthClasses: [Int]
    /// Updates each width class delivered so far.
    private var widthUpdates: [Int] = []
    public let subModels: [SubModel?]
    private let subTrainers: [[LocalTrainer]]
    private let subUplinks: [UpdateCodec?]
    /// Ordered dropout: per class k, the classes j no wider than it, with the places of j's
    /// parameters in k's parameter vector.
    private let nestedWidths: [[(width: Int, index: [Int32])]]
    /// With `frozen_shards`: per class, the memory budget its width stands for, the shards that
    /// budget trains (the coordinator's rule) and a codec over them. Empty otherwise.
    private let frozenShardClasses: [(budget: UInt64, shards: [Int], uplink: UpdateCodec)]
    /// The malicious clients (`attackers` × K of them, drawn from the seed).
    public let attackers: Set<Int>
    /// The training set with poisoned labels (label-flipping attackers train on it).
    private let poisonedData: Dataset?
    /// Each client's device (speed and links), drawn once from the seed.
    private let profiles: [DeviceModel.Profile]
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
    /// The last round finished and committed (for a signal handler on another thread).
    public let commits: CommitGate
    /// Turns each round's mean delta into the new global model (FedAvg, FedAvgM, FedAdam, ...).
    public var serverOptimizer: ServerOptimizer { engine.optimizer }
    /// Trust rule: what the server has seen of each client.
    public var ledger: TrustLedger { engine.ledger }

    /// Builds the run: validates the configuration, loads and checks the data, partitions it.
    public convenience init(configuration: SimulationConfiguration, resume: Resume? = nil) throws {
        try configuration.validate()
        let directory = URL(fileURLWithPath: configuration.data)
        let targets = TargetFormat(try configuration.modelSpec())
        let train = try DataDirectory.load(directory, train: true, targets: targets, columns: configuration.csvColumns)
        let test = try DataDirectory.load(directory, train: false, targets: targets, columns: configuration.csvColumns)
        try self.init(configuration: configuration, train: train, test: test, resume: resume)
    }

    /// Builds the run on already loaded data; with `resume`, it continues after that state's
    /// round (``Resume``).
    public init(configuration: SimulationConfiguration, train: Dataset, test: Dataset, resume: Resume? = nil) throws {
        try configuration.validate()
        if let resume { try resume.check(configuration) }
        let spec = try configuration.modelSpec()
        let network = try Network(spec)
        if let problem = network.accepts(train) { throw ConfigurationError("training data: \(problem)") }
        if let problem = network.accepts(test) { throw ConfigurationError("test data: \(problem)") }
        self.configuration = configuration
        self.network = network
        testData = test
        // The server's own examples (distillation's transfer set) are held out of the clients' data.
        let heldOut = configuration.effectiveServerExamples
        if heldOut > 0 {
            guard heldOut < train.count else {
                throw ConfigurationError("server_examples (\(heldOut)) must leave the clients some of the \(train.count) training examples")
            }
            var order = Array(0..<train.count)
            var draw = SeededGenerator(seed: configuration.seed, stream: 0x5E7)
            order.withUnsafeMutableBufferPointer { draw.shuffle($0) }
            do {
                serverData = try train.subset(order[..<heldOut].sorted(), name: train.name + " (server's held-out examples)")
                trainData = try train.subset(order[heldOut...].sorted(), name: train.name + " (clients)")
            } catch let error as DataError {
                throw ConfigurationError("server_examples: \(error.problem)")
            }
        } else {
            serverData = nil
            trainData = train
        }
        let train = trainData
        do {
            clientIndices = try configuration.partitionValue().split(train, clients: configuration.clients, seed: configuration.seed)
        } catch let error as DataError {
            throw ConfigurationError("partition \(configuration.partition): \(error.problem)")
        }
        var global = resume?.model ?? network.initialParameters(seed: configuration.seed)
        guard global.count == network.parameterCount else {
            throw ConfigurationError("the run to resume has a model of \(global.count) parameters, this scenario's has \(network.parameterCount)")
        }
        if resume == nil, let path = configuration.baseModel {
            do { global = try BaseModel(path: path).load(into: network, initial: global).parameters } catch let error as ModelError {
                throw ConfigurationError(error.description)
            }
        }
        let workers = min(configuration.effectiveThreads, configuration.clientsPerRound)
        let batch = configuration.batchSize
        trainers = (0..<workers).map { _ in LocalTrainer(network: network, batchCapacity: batch) }
        widthClasses = configuration.widthClasses()
        // With ordered dropout every class trains through its sub-model (the full width too),
        // choosing a nested width per batch.
        // With frozen shards every class holds the full model; its width only names its budget.
        subModels = configuration.frozenShards ? configuration.widths.map { _ in nil }
            : try configuration.widths.map { $0 > 0 && ($0 < 1 || configuration.orderedDropout) ? try SubModel(of: network, fraction: $0) : nil }
        frozenShardClasses = !configuration.frozenShards ? [] : try configuration.widths.map { width in
            let parameters = width > 0 && width < 1 ? try SubModel(of: network, fraction: width).network.parameterCount : network.parameterCount
            let budget = UInt64(16 * parameters)
            let shards = ClientSelection.shardsToTrain(layout: network.layout, memoryBudget: budget).map(Int.init)
            let codec = UpdateCodec(spec: configuration.codec, shardRanges: shards.map { network.layout.tensors[$0].range }, count: network.parameterCount)
            return (budget, shards, codec)
        }
        nestedWidths = configuration.orderedDropout ? Self.nestedIndices(subModels, parameterCount: network.parameterCount) : []
        subTrainers = subModels.map { sub in sub.map { s in (0..<workers).map { _ in LocalTrainer(network: s.network, batchCapacity: batch) } } ?? [] }
        subUplinks = subModels.map { $0.map { UpdateCodec(spec: configuration.codec, shardRanges: $0.network.layout.tensors.map(\.range)) } }
        localModels = Array(repeating: global, count: workers)
        sentDeltas = Array(repeating: global, count: workers)
        decodedDeltas = Array(repeating: [Float](repeating: 0, count: global.count), count: workers)
        let ranges = network.layout.tensors.map(\.range)
        // Only trainable shards travel up (with adapters, only the adapters).
        let trainable = network.layout.tensors.filter(\.trainable)
        uplink = UpdateCodec(spec: configuration.codec, shardRanges: trainable.map(\.range), count: global.count, columns: trainable.map(\.columns))
        downlink = UpdateCodec(spec: configuration.downlink, shardRanges: ranges)
        var attackerDraw = SeededGenerator(seed: configuration.seed, stream: 0xBAD0)
        var everyone = Array(0..<configuration.clients)
        everyone.withUnsafeMutableBufferPointer { attackerDraw.shuffle($0) }
        attackers = Set(everyone.prefix(Int((configuration.attackers * Double(configuration.clients)).rounded())))
        if configuration.attackers > 0, configuration.attack == .labelFlip, !train.hasClassLabels {
            throw ConfigurationError("attack label_flip needs class labels; \(train.name) has target values")
        }
        poisonedData = configuration.attackers > 0 && configuration.attack == .labelFlip
            ? try Dataset(name: train.name + " (labels flipped)", sampleShape: train.sampleShape, classes: train.classes,
                          features: train.features, labels: train.labels.map { Int32(train.classes - 1) - $0 })
            : nil
        profiles = (0..<configuration.clients).map { configuration.devices.profile(client: $0, seed: configuration.seed) }
        let evaluator = Evaluator(network: network, threads: configuration.effectiveThreads)
        let testSlice = test.all
        let trusted: TrustedDirections?
        do {
            trusted = configuration.aggregation.needsTrustedDirections
                ? try TrustedDirections(network: network, data: try TrustedDirections.sample(train, count: configuration.trustedExamples, seed: configuration.seed))
                : nil
        } catch let error as DataError {
            throw ConfigurationError("trusted_examples: \(error.problem)")
        }
        let devices = configuration.devices
        var settings = RoundEngine.Settings(
            rounds: configuration.rounds, clientsPerRound: configuration.clientsPerRound,
            selectionSize: Int((Double(configuration.clientsPerRound) * devices.overSelection).rounded(.up)))
        settings.minimumUpdates = 0
        settings.minimumClients = 0
        settings.roundDeadline = devices.roundDeadline
        settings.localEpochs = configuration.localEpochs
        settings.batchSize = configuration.batchSize
        settings.learningRate = Float(configuration.learningRate)
        settings.uplink = configuration.codec
        settings.seed = configuration.seed
        settings.metric = spec.loss.metric
        settings.evaluateEvery = configuration.evaluateEvery
        settings.aggregation = configuration.aggregation
        settings.serverOptimizer = try configuration.serverOptimizerSettings()
        settings.pruning = try configuration.pruning?.resolved(rounds: configuration.rounds)
        arrivalDecides = devices.overSelection > 1 || devices.roundDeadline > 0
        settings.addInSelectionOrder = arrivalDecides
        let latest = self.latest
        let fusion = try configuration.ensemble.enabled
            ? serverData.map { try EnsembleDistillation(network: network, transfer: $0.all, settings: configuration.ensemble.distillation, threads: configuration.effectiveThreads) } : nil
        let resumed = resume.map { r in
            (r.round, r.modelVersion, ServerOptimizer(settings: settings.serverOptimizer, m: r.optimizerM, v: r.optimizerV), TrustLedger(records: r.trust))
        }
        records = resume?.records ?? []
        commits = CommitGate(round: resume?.round ?? 0)
        engine = RoundEngine(settings: settings, network: network, initial: global, resume: resumed, trusted: trusted, fusion: fusion) { model in
            let evaluation = evaluator.evaluate(model, on: testSlice)
            latest.value = evaluation
            return (evaluation.value, evaluation.loss)
        }
        // Zero-padded, so that the engine's sorted ids are the clients in index order.
        let width = max(6, String(configuration.clients - 1).count)
        clientIDs = (0..<configuration.clients).map { "client-" + String(repeating: "0", count: width - String($0).count) + String($0) }
        clientIndex = Dictionary(uniqueKeysWithValues: clientIDs.enumerated().map { ($1, $0) })
        if let previous = resume?.previousModel { engine.followWarmStarts(from: previous) }
    }

    /// The clients sampled in `round`: C·K distinct clients (⌈C·K × over_selection⌉ with
    /// over-selection) drawn from the run's seed among the clients online in that round, with
    /// the same draw the coordinator uses.
    public func sampleClients(round: Int) -> [Int] {
        ClientSelection.draw(from: availableClients(round: round), count: engine.settings.selectionSize, seed: configuration.seed, round: round)
    }

    private func availableClients(round: Int) -> [Int] {
        let devices = configuration.devices
        // A device of a width-0 class never takes part.
        let widths = configuration.widths, classes = widthClasses
        let takesPart = { (client: Int) in classes.isEmpty || widths[classes[client]] > 0 }
        return devices.availability < 1
            ? (0..<configuration.clients).filter { takesPart($0) && devices.isAvailable(client: $0, round: round, seed: configuration.seed) }
            : (0..<configuration.clients).filter(takesPart)
    }

    /// Tells the engine which clients are online in `round` (all of them without an
    /// availability model).
    private func updateAvailability(round: Int) {
        let online = Set(availableClients(round: round))
        for client in 0..<configuration.clients {
            let connected = engine.isConnected(clientIDs[client])
            if online.contains(client), !connected {
                // Clients of a model with frozen tensors keep them, as fedclient does, so the
                // base model is downloaded once; otherwise they free the model after each round.
                let budget = frozenShardClasses.isEmpty ? 0 : frozenShardClasses[widthClasses[client]].budget
                engine.clientJoined(clientIDs[client], memoryBudget: budget, keepsShards: keepsShards, at: 0)
            } else if !online.contains(client), connected {
                engine.clientLeft(clientIDs[client], at: 0)
            }
        }
    }

    /// Runs one round and returns its record. Throws ``ConfigurationError`` when a client's
    /// training diverged (non-finite loss), leaving the global model as it was before the round.
    ///
    /// The server half of the round is the ``RoundEngine`` the coordinator runs: this drives it
    /// with simulated clients and, with a device model, a virtual clock.
    @discardableResult
    public func runRound() throws -> RoundRecord {
        let round = engine.nextRound
        let startTime = Date()
        let c = configuration
        let devices = c.devices
        if devices.availability < 1 || !clientsJoined { updateAvailability(round: round) }
        clientsJoined = true
        var shardsToSend: [[Int]] = []
        var warmStarts: [Int: [Float]] = [:]
        let frozenShardClasses = self.frozenShardClasses
        let selected: [Int] = engine.beginRound(at: 0).map { action in
            guard case .sendTask(let id, let task) = action else { preconditionFailure("the engine answered a round's start with \(action)") }
            shardsToSend.append(task.shardsToSend)
            warmStarts.merge(task.warmStarts) { first, _ in first }
            precondition(frozenShardClasses.isEmpty || task.shards.map(Int.init) == frozenShardClasses[self.widthClasses[clientIndex[id]!]].shards,
                         "the engine assigned other shards than the budget's")
            return clientIndex[id]!
        }
        let dropped = selected.map { devices.dropsOut(client: $0, round: round, seed: c.seed) }
        let sgd = SGD(
            learningRate: Float(c.learningRate), momentum: Float(c.momentum),
            weightDecay: Float(c.weightDecay), proximalMu: Float(c.proximalMu))
        // The model every participant starts from: the global model as the downlink codec
        // delivers it. The server keeps its own exact copy and applies deltas to that.
        var downlinkGenerator = SeededGenerator(seed: c.seed, stream: 0xD0, UInt64(round))
        let mask = engine.mask
        let downloaded = try downlink.encode(engine.global, masks: mask?.kept, generator: &downlinkGenerator)
        let keep = mask?.multipliers(layout: network.layout)
        var received = engine.global
        if !downlink.spec.isLossless { try downlink.decode(downloaded, into: &received) }
        // Each client downloads the shards it lacks (all of them, unless it keeps its shards); a
        // client of a narrower width class downloads its sub-model.
        var classBytes: [Int?] = []
        for sub in subModels {
            guard let sub else { classBytes.append(nil); continue }
            var generator = SeededGenerator(seed: c.seed, stream: 0xD0, UInt64(round))
            let codec = UpdateCodec(spec: downlink.spec, shardRanges: sub.network.layout.tensors.map(\.range))
            classBytes.append(try codec.encode(sub.gather(engine.global), generator: &generator).reduce(0) { $0 + $1.count })
        }
        let widthClasses = self.widthClasses
        let downloadBytes = zip(selected, shardsToSend).map { client, shards in
            (widthClasses.isEmpty ? nil : classBytes[widthClasses[client]]) ?? shards.reduce(0) { $0 + downloaded[$1].count }
        }
        for bytes in downloadBytes { engine.countDownload(bytes: bytes) }
        let start = received
        let anchor: [Float]? = c.proximalMu > 0 ? start : nil
        let state = RoundDriver(engine: engine, clientIDs: clientIDs, selected: selected, byArrival: arrivalDecides)
        let trainers = self.trainers
        let subModels = self.subModels, subTrainers = self.subTrainers, subUplinks = self.subUplinks, nestedWidths = self.nestedWidths
        let data = trainData
        let poisoned = poisonedData
        let attackers = self.attackers
        let attack = c.attack
        let indices = clientIndices
        let uplink = self.uplink
        let residuals = self.residuals
        let parameterCount = network.parameterCount
        let profiles = self.profiles
        let clock = devices.hasClock
        let lowRankTensors = network.layout.tensors.filter { $0.shape.count >= 2 && $0.trainable }
        let frozen = Set(network.layout.tensors.filter { !$0.trainable }.map(\.index))
        // The task's warm starts, in the uplink's shard order (the trainable tensors).
        let uplinkWarmStarts: [[Float]?]? = warmStarts.isEmpty ? nil : network.layout.tensors.filter(\.trainable).map { warmStarts[$0.index] }
        let allTensors = Set(network.layout.tensors.indices)
        let frozenByClass = frozenShardClasses.map { frozen.union(allTensors.subtracting($0.shards)) }
        withUnsafeMutableBuffers(&localModels, &sentDeltas, &decodedDeltas) { locals, sent, decoded in
            parallelFor(trainers.count) { worker in
                while let slot = state.claim() {
                    let client = selected[slot]
                    var outcome = ClientOutcome(examples: indices[client].count, loss: 0)
                    guard !dropped[slot] else {
                        outcome.dropped = true
                        state.commit(slot: slot, delta: decoded[worker], encoded: [], outcome: outcome)
                        continue
                    }
                    let began = DispatchTime.now().uptimeNanoseconds
                    var generator = SeededGenerator(seed: c.seed, stream: 0xC11E, UInt64(round), UInt64(client))
                    if !widthClasses.isEmpty, let sub = subModels[widthClasses[client]] {
                        // A narrower device: its sub-model trains, travels and lands in its places.
                        let k = widthClasses[client]
                        let nested = nestedWidths.isEmpty ? [] : nestedWidths[k].map { (trainer: subTrainers[$0.width][worker], index: $0.index) }
                        outcome = Self.trainSubModel(
                            sub, trainer: subTrainers[k][worker], nested: nested, uplink: subUplinks[k]!,
                            client: client, round: round, start: start, anchor: anchor, data: DatasetSlice(dataset: data, indices: indices[client]),
                            sgd: sgd, generator: &generator, residuals: residuals, configuration: c, decoded: &decoded[worker], outcome: outcome)
                        if clock {
                            let work = Int((Double(outcome.examples * c.localEpochs) * Double(sub.network.parameterCount) / Double(parameterCount)).rounded(.up))
                            outcome.arrival = profiles[client].seconds(downlinkBytes: downloadBytes[slot], examples: work, uplinkBytes: outcome.uplinkBytes)
                        }
                        outcome.deviceSeconds = Double(DispatchTime.now().uptimeNanoseconds - began) / 1e9
                        state.commit(slot: slot, delta: decoded[worker], encoded: [], outcome: outcome)
                        continue
                    }
                    _ = locals[worker].withUnsafeMutableBufferPointer { $0.update(fromContentsOf: start) }
                    let malicious = round >= c.attackFromRound && attackers.contains(client)
                    // A frozen-shard device trains only the shards its budget picks.
                    let assigned = frozenShardClasses.isEmpty ? nil : frozenShardClasses[widthClasses[client]]
                    let summary = trainers[worker].train(
                        parameters: &locals[worker], anchor: anchor,
                        data: DatasetSlice(dataset: malicious ? (poisoned ?? data) : data, indices: indices[client]),
                        epochs: c.localEpochs, batchSize: c.batchSize, sgd: sgd, generator: &generator,
                        frozen: assigned == nil ? frozen : frozenByClass[widthClasses[client]], keep: keep)
                    outcome.loss = summary.meanLoss
                    var encoded: [[UInt8]] = []
                    if summary.meanLoss.isFinite {
                        do {
                            // One vectorised pass (element by element through the outer buffer, each
                            // store checked the array's uniqueness).
                            sent[worker].withUnsafeMutableBufferPointer { d in
                                locals[worker].withUnsafeBufferPointer { l in start.withUnsafeBufferPointer { s in
                                    for i in 0..<parameterCount { d[i] = l[i] - s[i] }
                                } }
                            }
                            if malicious {
                                var noise = SeededGenerator(seed: c.seed, stream: 0xBAD, UInt64(round), UInt64(client))
                                attack.apply(to: &sent[worker], scale: Float(c.attackScale), noise: c.attackNoise, generator: &noise)
                            }
                            if c.svdRank > 0 {
                                for tensor in lowRankTensors {
                                    let cols = tensor.shape.last!
                                    sent[worker].withUnsafeMutableBufferPointer {
                                        _ = LowRank.truncate($0.baseAddress! + tensor.offset, rows: tensor.count / cols, cols: cols, rank: c.svdRank,
                                                         seed: c.seed &+ UInt64(round) &* 0x9E37_79B9 &+ UInt64(client) &* 0x85EB_CA6B &+ UInt64(tensor.index))
                                    }
                                }
                            }
                            let feedback = uplink.spec.errorFeedback ? residuals.take(client, count: parameterCount) : nil
                            feedback?.compensate(&sent[worker])
                            var codecGenerator = SeededGenerator(seed: c.seed, stream: 0xC0DE, UInt64(round), UInt64(client))
                            if let assigned {
                                // Only the trained shards travel; the rest of `decoded` is zero.
                                encoded = try assigned.uplink.encode(sent[worker], generator: &codecGenerator)
                                decoded[worker].withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
                                try assigned.uplink.decode(encoded, into: &decoded[worker])
                                outcome.shards = assigned.shards
                            } else {
                                encoded = try uplink.encode(sent[worker], masks: mask?.kept, receiverHoldsMasks: true, warmStarts: uplinkWarmStarts, generator: &codecGenerator)
                                try uplink.decode(encoded, into: &decoded[worker], masks: mask?.kept)
                            }
                            outcome.uplinkBytes = encoded.reduce(0) { $0 + $1.count }
                            if var feedback {
                                feedback.record(sent: sent[worker], decoded: decoded[worker])
                                residuals.put(client, feedback)
                            }
                        } catch {
                            outcome.failure = "client \(client)'s update could not be encoded with \(uplink.spec): \(error)"
                        }
                    } else if c.attackers == 0 {
                        // Without attackers a non-finite loss means the learning rate is too high
                        // (under attack a poisoned model can make honest training blow up, and
                        // the engine refuses that update as the coordinator does).
                        outcome.failure = "training diverged in round \(round): client \(client) reached a non-finite loss; lower learning_rate (now \(c.learningRate))"
                    }
                    if clock {
                        outcome.arrival = profiles[client].seconds(
                            downlinkBytes: downloadBytes[slot], examples: outcome.examples * c.localEpochs, uplinkBytes: outcome.uplinkBytes)
                    }
                    outcome.deviceSeconds = Double(DispatchTime.now().uptimeNanoseconds - began) / 1e9
                    state.commit(slot: slot, delta: decoded[worker], encoded: encoded, outcome: outcome)
                }
            }
        }
        if let failure = state.failure {
            throw ConfigurationError(failure)
        }
        if !widthClasses.isEmpty {
            if widthUpdates.isEmpty { widthUpdates = Array(repeating: 0, count: subModels.count) }
            for (slot, client) in selected.enumerated() where !dropped[slot] { widthUpdates[widthClasses[client]] += 1 }
        }
        if arrivalDecides { state.deliverByArrival() }
        // The virtual clock: the round ends at its last counted arrival, or at the deadline
        // when too few arrived in time.
        var simulatedSeconds: Double?
        if clock {
            let deadline = devices.roundDeadline > 0 ? devices.roundDeadline : Double.infinity
            let enough = state.accepted == c.clientsPerRound
            simulatedSeconds = enough || deadline == .infinity ? state.lastAcceptedArrival : deadline
        }
        engine = state.engine
        let outcome: RoundOutcome
        switch try engine.closeRound(at: simulatedSeconds ?? 0) {
        case .completed(let record): outcome = record
        case .abandoned: preconditionFailure("a simulated round has no quorum to miss")
        case .rejected: preconditionFailure("fedsim runs without the commit guard")
        }
        var record = RoundRecord(
            round: round, testMetric: outcome.testMetric, testLoss: outcome.testLoss,
            trainLoss: outcome.trainingLoss, clients: outcome.completed,
            uplinkBytes: outcome.uplinkBytes, downlinkBytes: outcome.downlinkBytes, seconds: 0,
            selected: outcome.selected, dropped: outcome.dropped, late: outcome.late,
            simulatedSeconds: simulatedSeconds, metric: network.spec.loss.metric)
        record.sparsity = outcome.sparsity
        if !state.deviceSeconds.isEmpty { record.clientSeconds = state.deviceSeconds.reduce(0, +) / Double(state.deviceSeconds.count) }
        record.seconds = Date().timeIntervalSince(startTime)
        try commits.record(round: round) {
            guard let store else { return }
            try store.commit(
                RoundRow(round: round, startedAt: startTime, endedAt: Date(), selected: outcome.selected, completed: outcome.completed,
                         refused: outcome.refused, uplinkBytes: record.uplinkBytes, downlinkBytes: record.downlinkBytes,
                         trainingLoss: record.trainLoss, testMetric: record.testMetric, testLoss: record.testLoss,
                         metric: record.metric.rawValue),
                checkpoint: Checkpoint(round: round, modelVersion: engine.modelVersion, model: engine.global,
                                       optimizerM: engine.optimizer.m, optimizerV: engine.optimizer.v, modelSHA256: RunStore.sha256(engine.global)),
                participations: outcome.participations.map { Participation($0, codec: c.codec.description) },
                trust: outcome.trust.mapValues { (trust: $0.trust, updates: $0.updates) })
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
            if configuration.stopAtTarget, configuration.targetMetric > 0,
               let value = record.testMetric, network.spec.loss.metric.reaches(value, configuration.targetMetric) {
                break
            }
        }
        return report
    }

    /// The report of the rounds run so far.
    public var report: SimulationReport { makeReport(records) }

    /// The report of rounds run through the TCP transport.
    /// The report of a run over TCP: its rounds, and with width classes the coordinator's final
    /// model and each class's delivered updates.
    func reportOverTCP(_ rounds: [RoundRecord], global: [Float]? = nil, widthUpdates: [Int]? = nil) -> SimulationReport {
        makeReport(rounds, global: global, widthUpdates: widthUpdates)
    }

    /// Each client's memory budget as fedclient declares it in HELLO: with width classes, the
    /// budget at which its class's width just fits (16 bytes per parameter of the sub-model,
    /// Protocol.md section 6), none (0) at full width.
    func memoryBudget(client: Int) throws -> UInt64 {
        guard !widthClasses.isEmpty else { return 0 }
        let width = configuration.widths[widthClasses[client]]
        guard width > 0, width < 1 else { return 0 }
        return UInt64(16 * (try SubModel(of: network, fraction: width)).network.parameterCount)
    }

    private func makeReport(_ records: [RoundRecord], global: [Float]? = nil, widthUpdates: [Int]? = nil) -> SimulationReport {
        let global = global ?? engine.global
        let metric = network.spec.loss.metric
        let values = records.compactMap(\.testMetric)
        let target = configuration.targetMetric > 0 ? configuration.targetMetric : nil
        let total = records.reduce(0) { $0 + $1.seconds }
        var summary = SimulationSummary(
            roundsRun: records.count,
            finalAccuracy: records.last?.testMetric,
            bestAccuracy: values.isEmpty ? nil : values.dropFirst().reduce(values[0], metric.best),
            targetMetric: target,
            roundsToTarget: target.flatMap { t in records.first { $0.testMetric.map { metric.reaches($0, t) } ?? false }?.round },
            totalSeconds: total,
            meanSecondsPerRound: records.isEmpty ? 0 : total / Double(records.count),
            uplinkBytes: records.reduce(0) { $0 + $1.uplinkBytes },
            downlinkBytes: records.reduce(0) { $0 + $1.downlinkBytes },
            simulatedSeconds: configuration.devices.hasClock ? records.reduce(0) { $0 + ($1.simulatedSeconds ?? 0) } : nil,
            metric: metric)
        if !subModels.isEmpty {
            let delivered = widthUpdates ?? self.widthUpdates
            summary.widths = zip(configuration.widths, subModels).enumerated().filter { $0.element.0 > 0 }.map { k, pair in
                let (width, sub) = pair
                let value: Double
                if let sub {
                    value = Evaluator(network: sub.network, threads: configuration.effectiveThreads).evaluate(sub.gather(global), on: testData.all).value
                } else {
                    value = records.last?.testMetric ?? Evaluator(network: network, threads: configuration.effectiveThreads).evaluate(global, on: testData.all).value
                }
                var result = SimulationSummary.WidthResult(width: width, parameters: sub?.network.parameterCount ?? network.parameterCount, metric: value, updates: delivered[k])
                if !frozenShardClasses.isEmpty {
                    result.trainedParameters = frozenShardClasses[k].shards.reduce(0) { $0 + network.layout.tensors[$1].count }
                }
                return result
            }
        }
        if let final = finalEvaluation {
            summary.perClassAccuracy = final.perClassAccuracy
            if metric == .rmse { (summary.rmse, summary.mae) = (final.rmse, final.mae) }
        }
        return SimulationReport(config: configuration.reportValues, rounds: records, summary: summary)
    }
}

extension Simulation {
    /// One client of a narrower width class: trains its sub-model from the global model's
    /// values at its places, encodes the sub-model's delta with the uplink codec (with its own
    /// error-feedback residual), and writes what the server decodes into `decoded`, model-sized
    /// and zero outside the sub-model.
    ///
    /// With ordered dropout (`nested` not empty) each batch trains the nested model of a width
    /// drawn uniformly from `nested` (its own included).
    static func trainSubModel(
        _ sub: SubModel, trainer: LocalTrainer, nested: [(trainer: LocalTrainer, index: [Int32])], uplink: UpdateCodec, client: Int, round: Int,
        start: [Float], anchor: [Float]?, data: DatasetSlice, sgd: SGD, generator: inout SeededGenerator,
        residuals: ResidualStore, configuration c: SimulationConfiguration, decoded: inout [Float], outcome: ClientOutcome
    ) -> ClientOutcome {
        var outcome = outcome
        let from = sub.gather(start)
        var local = from
        if nested.isEmpty {
            let summary = trainer.train(parameters: &local, anchor: anchor.map(sub.gather), data: data,
                                        epochs: c.localEpochs, batchSize: c.batchSize, sgd: sgd, generator: &generator)
            outcome.loss = summary.meanLoss
        } else {
            outcome.loss = orderedDropout(&local, nested: nested, anchor: anchor.map(sub.gather), data: data, configuration: c, sgd: sgd, generator: &generator)
        }
        guard outcome.loss.isFinite else {
            outcome.failure = "training diverged in round \(round): client \(client) (width \(sub.fraction)) reached a non-finite loss; lower learning_rate (now \(c.learningRate))"
            return outcome
        }
        var delta = zip(local, from).map { $0 - $1 }
        let feedback = uplink.spec.errorFeedback ? residuals.take(client, count: delta.count) : nil
        feedback?.compensate(&delta)
        do {
            var codecGenerator = SeededGenerator(seed: c.seed, stream: 0xC0DE, UInt64(round), UInt64(client))
            let encoded = try uplink.encode(delta, generator: &codecGenerator)
            outcome.uplinkBytes = encoded.reduce(0) { $0 + $1.count }
            var received = delta
            try uplink.decode(encoded, into: &received)
            if var feedback {
                feedback.record(sent: delta, decoded: received)
                residuals.put(client, feedback)
            }
            decoded.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
            sub.scatter(received, into: &decoded)
            outcome.positions = sub.positions
        } catch {
            outcome.failure = "client \(client)'s update could not be encoded with \(uplink.spec): \(error)"
        }
        return outcome
    }
}

extension Simulation {
    /// Ordered dropout's local training: for every batch of every epoch, a width drawn from
    /// `nested`; that nested model's parameters are read from `local`, stepped once, and
    /// written back. Returns the mean training loss.
    static func orderedDropout(
        _ local: inout [Float], nested: [(trainer: LocalTrainer, index: [Int32])], anchor: [Float]?, data: DatasetSlice,
        configuration c: SimulationConfiguration, sgd: SGD, generator: inout SeededGenerator
    ) -> Double {
        var order = data.indices
        var lossSum = 0.0, seen = 0
        for _ in 0..<c.localEpochs {
            order.withUnsafeMutableBufferPointer { generator.shuffle($0) }
            var start = 0
            while start < order.count {
                let batch = Array(order[start..<min(order.count, start + c.batchSize)])
                let choice = nested[Int(generator.next() % UInt64(nested.count))]
                var parameters = SubModel.gather(local, at: choice.index)
                let summary = choice.trainer.train(
                    parameters: &parameters, anchor: anchor.map { SubModel.gather($0, at: choice.index) },
                    data: DatasetSlice(dataset: data.dataset, indices: batch), epochs: 1, batchSize: batch.count, sgd: sgd, generator: &generator)
                SubModel.scatter(parameters, into: &local, at: choice.index)
                lossSum += summary.meanLoss * Double(batch.count)
                seen += batch.count
                start += c.batchSize
            }
        }
        return seen > 0 ? lossSum / Double(seen) : 0
    }

    /// For each class k, the classes j no wider than k (k included) with the places of j's
    /// parameters in k's parameter vector (nested sub-models: j's places are among k's). A class
    /// without a sub-model (width 0, not taking part) has none and is never drawn.
    static func nestedIndices(_ subs: [SubModel?], parameterCount: Int) -> [[(width: Int, index: [Int32])]] {
        subs.map { outer in
            guard let outer else { return [] }
            var place = [Int32](repeating: -1, count: parameterCount)
            for (i, position) in outer.positions.enumerated() { place[Int(position)] = Int32(i) }
            return subs.enumerated().compactMap { j, inner in inner.flatMap { $0.fraction <= outer.fraction ? (j, $0) : nil } }.map { j, inner in
                let index = inner.positions.map { place[Int($0)] }
                precondition(!index.contains(-1), "width \(inner.fraction) is not nested in \(outer.fraction)")
                return (j, index)
            }
        }
    }
}

/// Shared by the workers of one round: hands out clients in sampling order and delivers their
/// updates to the engine strictly in that order (a worker that finishes early waits for its
/// turn), which makes the floating-point sum independent of thread timing.
///
/// When arrival order decides which updates count (over-selection, a deadline), updates are
/// held encoded instead and ``deliverByArrival()`` hands them to the engine in order of their
/// simulated arrival; the engine then adds the ones it admitted in selection order.
final class RoundDriver: @unchecked Sendable {
    private let condition = NSCondition()
    private var nextSlot = 0
    private var committed = 0
    private(set) var engine: RoundEngine
    private let clientIDs: [String]
    private let selected: [Int]
    private let byArrival: Bool
    private var outcomes: [(slot: Int, outcome: ClientOutcome, encoded: [[UInt8]])] = []
    private let allShards: [Int]
    /// Why the round failed: the first client (in sampling order) whose training diverged or
    /// whose update could not be encoded. A failed round is not applied.
    private(set) var failure: String?
    /// Updates the engine admitted, and the last one's simulated arrival.
    private(set) var accepted = 0
    private(set) var lastAcceptedArrival = 0.0
    /// Each trained client's ``ClientOutcome/deviceSeconds``.
    private(set) var deviceSeconds: [Double] = []

    init(engine: RoundEngine, clientIDs: [String], selected: [Int], byArrival: Bool) {
        self.engine = engine
        self.clientIDs = clientIDs
        self.selected = selected
        self.byArrival = byArrival
        allShards = engine.layout.trainableIndices
    }

    func claim() -> Int? {
        condition.lock()
        defer { condition.unlock() }
        guard nextSlot < selected.count else { return nil }
        nextSlot += 1
        return nextSlot - 1
    }

    func commit(slot: Int, delta: [Float], encoded: [[UInt8]], outcome: ClientOutcome) {
        condition.lock()
        while committed != slot { condition.wait() }
        if !outcome.dropped { deviceSeconds.append(outcome.deviceSeconds) }
        if let problem = outcome.failure {
            failure = failure ?? problem
        } else if failure == nil {
            if byArrival {
                outcomes.append((slot, outcome, encoded))
            } else {
                deliver(slot: slot, outcome: outcome, body: .decoded(delta))
            }
        }
        committed += 1
        condition.broadcast()
        condition.unlock()
    }

    /// Hands the held updates to the engine in order of simulated arrival (ties by slot).
    func deliverByArrival() {
        for held in outcomes.sorted(by: { ($0.outcome.arrival, $0.slot) < ($1.outcome.arrival, $1.slot) }) {
            deliver(slot: held.slot, outcome: held.outcome, body: .encoded(held.encoded))
        }
        outcomes = []
    }

    private func deliver(slot: Int, outcome: ClientOutcome, body: RoundEngine.IncomingUpdate.Body) {
        let id = clientIDs[selected[slot]]
        if outcome.dropped {
            engine.clientDropped(id, at: outcome.arrival)
            return
        }
        let task = engine.roundInProgress ?? 0
        var update = RoundEngine.IncomingUpdate(
            round: task, modelVersion: engine.modelVersion, exampleCount: outcome.examples, trainingLoss: outcome.loss,
            shards: outcome.shards ?? allShards, body: body, bytes: outcome.uplinkBytes)
        update.positions = outcome.positions
        for case .acknowledge in engine.updateArrived(update, from: id, at: outcome.arrival) {
            accepted += 1
            lastAcceptedArrival = max(lastAcceptedArrival, outcome.arrival)
        }
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

/// What one client's training produced.
struct ClientOutcome {
    var examples: Int
    var loss: Double
    var uplinkBytes = 0
    /// A sub-model's places in the model (its update covers only them), or nil.
    var positions: [Int32]?
    /// The shards its update carries, when not all the trainable ones (a frozen-shard device).
    var shards: [Int]?
    var failure: String?
    /// Dropped out before delivering (nothing was trained or sent).
    var dropped = false
    /// When its update reaches the server on the virtual clock (0 without a device model).
    var arrival = 0.0
    /// Wall-clock seconds of its local training and update encoding on its worker thread.
    var deviceSeconds = 0.0
}

/// Error-feedback residuals by client id. Each client is trained by one worker at a time, so
/// the lock only guards the dictionary itself.
final class ResidualStore: @unchecked Sendable {
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

/// The last evaluation the engine asked for, kept for the report.
private final class LatestEvaluation: @unchecked Sendable {
    var value: Evaluation?
}
