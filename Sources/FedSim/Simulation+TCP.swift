import FedClient
import FedCoordinator
import FedModel
import FedProtocol
import Foundation
import Logging

extension Simulation {
    /// Runs the scenario through the real coordinator and one real client daemon per simulated
    /// client, all in this process, over TCP on 127.0.0.1 (the same code as `fedcoord` and
    /// `fedclient`). Client selection, local training, codec draws and error feedback follow
    /// the same seeded streams as the in-memory transport; only the order in which updates are
    /// added differs (arrival order instead of sampling order), so results agree to float
    /// rounding rather than bit for bit.
    public func runOverTCP(progress: @escaping @Sendable (RoundRecord) -> Void = { _ in }) async throws -> SimulationReport {
        let c = configuration
        // Each client costs two descriptors here (its socket and the coordinator's).
        try raiseOpenFileLimit(toAtLeast: 2 * c.clients + 64)
        var coordinator = CoordinatorConfiguration()
        coordinator.host = "127.0.0.1"
        coordinator.port = 0
        coordinator.model = network.spec
        coordinator.rounds = c.rounds
        coordinator.targetMetric = c.stopAtTarget ? c.targetMetric : 0
        // A device of a width-0 class never connects; the others declare their class's budget.
        let takingPart = (0..<c.clients).filter { widthClasses.isEmpty || c.widths[widthClasses[$0]] > 0 }
        coordinator.minimumClients = takingPart.count
        // Width classes give the coordinator sub-models; frozen shards leave it without, so each
        // budget picks the shards its device trains, as fedcoord does.
        if !c.frozenShards { coordinator.widths = c.widths.filter { $0 > 0 } }
        coordinator.clientsPerRound = c.clientsPerRound
        coordinator.overSelection = 1
        coordinator.minimumUpdates = c.clientsPerRound
        coordinator.roundDeadline = 3600
        // Every client here shares this machine's cores: more clients holding a model than can
        // train at once only costs memory (a model and its buffers each), not time.
        coordinator.maximumTasksInFlight = 4 * c.effectiveThreads
        coordinator.localEpochs = c.localEpochs
        coordinator.batchSize = c.batchSize
        coordinator.learningRate = Float(c.learningRate)
        coordinator.uplinkCodec = c.codec
        coordinator.downlinkCodec = c.downlink
        coordinator.serverOptimizer = try c.serverOptimizerSettings()
        coordinator.aggregation = c.aggregation
        coordinator.pruning = try c.pruning?.resolved(rounds: c.rounds)
        coordinator.baseModelPath = c.baseModel
        coordinator.seed = c.seed
        // FedDF on the server's held-out examples, all of them.
        coordinator.ensemble = c.ensemble
        if c.ensemble.enabled, let serverData {
            coordinator.trustedDataPath = "(the held-out examples)"
            coordinator.trustedExamples = serverData.count
        }
        let ids = (0..<c.clients).map { String(format: "client-%06d", $0) }
        // Each simulated device gets its own key pair, derived from the seed.
        let secrets = try ids.indices.map { index -> String in
            var generator = SeededGenerator(seed: c.seed, stream: 0x5EC, UInt64(index))
            return try Authentication.secret(fromSeed: (0..<32).map { _ in UInt8(truncatingIfNeeded: generator.next()) })
        }
        for (id, secret) in zip(ids, secrets) { coordinator.clientKeys[id] = try Authentication.publicKey(ofSecret: secret) }
        var quiet = Logger(label: "fedsim.tcp")
        quiet.logLevel = .error
        let server = try Coordinator(configuration: coordinator, test: testData, trusted: c.ensemble.enabled ? serverData : nil, logger: quiet)
        let (ports, portContinuation) = AsyncStream.makeStream(of: Int.self)
        let commits = self.commits
        let run = Task { try await server.run(onBound: { portContinuation.yield($0) }, progress: { round in
            commits.record(round: round.round) {}
            progress(RoundRecord(round: round))
        }) }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw CancellationError() }
        // The daemons share one record of verified shards: each round's model is hashed once.
        let verifiedShards = VerifiedShards()
        let daemons = try takingPart.map { index in
            let id = ids[index]
            var client = ClientConfiguration(clientID: id, secret: secrets[index], data: DatasetSlice(dataset: trainData, indices: clientIndices[index]))
            client.memoryBudget = try memoryBudget(client: index)
            client.port = port
            client.seed = c.seed
            client.seedStream = UInt64(index)
            // A connect that fails while a thousand others queue up is retried; the daemons
            // end at the coordinator's GOODBYE (or are stopped below).
            client.reconnect = true
            client.initialBackoff = 0.05
            client.maximumBackoff = 1
            // Idle clients free their model to stay small, except that a model with frozen tensors
            // (adapters) is kept, so its base is downloaded once (as in the memory transport).
            client.retainModel = network.layout.tensors.contains { !$0.trainable }
            client.verifiedShards = verifiedShards
            return ClientDaemon(configuration: client, logger: quiet)
        }
        let clientTasks = daemons.map { daemon in Task { await daemon.run() } }
        let outcome = await run.result
        for daemon in daemons { await daemon.stop() }
        for task in clientTasks { await task.value }
        let history = try outcome.get()
        guard !widthClasses.isEmpty else { return reportOverTCP(history.map(RoundRecord.init(round:))) }
        // Each class's delivered updates, from who delivered them.
        var delivered = Array(repeating: 0, count: c.widths.count)
        let index = Dictionary(uniqueKeysWithValues: ids.enumerated().map { ($1, $0) })
        for round in history {
            for participation in round.participations where participation.state == .accepted {
                if let client = index[participation.client] { delivered[widthClasses[client]] += 1 }
            }
        }
        return reportOverTCP(history.map(RoundRecord.init(round:)), global: await server.global, widthUpdates: delivered)
    }
}

/// Raises this process's soft limit on open files (often 1,024) towards the hard limit.
func raiseOpenFileLimit(toAtLeast needed: Int) throws {
    var limit = rlimit()
    guard getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0 else { return }
    if limit.rlim_cur >= rlim_t(needed) { return }
    guard limit.rlim_max >= rlim_t(needed) else {
        throw ConfigurationError("transport tcp needs \(needed) open files but this system allows \(limit.rlim_max) (raise `ulimit -Hn` or use fewer clients)")
    }
    limit.rlim_cur = rlim_t(needed)
    guard setrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0 else {
        throw ConfigurationError("transport tcp needs \(needed) open files; setrlimit failed: \(String(cString: strerror(errno)))")
    }
}

#if canImport(Glibc)
private let RLIMIT_NOFILE_VALUE = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
#else
private let RLIMIT_NOFILE_VALUE = RLIMIT_NOFILE
#endif

extension RoundRecord {
    init(round r: CoordinatorRound) {
        self.init(
            round: r.round, testMetric: r.testMetric, testLoss: r.testLoss, trainLoss: r.trainingLoss,
            clients: r.completed, uplinkBytes: r.uplinkBytes, downlinkBytes: r.downlinkBytes, seconds: r.seconds,
            selected: r.selected, dropped: r.dropped, late: r.late)
        sparsity = r.sparsity
    }
}
