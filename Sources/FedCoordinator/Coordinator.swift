import Crypto
import FedCodec
import FedModel
import FedProtocol
import FedRounds
import FedStore
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// The coordinator: the I/O shell around the socket-free ``RoundEngine``. It serves TCP (and
/// TLS) with SwiftNIO, authenticates clients, keeps their connections (heartbeats, idle
/// timeouts, revocation), sends what the engine decides (model shards from a download cache,
/// tasks, acknowledgements, refusals), commits each round the engine closes to the store, and
/// reports metrics. Rounds advance on events (a client joined or left, an update arrived, a
/// deadline timer fired), not by polling.
///
/// One misbehaving connection never harms the others: each connection is handled in its own
/// task that catches every error, answers protocol errors with an ERROR message, and closes.
public actor Coordinator {
    public let configuration: CoordinatorConfiguration
    public let network: Network
    /// The global model and its version.
    public var global: [Float] { engine.global }
    public var modelVersion: UInt32 { engine.modelVersion }
    public private(set) var history: [CoordinatorRound] = []
    /// The bound port once ``run(onBound:progress:)`` is listening.
    public private(set) var port: Int?
    /// The bound port of the metrics endpoint, when configured.
    public private(set) var metricsPort: Int?
    public let metrics = CoordinatorMetrics()
    /// The first round this process runs (after the last committed one when resuming).
    public let firstRound: Int

    var engine: RoundEngine
    let logger: Logger
    let store: RunStore?
    /// Authenticated connections by client id.
    var connections: [String: Connection] = [:]
    var nextSession: UInt64 = 1
    /// The model as downloaded at the current version: encoded shards and their SHA-256.
    private var downloadCache: [Double: (version: UInt32, shards: [[UInt8]], digests: [[UInt8]])] = [:]
    /// The current round's MODEL_SHARD messages framed once per protocol version (with their
    /// CRC-32s) and written as they are to every client that needs them.
    private var framedShards: (round: Int, modelVersion: UInt32, byVersion: [FramingKey: [Int: [Frame]]]) = (0, 0, [:])
    /// Shards are framed once per protocol version and width.
    struct FramingKey: Hashable {
        var version: UInt8
        var width: Double
    }
    private let downlink: UpdateCodec
    /// With width classes and test data: per width (narrowest first), its sub-model and an
    /// evaluator (nil at full width, which the engine evaluates).
    private let widthEvaluators: [(SubModel, Evaluator, DatasetSlice)?]
    /// The round loop waits here for the next event.
    private var waiters: [CheckedContinuation<Void, Never>] = []
    /// Set by ``stop()``: when the graceful shutdown began.
    private var stopRequested: Date?
    /// Set once the rounds are over.
    var finished = false
    /// Clients sent a task whose update has not arrived (they may still be training when the
    /// run ends, and get a grace period to upload and read their GOODBYE).
    var awaitingUpdate: Set<String> = []
    /// Tasks of the current round not sent yet (``CoordinatorConfiguration/maximumTasksInFlight``), in selection order.
    private var queuedTasks: [(client: String, task: RoundEngine.Task)] = []
    /// Clients of the current round sent a task whose update has not arrived, nor have they left.
    var tasksInFlight: Set<String> = []
    /// Connections being served (not actor state: the accept loop counts them synchronously).
    nonisolated let openConnections = NIOLockedValueBox(0)
    /// Whether new connections are taken (false once the run is ending).
    nonisolated let accepting = NIOLockedValueBox(true)

    struct Connection {
        var session: UInt64
        /// The protocol version the connection speaks.
        var version: UInt8
        var outbound: AsyncStream<Outgoing>.Continuation
        var channel: any Channel
        /// When it last sent anything (the idle timeout counts from here).
        var lastHeard = Date()
    }

    /// `test` is evaluated after every round; `trusted` is the server's own data, required by
    /// the trust aggregator (``CoordinatorConfiguration/trustedExamples`` of it are used).
    public init(configuration: CoordinatorConfiguration, test: Dataset? = nil, trusted: Dataset? = nil, logger: Logger = Logger(label: "fedcoord")) throws {
        let network = try Network(configuration.model)
        self.configuration = configuration
        self.network = network
        self.logger = logger
        let ranges = network.layout.tensors.map(\.range)
        downlink = UpdateCodec(spec: configuration.downlinkCodec, shardRanges: ranges)
        var settings = RoundEngine.Settings(rounds: configuration.rounds, clientsPerRound: configuration.clientsPerRound, selectionSize: configuration.selectionSize)
        settings.minimumUpdates = configuration.minimumUpdates
        settings.minimumClients = configuration.minimumClients
        settings.roundDeadline = configuration.roundDeadline
        settings.localEpochs = configuration.localEpochs
        settings.batchSize = configuration.batchSize
        settings.learningRate = configuration.learningRate
        settings.uplink = configuration.uplinkCodec
        settings.seed = configuration.seed
        settings.targetMetric = configuration.targetMetric
        settings.metric = configuration.model.loss.metric
        settings.aggregation = configuration.aggregation
        settings.serverOptimizer = configuration.serverOptimizer
        settings.updateBound = configuration.updateBound
        settings.lossGuard = configuration.lossGuard
        settings.skipClientsThatMissedADeadline = true
        settings.pruning = try configuration.pruning?.resolved(rounds: configuration.rounds)
        settings.widths = configuration.widths

        var initial = network.initialParameters(seed: configuration.seed)
        var resume: (round: Int, modelVersion: UInt32, optimizer: ServerOptimizer, ledger: TrustLedger)?
        // The model before the last checkpoint, from which low-rank warm starts are followed.
        var previousModel: [Float]?
        if let path = configuration.databasePath {
            let store = try RunStore(path: path)
            try store.recordRun(configuration: configuration.model.wireDescription)
            if let checkpoint = try store.lastCheckpoint() {
                guard checkpoint.model.count == network.parameterCount else {
                    throw StoreError("\(path): its model has \(checkpoint.model.count) parameters, the configured model \(network.parameterCount)")
                }
                initial = checkpoint.model
                if configuration.uplinkCodec.lowRank != nil, checkpoint.round > 1 {
                    previousModel = try store.checkpoint(round: checkpoint.round - 1)?.model
                }
                resume = (checkpoint.round, checkpoint.modelVersion,
                          ServerOptimizer(settings: configuration.serverOptimizer, m: checkpoint.optimizerM, v: checkpoint.optimizerV),
                          TrustLedger(records: try store.trustRecords().mapValues { TrustLedger.Record(trust: $0.trust, updates: $0.updates) }))
                logger.info("resuming", metadata: ["database": "\(path)", "last committed round": "\(checkpoint.round)", "model sha256": "\(checkpoint.modelSHA256)"])
                try? store.recordEvent(kind: "restart", message: "resumed after round \(checkpoint.round)")
            }
            self.store = store
        } else {
            store = nil
        }
        if resume == nil, let path = configuration.baseModelPath {
            let (parameters, kept) = try BaseModel(path: path).load(into: network, initial: initial)
            initial = parameters
            logger.info("starting from a base model", metadata: [
                "base_model": "\(path)", "trained": "\(network.layout.trainableIndices.count) of \(network.layout.tensors.count) shards",
                "initialised": "\(kept.isEmpty ? "none" : kept.joined(separator: ", "))"])
        }
        firstRound = (resume?.round ?? 0) + 1
        var evaluate: (([Float]) -> (metric: Double, loss: Double))?
        if let test {
            if let problem = network.accepts(test) { throw ModelError("test data: \(problem)") }
            let evaluator = Evaluator(network: network, threads: availableCores)
            let slice = test.all
            evaluate = { model in
                let result = evaluator.evaluate(model, on: slice)
                return (result.value, result.loss)
            }
        }
        widthEvaluators = test.map { test in
            configuration.widths.sorted().map { width in
                width < 1 ? (try? SubModel(of: network, fraction: width)).map { ($0, Evaluator(network: $0.network, threads: availableCores), test.all) } : nil
            }
        } ?? []
        var trustedDirections: TrustedDirections?
        if configuration.aggregation.needsTrustedDirections {
            guard let trusted else { throw ModelError("aggregator trust needs trusted data (trusted_data)") }
            trustedDirections = try TrustedDirections(
                network: network, data: TrustedDirections.sample(trusted, count: configuration.trustedExamples, seed: configuration.seed))
        }
        var fusion: EnsembleDistillation?
        if configuration.ensemble.enabled {
            guard let trusted else { throw ModelError("ensemble_distill needs the server's own examples (trusted_data)") }
            fusion = try EnsembleDistillation(
                network: network, transfer: TrustedDirections.sample(trusted, count: configuration.trustedExamples, seed: configuration.seed),
                settings: configuration.ensemble.distillation, threads: availableCores)
        }
        engine = RoundEngine(settings: settings, network: network, initial: initial, resume: resume, trusted: trustedDirections, fusion: fusion, evaluate: evaluate)
        if let previousModel, previousModel.count == network.parameterCount { engine.followWarmStarts(from: previousModel) }
    }

    /// The engine's clock: seconds of wall time.
    func now() -> Double { Date().timeIntervalSinceReferenceDate }

    // MARK: Serving

    /// Listens, runs every round, says goodbye to the clients and returns the rounds' records.
    /// `onBound` receives the listening port (useful with port 0). After ``stop()`` it returns
    /// the rounds committed so far.
    public func run(
        onBound: @Sendable (Int) -> Void = { _ in },
        progress: @Sendable @escaping (CoordinatorRound) -> Void = { _ in }
    ) async throws -> [CoordinatorRound] {
        let tls = try configuration.tls?.makeContext()
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Thousands of devices may connect at once (fedsim --transport tcp, a restart):
            // a deep accept queue keeps their SYNs from being dropped while accepts catch up.
            .serverChannelOption(.backlog, value: 4096)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: configuration.host, port: configuration.port) { [configuration, accepting] channel in
                channel.eventLoop.makeCompletedFuture {
                    // While shutting down, new connections are closed here: one handed to an
                    // accept loop that has ended would be dropped unfinished.
                    guard accepting.withLockedValue({ $0 }) else { throw ChannelError.ioOnClosedChannel }
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                    return try makeFramedChannel(
                        channel, maximumFramePayload: configuration.maximumFramePayload,
                        readTimeout: configuration.readTimeout > 0 ? .milliseconds(Int64(configuration.readTimeout * 1000)) : nil)
                }
            }
        let boundPort = server.channel.localAddress?.port ?? configuration.port
        port = boundPort
        var metricsChannel: (any Channel)?
        if let wanted = configuration.metricsPort {
            let channel: any Channel
            do {
                channel = try await MetricsServer.start(host: configuration.host, port: wanted, metrics: metrics)
            } catch {
                server.channel.close(promise: nil)
                throw MetricsBindError(message: "cannot serve metrics on \(configuration.host):\(wanted): \(error)")
            }
            metricsPort = channel.localAddress?.port
            metricsChannel = channel
            logger.info("serving metrics", metadata: ["url": "http://\(configuration.host):\(metricsPort ?? wanted)/metrics"])
        }
        defer { metricsChannel?.close(promise: nil) }
        logger.info("listening", metadata: ["host": "\(configuration.host)", "port": "\(boundPort)", "tls": "\(configuration.tls == nil ? "off" : configuration.tls?.clientCAPath == nil ? "on" : "mutual")", "model": "\(configuration.model.wireDescription)"])
        onBound(boundPort)
        let accepting = self.accepting
        let housekeeping = Task { await self.keepConnectionsAlive() }
        defer { housekeeping.cancel() }
        try await withTaskCancellationHandler {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask {
                    defer { server.channel.close(promise: nil) }
                    do {
                        try await self.runRounds(progress: progress)
                    } catch {
                        accepting.withLockedValue { $0 = false }
                        await self.closeEveryConnection(saying: nil)
                        throw error
                    }
                    // Stop taking connections, then dismiss every client (silent ones too).
                    accepting.withLockedValue { $0 = false }
                    await self.finishRun()
                }
                try await server.executeThenClose { inbound in
                    for try await connection in inbound {
                        guard self.openConnections.withLockedValue({ count in
                            guard count < self.configuration.maximumConnections else { return false }
                            count += 1
                            return true
                        }) else {
                            group.addTask { await self.turnAway(connection) }
                            continue
                        }
                        group.addTask {
                            await self.handle(connection)
                            self.openConnections.withLockedValue { $0 -= 1 }
                            await self.wake()
                        }
                    }
                }
            }
        } onCancel: {
            accepting.withLockedValue { $0 = false }
            Task { await self.stop() }
        }
        return history
    }

    /// Graceful shutdown: no new connections and no new round; the round in flight is finished
    /// if it can be within the smaller of its deadline and 30 s (otherwise it is abandoned and
    /// nothing of it committed); then every connection is closed and ``run(onBound:progress:)``
    /// returns. Version-2 clients are sent GOODBYE "going away" and reconnect with backoff to
    /// the coordinator's next start; version-1 clients, which end their run on any GOODBYE,
    /// only see their connection close, and reconnect the same way.
    public func stop() {
        guard stopRequested == nil else { return }
        stopRequested = Date()
        accepting.withLockedValue { $0 = false }
        logger.info("shutting down", metadata: ["round in flight": "\(engine.roundInProgress.map(String.init) ?? "none")"])
        wake()
    }

    /// Whether ``stop()`` was called.
    public var isStopping: Bool { stopRequested != nil }

    /// Connections being served now (handshakes included).
    public nonisolated var connectionCount: Int { openConnections.withLockedValue { $0 } }

    // MARK: Events

    /// Resumes the round loop to look at the engine again.
    func wake() {
        let waiting = waiters
        waiters = []
        for waiter in waiting { waiter.resume() }
    }

    /// Waits until `condition` holds, `deadline` (engine clock) passes, or the task is cancelled.
    /// One timer serves the whole wait, on an event loop, where cancelling it removes it: a
    /// sleeping task per wake-up (each update, each connection) stayed allocated until its
    /// deadline even when cancelled, a hundred thousand of them in 30 rounds of 100 clients
    /// under fedsim's hour-long deadline.
    private func waitUntil(_ deadline: Double? = nil, _ condition: () -> Bool) async throws {
        guard !condition() else { return }
        let timer = deadline.map { deadline in
            let seconds = min(max(0, deadline - Date().timeIntervalSinceReferenceDate), 1e7)
            return MultiThreadedEventLoopGroup.singleton.next().scheduleTask(in: .nanoseconds(Int64(seconds * 1e9) + 1_000_000)) { [weak self] in
                Task { await self?.wake() }
            }
        }
        defer { timer?.cancel() }
        while !condition() {
            try Task.checkCancellation()
            if let deadline, now() >= deadline { return }
            await withTaskCancellationHandler {
                await withCheckedContinuation { waiters.append($0) }
            } onCancel: {
                Task { await self.wake() }
            }
        }
    }

    // MARK: Rounds

    private func runRounds(progress: @Sendable (CoordinatorRound) -> Void) async throws {
        // Pause before drawing an abandoned or rejected round again: 0.1 s, doubling to 5 s,
        // back to none after a round completes. Without it, a round whose selected clients all
        // answer but below quorum (refused updates) was retried hundreds of times a second.
        var retryPause = 0.0
        while !engine.isFinished, stopRequested == nil {
            if retryPause > 0 {
                try await waitUntil(now() + retryPause) { stopRequested != nil }
                if stopRequested != nil { break }
            }
            if !engine.canBeginRound {
                logger.debug("waiting for clients", metadata: ["connected": "\(engine.clientCount)", "needed": "\(configuration.minimumClients)"])
            }
            try await waitUntil { engine.canBeginRound || stopRequested != nil }
            if stopRequested != nil { break }
            refreshRevocations()
            guard engine.canBeginRound else { continue }
            let start = Date()
            let tasks = engine.beginRound(at: now())
            try send(tasks)
            try await waitUntil(engine.deadline) { engine.isReadyToClose(at: now()) || stopRequested != nil }
            if let stopRequested, !engine.isReadyToClose(at: now()) {
                // Shutting down mid-round: finish it if it can within the smaller of its
                // deadline and 30 s; otherwise abandon it, committing nothing of it.
                let cutoff = min(engine.deadline ?? .infinity, stopRequested.timeIntervalSinceReferenceDate + 30)
                try await waitUntil(cutoff) { engine.isReadyToClose(at: now()) }
                if !engine.isReadyToClose(at: now()) {
                    let round = engine.roundInProgress ?? 0
                    engine.abandonRound()
                    logger.warning("round abandoned at shutdown", metadata: ["round": "\(round)"])
                    try? store?.recordEvent(kind: "abandoned", message: "round \(round): abandoned at shutdown, nothing committed")
                    break
                }
            }
            for id in connections.keys { connections[id]?.lastHeard = Date() } // a fresh idle window after training
            queuedTasks.removeAll() // tasks never sent: the round is over for them
            tasksInFlight.removeAll()
            switch try engine.closeRound(at: now()) {
            case .abandoned(let round, let updates, let quorum):
                retryPause = min(5, max(0.1, retryPause * 2))
                logger.warning("round abandoned below quorum", metadata: ["round": "\(round)", "updates": "\(updates)", "quorum": "\(quorum)", "retry in": "\(retryPause) s"])
                try? store?.recordEvent(kind: "abandoned", message: "round \(round): \(updates) updates, quorum \(quorum); retrying")
            case .rejected(let round, let reason):
                retryPause = min(5, max(0.1, retryPause * 2))
                logger.error("round rejected, previous model kept", metadata: ["round": "\(round)", "reason": "\(reason)"])
                try? store?.recordEvent(kind: "rejected", message: "round \(round): \(reason); the previous model is kept and the round drawn again")
            case .completed(var record):
                retryPause = 0
                record.seconds = Date().timeIntervalSince(start)
                if !configuration.widths.isEmpty { record.byWidth = widthRecords(record) }
                try commit(record, startedAt: start)
                progress(record)
            }
        }
    }

    /// Per width class: the new model's test metric at that width and the updates its clients
    /// delivered in the round.
    private func widthRecords(_ record: RoundOutcome) -> [WidthRecord] {
        let accepted = record.participations.filter { $0.state == .accepted }.map(\.client)
        return engine.widths.enumerated().map { k, width in
            let updates = accepted.filter { (engine.width(of: $0) ?? 1) == width }.count
            var metric: Double? = width == 1 ? record.testMetric : nil
            if k < widthEvaluators.count, let (sub, evaluator, test) = widthEvaluators[k] {
                metric = evaluator.evaluate(sub.gather(engine.global), on: test).value
            }
            return WidthRecord(width: width, metric: metric, updates: updates)
        }
    }

    /// Logs, counts and stores a closed round; the round counts only once it is committed with
    /// its model (a failed write stops the run and leaves the last committed round as it was).
    private func commit(_ record: RoundOutcome, startedAt start: Date) throws {
        for notice in record.notices {
            switch notice.kind {
            case .untrusted:
                logger.warning("untrusted update", metadata: ["client": "\(notice.client)", "round": "\(record.round)"])
                metrics.refused.increment()
            case .clipped:
                logger.warning("norm bound", metadata: ["client": "\(notice.client)", "round": "\(record.round)", "action": "clipped"])
                metrics.clipped.increment()
            case .leftOut:
                logger.warning("norm bound", metadata: ["client": "\(notice.client)", "round": "\(record.round)", "action": "left out"])
                metrics.refused.increment()
            case .bounded:
                logger.warning("update bound", metadata: ["client": "\(notice.client)", "round": "\(record.round)", "action": "scaled down"])
                metrics.clipped.increment()
            }
            let kind = switch notice.kind {
            case .untrusted: "untrusted"
            case .bounded: "update_bound"
            case .clipped, .leftOut: "norm_bound"
            }
            try? store?.recordEvent(kind: kind, client: notice.client, message: notice.message)
        }
        if let store {
            try store.commit(
                RoundRow(round: record.round, startedAt: start, endedAt: Date(), selected: record.selected, completed: record.completed,
                         refused: record.refused, uplinkBytes: record.uplinkBytes, downlinkBytes: record.downlinkBytes,
                         trainingLoss: record.trainingLoss, testMetric: record.testMetric, testLoss: record.testLoss,
                         metric: configuration.model.loss.metric.rawValue),
                checkpoint: Checkpoint(round: record.round, modelVersion: engine.modelVersion, model: engine.global,
                                       optimizerM: engine.optimizer.m, optimizerV: engine.optimizer.v, modelSHA256: RunStore.sha256(engine.global)),
                participations: record.participations.map { Participation($0, codec: configuration.uplinkCodec.description) },
                trust: record.trust.mapValues { (trust: $0.trust, updates: $0.updates) },
                retention: configuration.retention)
        }
        if !record.byWidth.isEmpty {
            try? store?.recordEvent(kind: "widths", message: "round \(record.round): " + record.byWidth.map {
                "width \($0.width) \(configuration.model.loss.metric) \($0.metric.map { String(format: "%.4f", $0) } ?? "-"), \($0.updates) updates"
            }.joined(separator: "; "))
        }
        history.append(record)
        metrics.rounds.increment()
        metrics.currentRound.set(to: Double(record.round))
        metrics.bytesDown.increment(by: Int64(record.downlinkBytes))
        if let value = record.testMetric {
            metrics.testMetric.set(to: value)
            if configuration.model.loss.metric == .accuracy { metrics.accuracy.set(to: value) }
        }
        var metadata: Logger.Metadata = [
            "round": "\(record.round)", "updates": "\(record.completed)/\(record.selected)",
            "\(configuration.model.loss.metric)": "\(record.testMetric.map { String(format: "%.4f", $0) } ?? "-")",
            "seconds": "\(String(format: "%.2f", record.seconds))",
        ]
        if let sparsity = record.sparsity { metadata["sparsity"] = "\(String(format: "%.3f", sparsity))" }
        if !record.byWidth.isEmpty {
            metadata["by width"] = "\(record.byWidth.map { "\($0.width): \($0.metric.map { String(format: "%.4f", $0) } ?? "-") (\($0.updates) updates)" }.joined(separator: ", "))"
        }
        logger.info("round complete", metadata: metadata)
    }

    /// Queues the round's tasks and sends as many as may be in flight.
    private func send(_ actions: [RoundEngine.Action]) throws {
        for case .sendTask(let id, let task) in actions { queuedTasks.append((id, task)) }
        try sendQueuedTasksOrThrow()
    }

    /// Sends queued tasks (each one's missing shards, then the task) while fewer than
    /// ``CoordinatorConfiguration/maximumTasksInFlight`` clients owe an update. Called when a
    /// round begins, and when an update arrives or a client leaves.
    func sendQueuedTasks() {
        do { try sendQueuedTasksOrThrow() } catch {
            logger.error("cannot encode the model for download", metadata: ["error": "\(error)"])
        }
    }

    private func sendQueuedTasksOrThrow() throws {
        let limit = configuration.maximumTasksInFlight
        while !queuedTasks.isEmpty, limit == 0 || tasksInFlight.count < limit {
            let (id, task) = queuedTasks.removeFirst()
            guard task.round == engine.roundInProgress, let connection = connections[id] else { continue }
            let sub = engine.subModel(of: id)
            let cache = try downloadShards(sub)
            let key = FramingKey(version: connection.version, width: sub?.fraction ?? 1)
            if framedShards.round != task.round || framedShards.modelVersion != task.modelVersion {
                framedShards = (task.round, task.modelVersion, [:])
            }
            var bytes = 0
            for index in task.shardsToSend {
                let frames = framedShards.byVersion[key]?[index] ?? {
                    let framer = MessageFramer(version: connection.version, maximumFramePayload: configuration.maximumFramePayload)
                    let message = Message.modelShard(ModelShard(
                        round: UInt32(task.round), modelVersion: task.modelVersion, shardIndex: UInt16(index),
                        sha256: cache.digests[index], encoded: cache.shards[index]))
                    let frames = framer.frames(for: message).map { $0.withChecksum() }
                    framedShards.byVersion[key, default: [:]][index] = frames
                    return frames
                }()
                connection.outbound.yield(.frames(frames))
                bytes += cache.shards[index].count
            }
            engine.countDownload(bytes: bytes)
            awaitingUpdate.insert(id)
            tasksInFlight.insert(id)
            connection.outbound.yield(.trainingTask(TrainingTask(
                round: UInt32(task.round), modelVersion: task.modelVersion, shards: task.shards,
                localEpochs: UInt16(configuration.localEpochs), batchSize: UInt16(configuration.batchSize),
                learningRate: configuration.learningRate, codec: configuration.uplinkCodec.description,
                deadlineMilliseconds: UInt32(min(configuration.roundDeadline, task.deadline.map { max(0, $0 - now()) } ?? configuration.roundDeadline) * 1000),
                warmStarts: task.warmStarts.keys.sorted().map { index in
                    let shape = engine.factorShapes[index]!
                    return TrainingTask.WarmStart(shardIndex: UInt16(index), rank: UInt16(shape.rank), columns: UInt32(shape.columns), values: task.warmStarts[index]!)
                })))
        }
    }

    /// The model (or a width class's sub-model) encoded for download at the current version.
    private func downloadShards(_ sub: SubModel? = nil) throws -> (version: UInt32, shards: [[UInt8]], digests: [[UInt8]]) {
        let width = sub?.fraction ?? 1
        if let cache = downloadCache[width], cache.version == engine.modelVersion { return cache }
        var generator = SeededGenerator(seed: configuration.seed, stream: 0xD0, UInt64(engine.modelVersion))
        if let sub {
            let values = sub.gather(engine.global)
            let codec = UpdateCodec(spec: downlink.spec, shardRanges: sub.network.layout.tensors.map(\.range))
            let shards = try codec.encode(values, generator: &generator)
            var decoded = values
            try codec.decode(shards, into: &decoded)
            let digests = sub.network.layout.tensors.map { tensor in decoded[tensor.range].withUnsafeBytes { Array(SHA256.hash(data: $0)) } }
            downloadCache[width] = (engine.modelVersion, shards, digests)
            return (engine.modelVersion, shards, digests)
        }
        // A pruned shard goes out sparse over its mask: the positions it lists are the weights
        // the client trains (Protocol.md, section 8.4).
        let shards = try downlink.encode(engine.global, masks: engine.mask?.kept, generator: &generator)
        var decoded = engine.global
        try downlink.decode(shards, into: &decoded)
        let digests = network.layout.tensors.map { tensor in
            decoded[tensor.range].withUnsafeBytes { Array(SHA256.hash(data: $0)) }
        }
        let cache = (engine.modelVersion, shards, digests)
        downloadCache[width] = cache
        return cache
    }

    // MARK: Ending

    /// The run is over: every client gets GOODBYE; clients still training (over-selected ones
    /// in the last round) get a few seconds to upload and read it; then every connection still
    /// open, silent ones included, is closed.
    private func finishRun() async {
        finished = true
        if stopRequested != nil {
            await closeEveryConnection(saying: nil)
            return
        }
        await closeEveryConnection(saying: "training finished")
    }

    /// Closes every connection, after GOODBYE `reason` if given. A client idle at the end is
    /// sent GOODBYE and its connection closed once that is written; a client still training
    /// gets ``CoordinatorConfiguration/finishGrace`` to upload (and then reads its GOODBYE). Connections still open after
    /// that, writes stuck on a peer that reads nothing included, are closed outright.
    ///
    /// Without a reason (the coordinator is stopping, not finished) version-2 clients are told
    /// GOODBYE "going away", so they reconnect later; version-1 clients, for which every
    /// GOODBYE ends the run, only see their connection close.
    func closeEveryConnection(saying reason: String?) async {
        finished = true
        guard let reason else {
            for (_, connection) in connections {
                if connection.version >= 2 {
                    connection.outbound.yield(.goodbye(Goodbye(.goingAway, reason: "the coordinator is stopping; reconnect later")))
                }
                connection.outbound.finish()
            }
            try? await waitUntil(now() + 1) { connections.isEmpty }
            for (_, connection) in connections { connection.channel.close(promise: nil) }
            try? await waitUntil(now() + 1) { connectionCount == 0 }
            return
        }
        for (id, connection) in connections {
            connection.outbound.yield(.goodbye(Goodbye(.finished, reason: reason)))
            if !awaitingUpdate.contains(id) { connection.outbound.finish() }
        }
        try? await waitUntil(now() + configuration.finishGrace) { awaitingUpdate.isDisjoint(with: connections.keys) }
        for (_, connection) in connections { connection.outbound.finish() }
        try? await waitUntil(now() + 2) { connections.isEmpty }
        for (_, connection) in connections { connection.channel.close(promise: nil) }
        // Connections accepted just before `accepting` turned false (still in their handshake).
        try? await waitUntil(now() + 1) { connectionCount == 0 }
    }
}

/// The metrics endpoint could not listen (its port, not the coordinator's, is named).
public struct MetricsBindError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

extension Participation {
    /// A participation as the run store records it.
    public init(_ p: RoundParticipation, codec: String) {
        self.init(client: p.client, state: p.state.rawValue, bytes: p.bytes, examples: p.examples, localLoss: p.localLoss,
                  codec: codec, errorCode: p.refusal.map { Int(ProtocolError.Code($0).rawValue) }, durationSeconds: p.durationSeconds)
    }
}

extension ProtocolError.Code {
    init(_ code: Refusal.Code) {
        switch code {
        case .staleRound: self = .staleRound
        case .lateUpdate: self = .lateUpdate
        case .unexpectedMessage: self = .unexpectedMessage
        case .badUpdate: self = .badUpdate
        case .authenticationFailed: self = .authenticationFailed
        }
    }
}

/// Runs `body`, failing with a timeout error if it takes longer than `seconds`.
func withDeadline<T: Sendable>(seconds: Double, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
            throw ProtocolError(.timeout, "no answer within \(seconds) s")
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
