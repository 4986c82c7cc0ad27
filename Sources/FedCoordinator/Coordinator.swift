import Crypto
import FedCodec
import FedModel
import FedProtocol
import FedStore
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// The coordinator: a SwiftNIO TCP server that authenticates clients, runs training rounds
/// (select with over-selection, send missing shards and the task, collect updates until the
/// target count or the deadline, aggregate into a running per-shard sum, apply the server
/// optimizer, evaluate) and stops after the configured rounds or at the target accuracy.
///
/// One misbehaving connection never harms the others: each connection is handled in its own
/// task that catches every error, answers protocol errors with an ERROR message, and closes.
public actor Coordinator {
    public let configuration: CoordinatorConfiguration
    public let network: Network
    public private(set) var global: [Float]
    public private(set) var modelVersion: UInt32 = 0
    public private(set) var history: [CoordinatorRound] = []
    /// The bound port once ``run(onBound:progress:)`` is listening.
    public private(set) var port: Int?
    /// The bound port of the metrics endpoint, when configured.
    public private(set) var metricsPort: Int?
    public let metrics = CoordinatorMetrics()

    private var optimizer: ServerOptimizer
    private let uplink: UpdateCodec
    private let downlink: UpdateCodec
    private let evaluator: Evaluator?
    private let testSlice: DatasetSlice?
    private let logger: Logger
    private var clients: [String: ConnectedClient] = [:]
    private var nextSession: UInt64 = 1
    private var roundState: RoundState?
    private var aggregate: UpdateAggregator
    /// Who sent each update added to ``aggregate``, in order.
    private var aggregatedClients: [String] = []
    /// The last round's reference norm for the norm bound.
    private var referenceNorm: Double?
    /// Trust aggregator: the server's directions on its trusted data, and each client's record
    /// (committed with every round, reloaded on resume).
    private let trustedDirections: TrustedDirections?
    private var ledger = TrustLedger()
    private var roundLossSum = 0.0
    private var roundExamples = 0.0
    private var roundUplinkBytes = 0
    private var roundRefused = 0
    private var roundParticipations: [Participation] = []
    private var scratch: [Float]
    /// The model as downloaded at the current version: encoded shards and their SHA-256.
    private var downloadCache: (version: UInt32, shards: [[UInt8]], digests: [[UInt8]])?
    private var stopping = false
    /// Set once the rounds are over and the clients dismissed.
    private var finished = false
    /// Connections being served (not actor state: the accept loop counts them synchronously).
    private nonisolated let openConnections = NIOLockedValueBox(0)
    /// Whether new connections are taken (false once the run is ending).
    private nonisolated let accepting = NIOLockedValueBox(true)
    private let store: RunStore?
    /// The first round this process runs (after the last committed one when resuming).
    public let firstRound: Int

    private struct ConnectedClient {
        var session: UInt64
        var outbound: AsyncStream<Message>.Continuation
        var channel: any Channel
        var heldVersions: [UInt32?]
        var busy = false
        /// Shards this client trains (all unless its memory budget is small).
        var trainedShards: [UInt16]
        /// When its current task was sent.
        var taskSentAt: Date?
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
        global = network.initialParameters(seed: configuration.seed)
        let ranges = network.layout.tensors.map(\.range)
        uplink = UpdateCodec(spec: try CodecSpec(parsing: configuration.uplinkCodec), shardRanges: ranges)
        downlink = UpdateCodec(spec: try CodecSpec(parsing: configuration.downlinkCodec), shardRanges: ranges)
        optimizer = ServerOptimizer(settings: configuration.serverOptimizer, parameterCount: network.parameterCount)
        aggregate = UpdateAggregator(shardRanges: ranges, settings: configuration.aggregation)
        scratch = [Float](repeating: 0, count: network.parameterCount)
        var firstRound = 1
        if let path = configuration.databasePath {
            let store = try RunStore(path: path)
            try store.recordRun(configuration: configuration.model.wireDescription)
            if let checkpoint = try store.lastCheckpoint() {
                guard checkpoint.model.count == network.parameterCount else {
                    throw StoreError("\(path): its model has \(checkpoint.model.count) parameters, the configured model \(network.parameterCount)")
                }
                global = checkpoint.model
                modelVersion = checkpoint.modelVersion
                optimizer = ServerOptimizer(settings: configuration.serverOptimizer, m: checkpoint.optimizerM, v: checkpoint.optimizerV)
                firstRound = checkpoint.round + 1
                logger.info("resuming", metadata: ["database": "\(path)", "last committed round": "\(checkpoint.round)", "model sha256": "\(checkpoint.modelSHA256)"])
                try? store.recordEvent(kind: "restart", message: "resumed after round \(checkpoint.round)")
                ledger = TrustLedger(records: try store.trustRecords().mapValues { TrustLedger.Record(trust: $0.trust, updates: $0.updates) })
                aggregate = UpdateAggregator(shardRanges: ranges, settings: configuration.aggregation, ledger: ledger)
            }
            self.store = store
        } else {
            store = nil
        }
        self.firstRound = firstRound
        if let test {
            guard test.sampleShape.count == configuration.model.input.count else {
                throw ModelError("test data has \(test.sampleShape.count) features, the model expects \(configuration.model.input.count)")
            }
            evaluator = Evaluator(network: network, threads: availableCores)
            testSlice = test.all
        } else {
            evaluator = nil
            testSlice = nil
        }
        if configuration.aggregation.needsTrustedDirections {
            guard let trusted else { throw ModelError("aggregator trust needs trusted data (trusted_data)") }
            trustedDirections = try TrustedDirections(
                network: network, data: TrustedDirections.sample(trusted, count: configuration.trustedExamples, seed: configuration.seed))
        } else {
            trustedDirections = nil
        }
    }

    // MARK: Serving

    /// Listens, runs every round, says goodbye to the clients and returns the rounds' records.
    /// `onBound` receives the listening port (useful with port 0).
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
            let channel = try await MetricsServer.start(host: configuration.host, port: wanted, metrics: metrics)
            metricsPort = channel.localAddress?.port
            metricsChannel = channel
            logger.info("serving metrics", metadata: ["url": "http://\(configuration.host):\(metricsPort ?? wanted)/metrics"])
        }
        defer { metricsChannel?.close(promise: nil) }
        logger.info("listening", metadata: ["host": "\(configuration.host)", "port": "\(boundPort)", "tls": "\(configuration.tls == nil ? "off" : configuration.tls?.clientCAPath == nil ? "on" : "mutual")", "model": "\(configuration.model.wireDescription)"])
        onBound(boundPort)
        let accepting = self.accepting
        try await withTaskCancellationHandler {
            try await withThrowingDiscardingTaskGroup { group in
            group.addTask {
                defer { server.channel.close(promise: nil) }
                defer { Task { await self.markFinished() } }
                do {
                    try await self.runRounds(progress: progress)
                } catch {
                    accepting.withLockedValue { $0 = false }
                    throw error
                }
                await self.dismissClients(reason: "training finished")
                // Stop taking connections, and let those already accepted reach the loop.
                accepting.withLockedValue { $0 = false }
                try? await Task.sleep(nanoseconds: 100_000_000)
            }
            group.addTask { await self.keepConnectionsAlive() }
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
                    }
                }
            }
            }
        } onCancel: {
            accepting.withLockedValue { $0 = false }
        }
        return history
    }

    /// Asks the round loop to stop after the current round (graceful shutdown).
    public func stop() {
        stopping = true
    }

    private func markFinished() { finished = true }

    /// Connections being served now (handshakes included).
    public nonisolated var connectionCount: Int { openConnections.withLockedValue { $0 } }

    /// Answers a connection beyond `max_connections` with ERROR overloaded and closes it.
    private nonisolated func turnAway(_ connection: NIOAsyncChannel<Frame, Frame>) async {
        let peer = connection.channel.remoteAddress?.description ?? "?"
        logger.warning("refusing connection", metadata: ["peer": "\(peer)", "error": "too many connections (\(configuration.maximumConnections))"])
        metrics.refused.increment()
        try? store?.recordEvent(kind: "refusal", message: "\(peer): too many connections (max_connections = \(configuration.maximumConnections))")
        try? await connection.executeThenClose { _, outbound in
            try await MessageWriter(outbound).send(.error(code: ProtocolError.Code.overloaded.rawValue, message: "too many connections; try again later"))
        }
    }

    /// Every heartbeat period: a HEARTBEAT to each idle client (a live one echoes it), and
    /// clients silent for longer than `idle_timeout` while not training are dropped. A client
    /// that is training is bounded by the round deadline instead.
    private func keepConnectionsAlive() async {
        let period = Double(max(50, configuration.heartbeatMilliseconds)) / 1000
        var next = Date().addingTimeInterval(period)
        while !finished {
            // Cancelled (the run is being torn down): stop at once rather than spin.
            do { try await Task.sleep(nanoseconds: 50_000_000) } catch { return }
            guard Date() >= next else { continue }
            next = Date().addingTimeInterval(period)
            let now = Date()
            let timestamp = UInt64(now.timeIntervalSince1970 * 1000)
            for (id, client) in clients where !client.busy {
                if configuration.idleTimeout > 0, now.timeIntervalSince(client.lastHeard) > configuration.idleTimeout {
                    disconnect(id, ProtocolError(.timeout, "nothing heard for \(String(format: "%.1f", configuration.idleTimeout)) s (idle_timeout)", clientID: id))
                } else {
                    client.outbound.yield(.heartbeat(timestamp: timestamp))
                }
            }
        }
    }

    private func dismissClients(reason: String) {
        for (_, client) in clients {
            client.outbound.yield(.goodbye(reason: reason))
            client.outbound.finish()
        }
    }

    /// One connection, start to end. Never throws: errors are answered, logged and end only this connection.
    private nonisolated func handle(_ connection: NIOAsyncChannel<Frame, Frame>) async {
        let peer = connection.channel.remoteAddress?.description ?? "?"
        var clientID: String?
        do {
            try await connection.executeThenClose { inbound, outbound in
                let reader = MessageReader(inbound)
                let writer = MessageWriter(outbound)
                do {
                    let (id, hello) = try await authenticate(reader: reader, writer: writer)
                    let (stream, continuation) = AsyncStream.makeStream(of: Message.self)
                    let session = try await register(id, hello: hello, outbound: continuation, channel: connection.channel)
                    clientID = id
                    try await writer.send(.welcome(sessionID: session, heartbeatMilliseconds: configuration.heartbeatMilliseconds, model: configuration.model.wireDescription))
                    try await withThrowingTaskGroup(of: Void.self) { tasks in
                        tasks.addTask {
                            for await message in stream { try await writer.send(message) }
                        }
                        tasks.addTask {
                            defer { continuation.finish() }
                            while let message = try await reader.next() {
                                if case .goodbye = message { return }
                                await self.received(message, from: id)
                            }
                        }
                        try await tasks.next()
                        tasks.cancelAll()
                    }
                } catch let error as ProtocolError {
                    let client = clientID ?? error.clientID
                    logger.warning("refusing connection", metadata: ["peer": "\(peer)", "client": "\(client ?? "-")", "error": "\(error)"])
                    metrics.refused.increment()
                    try? store?.recordEvent(kind: "refusal", client: client, message: "\(peer): \(error)")
                    try? await writer.send(.error(code: error.code.rawValue, message: error.message))
                }
            }
        } catch {
            logger.info("connection ended", metadata: ["peer": "\(peer)", "client": "\(clientID ?? "-")", "reason": "\(error)"])
        }
        if let clientID { await unregister(clientID) }
    }

    /// The public key `id` authenticates with: the database's registration when there is one
    /// (nil if revoked), else the configuration file's.
    private nonisolated func publicKey(of id: String) throws -> String? {
        if let store, let credential = try store.credential(id: id) {
            return credential.revoked ? nil : credential.publicKey
        }
        return configuration.clientKeys[id]
    }

    /// HELLO → CHALLENGE → AUTHENTICATE, within the handshake timeout.
    private nonisolated func authenticate(reader: MessageReader, writer: MessageWriter) async throws -> (String, Hello) {
        let timeout = configuration.handshakeTimeout
        return try await withDeadline(seconds: timeout) {
            guard case .hello(let hello)? = try await reader.next() else {
                throw ProtocolError(.unexpectedMessage, "the first message must be HELLO")
            }
            guard hello.protocolVersions.contains(Frame.protocolVersion) else {
                throw ProtocolError(.unsupportedVersion, "client speaks versions \(hello.protocolVersions), coordinator speaks \(Frame.protocolVersion)")
            }
            let nonce = Authentication.nonce()
            try await writer.send(.challenge(nonce: nonce, version: Frame.protocolVersion))
            guard case .authenticate(let signature)? = try await reader.next() else {
                throw ProtocolError(.unexpectedMessage, "expected AUTHENTICATE after CHALLENGE")
            }
            // Unknown, revoked and wrong-key clients all get the same answer on the wire; the
            // log and the events say which.
            guard let key = try self.publicKey(of: hello.clientID) else {
                throw ProtocolError(.authenticationFailed, "authentication failed for client \"\(hello.clientID)\"", detail: "unknown or revoked client", clientID: hello.clientID)
            }
            guard Authentication.verify(signature: signature, publicKey: key, nonce: nonce, clientID: hello.clientID) else {
                throw ProtocolError(.authenticationFailed, "authentication failed for client \"\(hello.clientID)\"", detail: "bad signature", clientID: hello.clientID)
            }
            return (hello.clientID, hello)
        }
    }

    private func register(_ id: String, hello: Hello, outbound: AsyncStream<Message>.Continuation, channel: any Channel) throws -> UInt64 {
        if let existing = clients[id] {
            // A reconnecting device replaces its stale connection.
            existing.outbound.finish()
            existing.channel.close(promise: nil)
        }
        let session = nextSession
        nextSession += 1
        metrics.connected.set(to: Double(clients.count + (clients[id] == nil ? 1 : 0)))
        clients[id] = ConnectedClient(
            session: session, outbound: outbound, channel: channel,
            heldVersions: Array(repeating: nil, count: network.layout.tensors.count),
            trainedShards: Self.shardsToTrain(layout: network.layout, memoryBudget: hello.memoryBudget))
        logger.info("client joined", metadata: ["client": "\(id)", "examples": "\(hello.exampleCount)", "connected": "\(clients.count)"])
        return session
    }

    private func unregister(_ id: String) {
        guard clients[id] != nil else { return }
        clients[id] = nil
        metrics.connected.set(to: Double(clients.count))
        logger.info("client left", metadata: ["client": "\(id)", "connected": "\(clients.count)"])
    }

    private func received(_ message: Message, from id: String) {
        clients[id]?.lastHeard = Date()
        switch message {
        case .update(let update):
            // After its update a client may have dropped its model (fedsim's clients do, to
            // stay small while idle), so nothing it held is assumed any more (Protocol.md, 3).
            if let held = clients[id]?.heldVersions { clients[id]?.heldVersions = held.map { _ in nil } }
            receiveUpdate(update, from: id)
        case .heartbeat:
            break // it counts as hearing from the client (above); our own heartbeats come back here
        default:
            refuse(id, ProtocolError(.unexpectedMessage, "\(message.type) is not expected from a client now"))
        }
    }

    private func refuse(_ id: String, _ error: ProtocolError) {
        roundRefused += 1
        metrics.refused.increment()
        roundParticipations.append(Participation(
            client: id, state: "refused", bytes: 0, examples: 0, localLoss: nil,
            codec: configuration.uplinkCodec, errorCode: Int(error.code.rawValue)))
        logger.warning("refused", metadata: ["client": "\(id)", "error": "\(error)"])
        clients[id]?.outbound.yield(.error(code: error.code.rawValue, message: error.message))
    }

    // MARK: Updates

    /// Drops the connections of clients revoked (`fedcoord clients revoke`) since they joined.
    private func disconnectRevokedClients() {
        guard let store, let revoked = try? store.revokedIDs() else { return }
        for id in revoked where clients[id] != nil {
            disconnect(id, ProtocolError(.authenticationFailed, "client \"\(id)\" has been revoked", clientID: id))
        }
    }

    /// Refuses with `error`, says so to the client and closes its connection.
    private func disconnect(_ id: String, _ error: ProtocolError) {
        guard let client = clients[id] else { return }
        logger.warning("disconnecting client", metadata: ["client": "\(id)", "error": "\(error)"])
        metrics.refused.increment()
        try? store?.recordEvent(kind: "refusal", client: id, message: "\(error)")
        client.outbound.yield(.error(code: error.code.rawValue, message: error.message))
        client.outbound.finish()
        unregister(id)
    }

    private func receiveUpdate(_ update: Update, from id: String) {
        if let store, (try? store.credential(id: id))??.revoked == true {
            disconnect(id, ProtocolError(.authenticationFailed, "client \"\(id)\" has been revoked", clientID: id))
            return
        }
        guard var state = roundState else {
            refuse(id, ProtocolError(.lateUpdate, "no round is collecting updates"))
            return
        }
        // Validate the content before it takes a place in the round.
        var trained: [Int] = []
        var bytes = 0
        do {
            guard update.exampleCount > 0 else { throw ProtocolError(.badUpdate, "update with no examples") }
            guard update.trainingLoss.isFinite else { throw ProtocolError(.badUpdate, "training loss is \(update.trainingLoss)") }
            guard !update.shards.isEmpty else { throw ProtocolError(.badUpdate, "update carries no shards") }
            try scratch.withUnsafeMutableBufferPointer { all in
                for shard in update.shards {
                    let index = Int(shard.index)
                    guard index < network.layout.tensors.count, !trained.contains(index) else {
                        throw ProtocolError(.badUpdate, "shard index \(index) is out of range or repeated")
                    }
                    guard clients[id]?.trainedShards.contains(UInt16(index)) ?? false else {
                        throw ProtocolError(.badUpdate, "shard \(index) was not assigned to this client")
                    }
                    let range = network.layout.tensors[index].range
                    do {
                        try shard.encoded.withUnsafeBytes { try ShardCodec.decode($0, into: UnsafeMutableBufferPointer(rebasing: all[range])) }
                    } catch let error as CodecError {
                        throw ProtocolError(.badUpdate, "shard \(index): \(error)")
                    }
                    trained.append(index)
                    bytes += shard.encoded.count
                }
            }
        } catch let error as ProtocolError {
            refuse(id, error)
            return
        } catch {
            refuse(id, ProtocolError(.badUpdate, "\(error)"))
            return
        }
        switch state.admit(client: id, round: update.round, version: update.modelVersion) {
        case .refuse(let code, let message):
            refuse(id, ProtocolError(code, message))
            return
        case .accept:
            break
        }
        roundState = state
        aggregate.add(delta: scratch, shards: trained, weight: Double(update.exampleCount), client: id)
        aggregatedClients.append(id)
        roundLossSum += Double(update.trainingLoss) * Double(update.exampleCount)
        roundExamples += Double(update.exampleCount)
        roundUplinkBytes += bytes
        metrics.accepted.increment()
        metrics.bytesUp.increment(by: Int64(bytes))
        roundParticipations.append(Participation(
            client: id, state: "accepted", bytes: bytes, examples: Int(update.exampleCount),
            localLoss: Double(update.trainingLoss), codec: configuration.uplinkCodec, errorCode: nil,
            durationSeconds: clients[id]?.taskSentAt.map { Date().timeIntervalSince($0) }))
        clients[id]?.busy = false
        clients[id]?.outbound.yield(.acknowledgement(type: MessageType.update.rawValue, round: update.round))
    }

    // MARK: Rounds

    private func runRounds(progress: @Sendable (CoordinatorRound) -> Void) async throws {
        var round = firstRound
        var abandoned = 0
        while round <= configuration.rounds, !stopping {
            try await waitForClients()
            if stopping { break }
            disconnectRevokedClients()
            let start = Date()
            let selected = selectClients(round: round, attempt: abandoned)
            let downloadBytes = try sendTasks(to: selected, round: round)
            roundState = RoundState(round: round, modelVersion: modelVersion, selected: Set(selected), wanted: configuration.clientsPerRound)
            let deadline = Date().addingTimeInterval(configuration.roundDeadline)
            while let state = roundState, !state.isComplete, Date() < deadline, !allSelectedGone(selected) {
                try await Task.sleep(nanoseconds: 5_000_000)
            }
            roundState?.close()
            let completed = roundState?.reported.count ?? 0
            for id in selected {
                clients[id]?.busy = false
                clients[id]?.lastHeard = Date() // a fresh idle window after training
            }
            if completed < configuration.minimumUpdates {
                logger.warning("round abandoned below quorum", metadata: ["round": "\(round)", "updates": "\(completed)", "quorum": "\(configuration.minimumUpdates)"])
                try? store?.recordEvent(kind: "abandoned", message: "round \(round): \(completed) updates, quorum \(configuration.minimumUpdates); retrying")
                abandoned += 1
                resetRound()
                continue
            }
            if let trustedDirections {
                aggregate.setTrustedDirections(trustedDirections.directions(
                    from: global, learningRate: configuration.learningRate, seed: configuration.seed, round: round))
            }
            var dpGenerator = SeededGenerator(seed: configuration.seed, stream: 0xD9, UInt64(round))
            let (aggregated, outcome) = aggregate.finish(generator: &dpGenerator)
            if let reference = outcome.referenceNorm { referenceNorm = reference }
            ledger = aggregate.ledger
            for index in outcome.untrusted {
                let id = aggregatedClients[index]
                let message = String(format: "round %d: update left out by the trust rule: score %.4f, client trust %.4f, threshold %.4f",
                                     round, outcome.scores[index], outcome.trust[index], outcome.trustThreshold ?? 0)
                logger.warning("untrusted update", metadata: ["client": "\(id)", "round": "\(round)", "score": "\(outcome.scores[index])", "trust": "\(outcome.trust[index])"])
                metrics.refused.increment()
                try? store?.recordEvent(kind: "untrusted", client: id, message: message)
            }
            for (index, action) in outcome.clipped.map({ ($0, "clipped") }) + outcome.excluded.map({ ($0, "left out") }) {
                let id = aggregatedClients[index]
                let message = "round \(round): update \(action) by the norm bound (\(configuration.aggregation.normBound > 0 ? configuration.aggregation.normBound : 1.5) × reference norm \(String(format: "%.4g", outcome.referenceNorm ?? 0)))"
                logger.warning("norm bound", metadata: ["client": "\(id)", "round": "\(round)", "action": "\(action)"])
                if action == "clipped" { metrics.clipped.increment() } else { metrics.refused.increment() }
                try? store?.recordEvent(kind: "norm_bound", client: id, message: message)
            }
            if let mean = aggregated {
                optimizer.apply(delta: mean, to: &global)
                modelVersion += 1
            }
            var record = CoordinatorRound(
                round: round, selected: selected.count, completed: completed, refused: roundRefused,
                uplinkBytes: roundUplinkBytes, downlinkBytes: downloadBytes,
                trainingLoss: roundExamples > 0 ? roundLossSum / roundExamples : 0,
                testAccuracy: nil, testLoss: nil, seconds: 0, abandonedAttempts: abandoned)
            if let evaluator, let testSlice {
                let evaluation = evaluator.evaluate(global, on: testSlice)
                record.testAccuracy = evaluation.accuracy
                record.testLoss = evaluation.loss
            }
            record.seconds = Date().timeIntervalSince(start)
            if let store {
                // The round counts only once it is committed with its model; a failed write
                // stops the run and leaves the last committed round as it was.
                try store.commit(
                    RoundRow(round: round, startedAt: start, endedAt: Date(), selected: record.selected, completed: record.completed,
                             refused: record.refused, uplinkBytes: record.uplinkBytes, downlinkBytes: record.downlinkBytes,
                             trainingLoss: record.trainingLoss, testAccuracy: record.testAccuracy, testLoss: record.testLoss),
                    checkpoint: Checkpoint(round: round, modelVersion: modelVersion, model: global,
                                           optimizerM: optimizer.m, optimizerV: optimizer.v, modelSHA256: RunStore.sha256(global)),
                    participations: roundParticipations,
                    trust: Dictionary(uniqueKeysWithValues: Set(aggregatedClients).compactMap { id in
                        ledger.records[id].map { (id, (trust: $0.trust, updates: $0.updates)) }
                    }),
                    retention: configuration.retention)
            }
            history.append(record)
            metrics.rounds.increment()
            metrics.currentRound.set(to: Double(round))
            metrics.bytesDown.increment(by: Int64(downloadBytes))
            if let accuracy = record.testAccuracy { metrics.accuracy.set(to: accuracy) }
            progress(record)
            logger.info("round complete", metadata: [
                "round": "\(round)", "updates": "\(completed)/\(selected.count)", "accuracy": "\(record.testAccuracy.map { String(format: "%.4f", $0) } ?? "-")",
                "seconds": "\(String(format: "%.2f", record.seconds))",
            ])
            resetRound()
            abandoned = 0
            if configuration.targetAccuracy > 0, let accuracy = record.testAccuracy, accuracy >= configuration.targetAccuracy { break }
            round += 1
        }
    }

    private func resetRound() {
        roundState = nil
        aggregate = UpdateAggregator(shardRanges: aggregate.shardRanges, settings: configuration.aggregation, previousReferenceNorm: referenceNorm, ledger: ledger)
        aggregatedClients = []
        roundLossSum = 0
        roundExamples = 0
        roundUplinkBytes = 0
        roundRefused = 0
        roundParticipations = []
    }

    private func allSelectedGone(_ selected: [String]) -> Bool {
        selected.allSatisfy { clients[$0] == nil || roundState?.reported.contains($0) == true }
    }

    private func waitForClients() async throws {
        var lastLog = Date.distantPast
        while clients.count < configuration.minimumClients, !stopping {
            if Date().timeIntervalSince(lastLog) > 1 {
                disconnectRevokedClients()
                logger.debug("waiting for clients", metadata: ["connected": "\(clients.count)", "needed": "\(configuration.minimumClients)"])
                lastLog = Date()
            }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
    }

    /// Up to ``CoordinatorConfiguration/selectionSize`` idle clients, drawn from the seed.
    private func selectClients(round: Int, attempt: Int) -> [String] {
        var pool = clients.filter { !$0.value.busy }.keys.sorted()
        // The same draw as fedsim's in-memory transport, so both pick the same clients.
        var generator = attempt == 0
            ? SeededGenerator(seed: configuration.seed, stream: 0x5A3B, UInt64(round))
            : SeededGenerator(seed: configuration.seed, stream: 0x5A3B, UInt64(round), UInt64(attempt))
        let count = min(pool.count, configuration.selectionSize)
        for i in 0..<count {
            pool.swapAt(i, i + Int(generator.next() % UInt64(pool.count - i)))
        }
        return Array(pool.prefix(count))
    }

    /// The shards a client with `memoryBudget` bytes trains (Protocol.md, section 7): holding the
    /// model costs 4 bytes per parameter; training a shard costs 12 bytes per parameter of it
    /// (gradient, local copy, delta). Shards are taken largest first while they fit; a client
    /// whose budget fits none trains the smallest one. A budget of 0 means no limit.
    static func shardsToTrain(layout: ParameterLayout, memoryBudget: UInt64) -> [UInt16] {
        let all = layout.tensors.map { UInt16($0.index) }
        guard memoryBudget > 0 else { return all }
        var remaining = Int64(clamping: memoryBudget) - Int64(layout.parameterCount * 4)
        var chosen: [UInt16] = []
        for tensor in layout.tensors.sorted(by: { ($0.count, $1.index) > ($1.count, $0.index) }) {
            let cost = Int64(tensor.count * 12)
            if cost <= remaining {
                chosen.append(UInt16(tensor.index))
                remaining -= cost
            }
        }
        if chosen.isEmpty, let smallest = layout.tensors.min(by: { $0.count < $1.count }) {
            chosen = [UInt16(smallest.index)]
        }
        return chosen.sorted()
    }

    /// Sends each selected client the shards it lacks at this version, then its task.
    /// Returns the bytes of shards sent.
    private func sendTasks(to selected: [String], round: Int) throws -> Int {
        let cache = try downloadShards()
        var task = TrainingTask(
            round: UInt32(round), modelVersion: modelVersion,
            shards: [],
            localEpochs: UInt16(configuration.localEpochs), batchSize: UInt16(configuration.batchSize),
            learningRate: configuration.learningRate, codec: configuration.uplinkCodec,
            deadlineMilliseconds: UInt32(configuration.roundDeadline * 1000))
        var bytes = 0
        for id in selected {
            guard var client = clients[id] else { continue }
            for (index, encoded) in cache.shards.enumerated() where client.heldVersions[index] != modelVersion {
                client.outbound.yield(.modelShard(ModelShard(
                    round: UInt32(round), modelVersion: modelVersion, shardIndex: UInt16(index),
                    sha256: cache.digests[index], encoded: encoded)))
                client.heldVersions[index] = modelVersion
                bytes += encoded.count
            }
            client.busy = true
            task.shards = client.trainedShards
            client.taskSentAt = Date()
            client.outbound.yield(.trainingTask(task))
            clients[id] = client
        }
        return bytes
    }

    private func downloadShards() throws -> (version: UInt32, shards: [[UInt8]], digests: [[UInt8]]) {
        if let cache = downloadCache, cache.version == modelVersion { return cache }
        var generator = SeededGenerator(seed: configuration.seed, stream: 0xD0, UInt64(modelVersion))
        let shards = try downlink.encode(global, generator: &generator)
        var decoded = global
        try downlink.decode(shards, into: &decoded)
        let digests = network.layout.tensors.map { tensor in
            decoded[tensor.range].withUnsafeBytes { Array(SHA256.hash(data: $0)) }
        }
        let cache = (modelVersion, shards, digests)
        downloadCache = cache
        return cache
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
