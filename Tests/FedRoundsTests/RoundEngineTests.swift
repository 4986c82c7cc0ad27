import FedCodec
import FedModel
import Testing
@testable import FedRounds

/// The round engine on its own: no sockets, no database, time passed in as numbers.
/// A 4-3-2 network (4 shards, 23 parameters) keeps every test in milliseconds.
struct RoundEngineTests {
    static let network = try! Network(ModelSpec(input: .vector(4), classes: 2, layers: [.dense(outputs: 3), .relu, .dense(outputs: 2)]))

    static func engine(
        clients: Int = 4, perRound: Int = 2, selection: Int? = nil, rounds: Int = 3, quorum: Int = 1,
        deadline: Double = 10, codec: CodecSpec = CodecSpec(codec: .fp32, zlibLevel: nil),
        configure: (inout RoundEngine.Settings) -> Void = { _ in }
    ) -> RoundEngine {
        var settings = RoundEngine.Settings(rounds: rounds, clientsPerRound: perRound, selectionSize: selection)
        settings.minimumUpdates = quorum
        settings.minimumClients = clients
        settings.roundDeadline = deadline
        settings.uplink = codec
        configure(&settings)
        var engine = RoundEngine(settings: settings, network: network, initial: network.initialParameters(seed: 1))
        for i in 0..<clients { engine.clientJoined("c\(i)", at: 0) }
        return engine
    }

    /// An update of `value` in every weight, encoded with `codec`.
    static func update(for task: RoundEngine.Task, value: Float = 0.01, examples: Int = 10, loss: Double = 0.5,
                       codec: CodecSpec = CodecSpec(codec: .fp32, zlibLevel: nil)) -> RoundEngine.IncomingUpdate {
        let ranges = network.layout.tensors.map(\.range)
        var generator = SeededGenerator(seed: 1)
        let all = try! UpdateCodec(spec: codec, shardRanges: ranges).encode([Float](repeating: value, count: network.parameterCount), generator: &generator)
        let shards = task.shards.map(Int.init)
        let encoded = shards.map { all[$0] }
        return RoundEngine.IncomingUpdate(
            round: task.round, modelVersion: task.modelVersion, exampleCount: examples, trainingLoss: loss,
            shards: shards, body: .encoded(encoded), bytes: encoded.reduce(0) { $0 + $1.count })
    }

    static func tasks(_ actions: [RoundEngine.Action]) -> [(String, RoundEngine.Task)] {
        actions.compactMap { if case .sendTask(let id, let task) = $0 { (id, task) } else { nil } }
    }

    static func refusal(_ actions: [RoundEngine.Action]) -> Refusal.Code? {
        for action in actions { if case .refuse(_, let refusal) = action { return refusal.code } }
        for action in actions { if case .disconnect(_, let refusal) = action { return refusal.code } }
        return nil
    }

    @Test func roundWaitsForEnoughClients() {
        var engine = Self.engine(clients: 2)
        #expect(engine.canBeginRound)
        engine.clientLeft("c1", at: 1)
        #expect(!engine.canBeginRound, "one of two required clients")
    }

    @Test func aRoundCollectsItsUpdatesAndAppliesTheMean() throws {
        var engine = Self.engine()
        let before = engine.global
        let tasks = Self.tasks(engine.beginRound(at: 0))
        #expect(tasks.count == 2)
        #expect(tasks.allSatisfy { $0.1.shardsToSend == [0, 1, 2, 3] }, "a new client is sent every shard")
        #expect(!engine.isReadyToClose(at: 1))
        for (id, task) in tasks {
            #expect(engine.updateArrived(Self.update(for: task, value: 0.5), from: id, at: 1) == [.acknowledge(client: id, round: 1)])
        }
        #expect(engine.isReadyToClose(at: 1))
        guard case .completed(let record) = try engine.closeRound(at: 1) else { Issue.record("round not completed"); return }
        #expect(record.completed == 2 && record.selected == 2 && record.refused == 0)
        #expect(record.participations.map(\.state) == [.accepted, .accepted])
        #expect(engine.modelVersion == 1 && engine.nextRound == 2)
        for (a, b) in zip(engine.global, before) { #expect(abs(a - (b + 0.5)) < 1e-6) }
    }

    @Test func belowQuorumAtTheDeadlineTheRoundIsAbandonedAndDrawnAgain() throws {
        var engine = Self.engine(clients: 6, perRound: 3, quorum: 2)
        let first = Self.tasks(engine.beginRound(at: 0))
        _ = engine.updateArrived(Self.update(for: first[0].1), from: first[0].0, at: 1)
        #expect(!engine.isReadyToClose(at: 9.9))
        #expect(engine.isReadyToClose(at: 10), "the deadline passed")
        #expect(try engine.closeRound(at: 10) == .abandoned(round: 1, updates: 1, quorum: 2))
        #expect(engine.modelVersion == 0 && engine.nextRound == 1, "nothing applied")
        let second = Self.tasks(engine.beginRound(at: 11))
        #expect(second.first?.1.round == 1)
        #expect(second.map(\.0) != first.map(\.0), "a retry draws again (attempt 1)")
        for (id, task) in second { _ = engine.updateArrived(Self.update(for: task), from: id, at: 12) }
        guard case .completed(let record) = try engine.closeRound(at: 12) else { Issue.record("retry not completed"); return }
        #expect(record.abandonedAttempts == 1)
    }

    @Test func overSelectionTakesTheFirstArrivalsAndTheRestAreLate() throws {
        var engine = Self.engine(clients: 5, perRound: 2, selection: 3)
        let tasks = Self.tasks(engine.beginRound(at: 0))
        #expect(tasks.count == 3)
        _ = engine.updateArrived(Self.update(for: tasks[0].1), from: tasks[0].0, at: 1)
        _ = engine.updateArrived(Self.update(for: tasks[1].1), from: tasks[1].0, at: 2)
        #expect(engine.isReadyToClose(at: 2))
        #expect(Self.refusal(engine.updateArrived(Self.update(for: tasks[2].1), from: tasks[2].0, at: 3)) == .lateUpdate)
        guard case .completed(let record) = try engine.closeRound(at: 3) else { Issue.record("not completed"); return }
        #expect(record.completed == 2 && record.late == 1 && record.refused == 0)
        #expect(record.participations.last?.state == .late)
    }

    @Test func anUpdateAfterTheDeadlineIsLate() {
        var engine = Self.engine()
        let tasks = Self.tasks(engine.beginRound(at: 0))
        #expect(Self.refusal(engine.updateArrived(Self.update(for: tasks[0].1), from: tasks[0].0, at: 10.5)) == .lateUpdate)
    }

    @Test func staleUnselectedAndDuplicateUpdatesAreRefused() {
        var engine = Self.engine(clients: 4, perRound: 2, selection: 2)
        let tasks = Self.tasks(engine.beginRound(at: 0))
        let (id, task) = tasks[0]
        var stale = task
        stale.round = 0
        // A stale update is refused from its header, whatever its body.
        var garbage = Self.update(for: stale)
        garbage.body = .encoded(garbage.shards.map { _ in [1, 2, 3] })
        #expect(Self.refusal(engine.updateArrived(garbage, from: id, at: 1)) == .staleRound)
        var oldVersion = task
        oldVersion.modelVersion = 7
        #expect(Self.refusal(engine.updateArrived(Self.update(for: oldVersion), from: id, at: 1)) == .staleRound)
        let outsider = ["c0", "c1", "c2", "c3"].first { name in !tasks.contains { $0.0 == name } }!
        #expect(Self.refusal(engine.updateArrived(Self.update(for: task), from: outsider, at: 1)) == .unexpectedMessage)
        #expect(engine.updateArrived(Self.update(for: task), from: id, at: 1) == [.acknowledge(client: id, round: 1)])
        #expect(Self.refusal(engine.updateArrived(Self.update(for: task), from: id, at: 1)) == .unexpectedMessage, "duplicate")
    }

    @Test(arguments: ["fp16", "q8"]) func anUpdateInAnotherCodecIsRefusedBeforeDecoding(_ other: String) throws {
        var engine = Self.engine(codec: try CodecSpec(parsing: "q4"))
        let (id, task) = Self.tasks(engine.beginRound(at: 0))[0]
        #expect(Self.refusal(engine.updateArrived(Self.update(for: task, codec: try CodecSpec(parsing: other)), from: id, at: 1)) == .badUpdate)
        #expect(engine.updateArrived(Self.update(for: task, codec: try CodecSpec(parsing: "q4")), from: id, at: 1) == [.acknowledge(client: id, round: 1)])
    }

    /// An UPDATE must follow its task's spec (Protocol.md §8): value codec, sparse exactly with
    /// top-k and at most ⌈F·n⌉ values, group size, stochastic flag only with sr, no zlib with raw.
    @Test(arguments: ["q8+g4+raw", "topk:0.5+q8+raw", "topk:0.5+q8+g4+sr+raw", "topk:0.75+q8+g4+raw", "topk:0.5+fp32+raw", "topk:0.5+q8+g4+z9"])
    func anUpdateThatDoesNotFollowTheTaskSpecIsRefused(_ other: String) throws {
        let spec = try CodecSpec(parsing: "topk:0.5+q8+g4+raw")
        var engine = Self.engine(codec: spec)
        let (id, task) = Self.tasks(engine.beginRound(at: 0))[0]
        var update = Self.update(for: task, codec: try CodecSpec(parsing: other))
        if other.hasSuffix("z9"), case .encoded(var shards) = update.body {
            // A raw task's shard with the zlib flag set (whatever the body): refused on the header.
            shards[0][4] |= 1
            update.body = .encoded(shards)
        }
        #expect(Self.refusal(engine.updateArrived(update, from: id, at: 1)) == .badUpdate, "\(other)")
        // Fewer values than top-k allows is fine.
        #expect(engine.updateArrived(Self.update(for: task, codec: try CodecSpec(parsing: "topk:0.25+q8+g4+raw")), from: id, at: 1) == [.acknowledge(client: id, round: 1)])
    }

    /// `lowrank:1`: each task carries the warm start of every factored weight matrix, an update
    /// must send those shards as rank-1 factors (the biases whole), a rank-1 delta lands
    /// exactly, and the next round's warm starts follow the applied update.
    @Test func lowRankTasksCarryWarmStartsAndUpdatesMustBeFactors() throws {
        let spec = try CodecSpec(parsing: "lowrank:1+fp32+raw")
        var engine = Self.engine(codec: spec)
        #expect(engine.factorShapes.map { $0?.rank } == [1, nil, 1, nil])
        let tasks = Self.tasks(engine.beginRound(at: 0))
        #expect(tasks.allSatisfy { Set($0.1.warmStarts.keys) == [0, 2] && $0.1.warmStarts[0]!.count == 3 && $0.1.warmStarts[2]!.count == 2 })
        let layout = Self.network.layout
        let codec = UpdateCodec(spec: spec, shardRanges: layout.tensors.map(\.range), columns: layout.tensors.map(\.columns))
        // A rank-1 delta in each weight matrix (u·vᵀ), 0.1 in each bias.
        var delta = [Float](repeating: 0.1, count: Self.network.parameterCount)
        for tensor in layout.tensors where tensor.columns != nil {
            let columns = tensor.columns!
            for i in 0..<(tensor.count / columns) { for j in 0..<columns { delta[tensor.offset + i * columns + j] = Float(i + 1) * 0.01 * Float(j % 2 == 0 ? 1 : -2) } }
        }
        let before = engine.global
        let warm = tasks[0].1.warmStarts
        for (id, task) in tasks {
            // The whole shards the codec would send without low rank: refused on the header.
            #expect(Self.refusal(engine.updateArrived(Self.update(for: task, codec: try CodecSpec(parsing: "fp32+raw")), from: id, at: 1)) == .badUpdate)
            var generator = SeededGenerator(seed: 1)
            let encoded = try codec.encode(delta, warmStarts: layout.tensors.map { task.warmStarts[$0.index] }, generator: &generator)
            #expect(encoded[0][5] == 4 && encoded[1][5] == 0, "factors for the weights, the bias whole")
            let update = RoundEngine.IncomingUpdate(round: task.round, modelVersion: task.modelVersion, exampleCount: 10, trainingLoss: 0.5,
                                                    shards: [0, 1, 2, 3], body: .encoded(encoded), bytes: 0)
            #expect(engine.updateArrived(update, from: id, at: 1) == [.acknowledge(client: id, round: 1)])
        }
        guard case .completed = try engine.closeRound(at: 1) else { Issue.record("round not completed"); return }
        for i in delta.indices { #expect(abs(engine.global[i] - (before[i] + delta[i])) < 1e-5) }
        #expect(engine.warmStarts[0] != warm[0] && engine.warmStarts[2] != warm[2])
        let next = Self.tasks(engine.beginRound(at: 2))
        #expect(next.allSatisfy { $0.1.warmStarts == engine.warmStarts })
        // The warm start now spans the update's right factor: v ∝ (1, −2, 1) for the first layer.
        let q = engine.warmStarts[0]!
        #expect(abs(abs(q[1] / q[0]) - 2) < 1e-4 && abs(q[2] / q[0] - 1) < 1e-4)
        // A coordinator restarting from this checkpoint follows the same warm starts from the
        // model before it.
        var settings = engine.settings
        settings.minimumClients = 4
        var resumed = RoundEngine(settings: settings, network: Self.network, initial: engine.global,
                                  resume: (round: 1, modelVersion: 1, optimizer: engine.optimizer, ledger: engine.ledger))
        #expect(resumed.warmStarts != engine.warmStarts, "drawn from the seed")
        resumed.followWarmStarts(from: before)
        #expect(resumed.warmStarts == engine.warmStarts)
    }

    @Test func malformedAndNonFiniteUpdatesAreRefusedWithoutTakingAPlace() {
        var engine = Self.engine()
        let (id, task) = Self.tasks(engine.beginRound(at: 0))[0]
        #expect(Self.refusal(engine.updateArrived(Self.update(for: task, loss: .nan), from: id, at: 1)) == .badUpdate)
        #expect(Self.refusal(engine.updateArrived(Self.update(for: task, examples: 0), from: id, at: 1)) == .badUpdate)
        var truncated = Self.update(for: task)
        if case .encoded(var shards) = truncated.body { shards[0].removeLast(); truncated.body = .encoded(shards) }
        #expect(Self.refusal(engine.updateArrived(truncated, from: id, at: 1)) == .badUpdate)
        var decoded = Self.update(for: task)
        decoded.body = .decoded([Float](repeating: .infinity, count: Self.network.parameterCount))
        #expect(Self.refusal(engine.updateArrived(decoded, from: id, at: 1)) == .badUpdate)
        #expect(engine.updateArrived(Self.update(for: task), from: id, at: 1) == [.acknowledge(client: id, round: 1)], "refusals took no place")
    }

    @Test func aClientRevokedMidRoundIsDisconnectedAndItsUpdateRefused() throws {
        var engine = Self.engine(clients: 3, perRound: 2)
        let tasks = Self.tasks(engine.beginRound(at: 0))
        let (id, task) = tasks[0]
        let actions = engine.revoke([id], at: 1)
        #expect(actions == [.disconnect(client: id, Refusal(.authenticationFailed, "client \"\(id)\" has been revoked"))])
        #expect(!engine.isConnected(id))
        #expect(Self.refusal(engine.updateArrived(Self.update(for: task), from: id, at: 2)) == .authenticationFailed)
        _ = engine.updateArrived(Self.update(for: tasks[1].1), from: tasks[1].0, at: 2)
        #expect(engine.isReadyToClose(at: 2), "the revoked client counts as gone")
        guard case .completed(let record) = try engine.closeRound(at: 2) else { Issue.record("not completed"); return }
        #expect(record.dropped == 1 && record.completed == 1)
        engine.clientJoined(id, at: 3)
        let next = Self.tasks(engine.beginRound(at: 3))
        #expect(!next.contains { $0.0 == id }, "a revoked client is never selected")
    }

    @Test func aClientLeavingMidRoundIsDroppedAndTheRoundClosesWithoutWaiting() throws {
        var engine = Self.engine(clients: 2, perRound: 2)
        let tasks = Self.tasks(engine.beginRound(at: 0))
        _ = engine.updateArrived(Self.update(for: tasks[0].1), from: tasks[0].0, at: 1)
        engine.clientLeft(tasks[1].0, at: 2)
        #expect(engine.isReadyToClose(at: 2))
        guard case .completed(let record) = try engine.closeRound(at: 2) else { Issue.record("not completed"); return }
        #expect(record.dropped == 1 && record.participations.map(\.state) == [.accepted, .dropped])
    }

    @Test func aClientThatMissedADeadlineIsNotSelectedUntilItIsHeardFrom() throws {
        var engine = Self.engine(clients: 3, perRound: 3, quorum: 2) { $0.skipClientsThatMissedADeadline = true }
        let first = Self.tasks(engine.beginRound(at: 0))
        for (id, task) in first where id != "c0" { _ = engine.updateArrived(Self.update(for: task), from: id, at: 1) }
        // c0 is frozen: the round waits for its deadline and closes with two updates.
        #expect(!engine.isReadyToClose(at: 5) && engine.isReadyToClose(at: 10))
        guard case .completed = try engine.closeRound(at: 10) else { Issue.record("round 1 not completed"); return }
        #expect(Self.tasks(engine.beginRound(at: 11)).map(\.0).sorted() == ["c1", "c2"], "the frozen client is left out")
        engine.abandonRound()
        let heard = engine.clientHeard("c0", at: 12)
        #expect(heard, "a heartbeat echo after the deadline")
        #expect(Self.tasks(engine.beginRound(at: 13)).count == 3)
    }

    @Test func aClientThatReconnectsMidRoundCountsAsDroppedAtOnce() throws {
        var engine = Self.engine(clients: 3, perRound: 3, quorum: 2)
        let tasks = Self.tasks(engine.beginRound(at: 0))
        _ = engine.updateArrived(Self.update(for: tasks[0].1), from: tasks[0].0, at: 1)
        _ = engine.updateArrived(Self.update(for: tasks[1].1), from: tasks[1].0, at: 1)
        // The third crashed and came back: its task is lost with its old connection.
        engine.clientLeft(tasks[2].0, at: 2)
        engine.clientJoined(tasks[2].0, at: 2)
        #expect(engine.isReadyToClose(at: 2), "no wait for the deadline")
        guard case .completed(let record) = try engine.closeRound(at: 2) else { Issue.record("not completed"); return }
        #expect(record.dropped == 1)
    }

    @Test func aSmallMemoryBudgetTrainsOnlySomeShardsAndOthersAreRefused() {
        var engine = Self.engine(clients: 0, perRound: 1) { $0.minimumClients = 1 }
        // 23 parameters held (92 bytes) plus 12 bytes per trained parameter: 92 + 12 × 6 fits
        // the second layer's weights (6), not the first's (12).
        engine.clientJoined("small", memoryBudget: 92 + 12 * 6, at: 0)
        let (id, task) = Self.tasks(engine.beginRound(at: 0))[0]
        #expect(task.shards == [2])
        #expect(task.shardsToSend == [0, 1, 2, 3], "a forward pass needs every shard")
        var other = task
        other.shards = [0]
        #expect(Self.refusal(engine.updateArrived(Self.update(for: other), from: id, at: 1)) == .badUpdate)
        #expect(engine.updateArrived(Self.update(for: task), from: id, at: 1) == [.acknowledge(client: id, round: 1)])
    }

    @Test func shardsHeldAtTheCurrentVersionAreNotSentAgainUntilAnUpdate() throws {
        var engine = Self.engine(clients: 2, perRound: 1, quorum: 1)
        let first = Self.tasks(engine.beginRound(at: 0))[0]
        #expect(try engine.closeRound(at: 10) == .abandoned(round: 1, updates: 0, quorum: 1))
        // Same version: whoever was sent the model already holds it.
        let retry = Self.tasks(engine.beginRound(at: 11))[0]
        #expect(retry.1.shardsToSend == (retry.0 == first.0 ? [] : [0, 1, 2, 3]))
        _ = engine.updateArrived(Self.update(for: retry.1), from: retry.0, at: 12)
        _ = try engine.closeRound(at: 12)
        #expect(Self.tasks(engine.beginRound(at: 13)).allSatisfy { $0.1.shardsToSend == [0, 1, 2, 3] })
    }

    @Test func selectionIsTheSharedSeededDraw() {
        var engine = Self.engine(clients: 10, perRound: 3)
        let chosen = Self.tasks(engine.beginRound(at: 0)).map(\.0)
        let ids = (0..<10).map { "c\($0)" }.sorted()
        #expect(chosen == ClientSelection.draw(from: ids, count: 3, seed: 1, round: 1))
        #expect(ClientSelection.draw(from: ids, count: 3, seed: 1, round: 1) != ClientSelection.draw(from: ids, count: 3, seed: 1, round: 2))
    }

    @Test func resumingContinuesAfterTheCheckpoint() throws {
        let model = [Float](repeating: 0.25, count: Self.network.parameterCount)
        var settings = RoundEngine.Settings(rounds: 5, clientsPerRound: 1)
        settings.roundDeadline = 10
        var engine = RoundEngine(
            settings: settings, network: Self.network, initial: model,
            resume: (round: 3, modelVersion: 3, optimizer: ServerOptimizer(settings: .init(), parameterCount: model.count),
                     ledger: TrustLedger(records: ["c0": .init(trust: 0.4, updates: 2)])))
        engine.clientJoined("c0", at: 0)
        let (id, task) = Self.tasks(engine.beginRound(at: 0))[0]
        #expect(task.round == 4 && task.modelVersion == 3)
        _ = engine.updateArrived(Self.update(for: task), from: id, at: 1)
        guard case .completed(let record) = try engine.closeRound(at: 1) else { Issue.record("not completed"); return }
        #expect(record.round == 4 && record.modelVersion == 4)
        #expect(engine.ledger.records["c0"]?.updates == 2, "FedAvg leaves the ledger as it was")
    }

    @Test func theRunFinishesAfterItsRoundsOrAtTheTarget() throws {
        var engine = Self.engine(clients: 1, perRound: 1, rounds: 2)
        for _ in 0..<2 {
            let (id, task) = Self.tasks(engine.beginRound(at: 0))[0]
            _ = engine.updateArrived(Self.update(for: task), from: id, at: 1)
            _ = try engine.closeRound(at: 1)
        }
        #expect(engine.isFinished && !engine.canBeginRound)

        var settings = RoundEngine.Settings(rounds: 10, clientsPerRound: 1)
        settings.targetMetric = 0.5
        var target = RoundEngine(settings: settings, network: Self.network, initial: Self.network.initialParameters(seed: 1)) { _ in (0.6, 1) }
        target.clientJoined("c0", at: 0)
        let (id, task) = Self.tasks(target.beginRound(at: 0))[0]
        _ = target.updateArrived(Self.update(for: task), from: id, at: 1)
        _ = try target.closeRound(at: 1)
        #expect(target.isFinished)
    }

    @Test func theNormBoundClipsAnOutlierAndSaysSo() throws {
        var engine = Self.engine(clients: 5, perRound: 5) { $0.aggregation.normBound = 1.5 }
        let tasks = Self.tasks(engine.beginRound(at: 0))
        for (i, (id, task)) in tasks.enumerated() {
            _ = engine.updateArrived(Self.update(for: task, value: i == 0 ? 100 : 0.01), from: id, at: 1)
        }
        let before = engine.global
        guard case .completed(let record) = try engine.closeRound(at: 1) else { Issue.record("not completed"); return }
        #expect(record.notices.map(\.kind) == [.clipped])
        #expect(record.notices.first?.client == tasks[0].0)
        let change = zip(engine.global, before).map { abs($0 - $1) }.max() ?? 0
        #expect(change < 0.05, "the outlier was clipped to 1.5 × the median norm, moved \(change)")
    }

    @Test(arguments: [AggregationSettings.Rule.median, .multiKrum])
    func aRobustRuleKeepsOneHugeUpdateOut(rule: AggregationSettings.Rule) throws {
        var engine = Self.engine(clients: 5, perRound: 5) { $0.aggregation.rule = rule; $0.aggregation.byzantine = 1 }
        let tasks = Self.tasks(engine.beginRound(at: 0))
        for (i, (id, task)) in tasks.enumerated() {
            #expect(engine.updateArrived(Self.update(for: task, value: i == 2 ? 5 : 0.01), from: id, at: 1) == [.acknowledge(client: id, round: 1)],
                    "a huge but finite update is admitted on the wire")
        }
        let before = engine.global
        _ = try engine.closeRound(at: 1)
        let change = zip(engine.global, before).map { abs($0 - $1) }.max() ?? 0
        #expect(change < 0.02, "\(rule): the model moved \(change)")
    }

    @Test func aHugeFiniteUpdateIsRejectedThenBoundedAndNeverCommitted() throws {
        // Loss of a model: its mean |w| (the initial model's is about 0.3).
        var settings = RoundEngine.Settings(rounds: 3, clientsPerRound: 4)
        settings.roundDeadline = 10
        settings.updateBound = 10
        settings.lossGuard = 10
        let start = Self.network.initialParameters(seed: 1)
        var engine = RoundEngine(settings: settings, network: Self.network, initial: start) { model in
            (0, Double(model.reduce(0) { $0 + abs($1) }) / Double(model.count))
        }
        for i in 0..<4 { engine.clientJoined("c\(i)", at: 0) }
        func round(at time: Double) throws -> RoundClosing {
            for (i, (id, task)) in Self.tasks(engine.beginRound(at: time)).enumerated() {
                _ = engine.updateArrived(Self.update(for: task, value: id == "c0" ? 1e30 : 0.001 * Float(i + 1)), from: id, at: time + 1)
            }
            return try engine.closeRound(at: time + 1)
        }
        guard case .rejected(let number, let reason) = try round(at: 0) else { Issue.record("the poisoned round was committed"); return }
        #expect(number == 1 && reason.contains("loss"), "\(reason)")
        #expect(engine.global == start && engine.modelVersion == 0, "the previous model is kept")
        // The retry bounds the same attacker against the rejected round's median norm.
        guard case .completed(let record) = try round(at: 5) else { Issue.record("the retry was not committed"); return }
        #expect(record.round == 1 && record.notices.contains { $0.kind == .bounded && $0.client == "c0" })
        #expect(engine.global.allSatisfy { $0.isFinite && abs($0) < 2 })
        guard case .completed = try round(at: 10) else { Issue.record("round 2 was not committed"); return }
    }

    @Test func withoutAnEvaluatorANonFiniteModelIsStillRejected() throws {
        var settings = RoundEngine.Settings(rounds: 1, clientsPerRound: 2)
        settings.roundDeadline = 10
        settings.updateBound = 10
        var engine = RoundEngine(settings: settings, network: Self.network, initial: Self.network.initialParameters(seed: 1))
        for i in 0..<2 { engine.clientJoined("c\(i)", at: 0) }
        for (id, task) in Self.tasks(engine.beginRound(at: 0)) {
            _ = engine.updateArrived(Self.update(for: task, value: 3e38, examples: 1_000_000), from: id, at: 1)
        }
        guard case .rejected(_, let reason) = try engine.closeRound(at: 1) else { Issue.record("a non-finite model was committed"); return }
        #expect(reason.contains("non-finite"))
    }

    @Test func theTrustRuleNeedsDirectionsAndRecordsItsLedger() throws {
        // With the trust rule every aggregated client gets a ledger record, committed with the round.
        let data = try Dataset(name: "toy", sampleShape: .vector(4), classes: 2,
                               features: (0..<40).map { Float($0 % 7) / 7 }, labels: (0..<10).map { Int32($0 % 2) })
        let trusted = try TrustedDirections(network: Self.network, data: data.all)
        var settings = RoundEngine.Settings(rounds: 2, clientsPerRound: 3)
        settings.aggregation = AggregationSettings(rule: .trust)
        settings.roundDeadline = 10
        var engine = RoundEngine(settings: settings, network: Self.network, initial: Self.network.initialParameters(seed: 1), trusted: trusted)
        for i in 0..<3 { engine.clientJoined("c\(i)", at: 0) }
        for (id, task) in Self.tasks(engine.beginRound(at: 0)) {
            _ = engine.updateArrived(Self.update(for: task), from: id, at: 1)
        }
        guard case .completed(let record) = try engine.closeRound(at: 1) else { Issue.record("not completed"); return }
        #expect(Set(record.trust.keys) == ["c0", "c1", "c2"])
        #expect(record.trust.values.allSatisfy { $0.updates == 1 })
    }

    @Test func addingInSelectionOrderGivesTheSameModelWhateverTheArrivalOrder() throws {
        func run(_ order: [Int]) throws -> [Float] {
            var engine = Self.engine(clients: 3, perRound: 3) { $0.addInSelectionOrder = true }
            let tasks = Self.tasks(engine.beginRound(at: 0))
            for (t, i) in order.enumerated() {
                _ = engine.updateArrived(Self.update(for: tasks[i].1, value: [0.1, 0.0003, 7][i], examples: [3, 5, 11][i]), from: tasks[i].0, at: Double(t))
            }
            _ = try engine.closeRound(at: 5)
            return engine.global
        }
        let reference = try run([0, 1, 2])
        #expect(try run([2, 0, 1]) == reference)
        #expect(try run([1, 2, 0]) == reference)
    }

    @Test func memoryBudgetChoosesShards() throws {
        let layout = try Network(.mnist2NN).layout  // shards: 157,000 / 200 / 40,000 / 200 / 2,000 / 10 values
        let model = UInt64(layout.parameterCount * 4)
        #expect(ClientSelection.shardsToTrain(layout: layout, memoryBudget: 0) == [0, 1, 2, 3, 4, 5])
        #expect(ClientSelection.shardsToTrain(layout: layout, memoryBudget: 1) == [5], "nothing fits: the smallest shard")
        #expect(ClientSelection.shardsToTrain(layout: layout, memoryBudget: model + 12 * 40_000) == [2])
        #expect(ClientSelection.shardsToTrain(layout: layout, memoryBudget: model + 12 * 42_410) == [1, 2, 3, 4, 5])
        #expect(ClientSelection.shardsToTrain(layout: layout, memoryBudget: model * 10) == [0, 1, 2, 3, 4, 5])
    }

    @Test func pruningZeroesTheModelOnScheduleAndUpdatesCountOnlyOnKeptWeights() throws {
        var engine = Self.engine(clients: 2, perRound: 2, rounds: 3) {
            $0.pruning = PruningSchedule(sparsity: 0.5, startRound: 1, endRound: 2)
        }
        func runRound(_ round: Int, masked: Bool) throws -> RoundOutcome {
            let tasks = Self.tasks(engine.beginRound(at: Double(round)))
            for (id, task) in tasks {
                var update = Self.update(for: task, value: 0.5)
                if masked, let mask = engine.mask {
                    // Sparse over the mask, as a client that read the mask sends it.
                    var generator = SeededGenerator(seed: 1)
                    let all = try UpdateCodec(spec: CodecSpec(codec: .fp32, zlibLevel: nil), shardRanges: Self.network.layout.tensors.map(\.range))
                        .encode([Float](repeating: 0.5, count: Self.network.parameterCount), masks: mask.kept, generator: &generator)
                    update.body = .encoded(task.shards.map { all[Int($0)] })
                }
                #expect(engine.updateArrived(update, from: id, at: Double(round)) == [.acknowledge(client: id, round: round)])
            }
            guard case .completed(let record) = try engine.closeRound(at: Double(round)) else { throw Refusal(.badUpdate, "round \(round) not completed") }
            return record
        }
        #expect(try runRound(1, masked: false).sparsity == 0, "the first step is at the initial sparsity, 0")
        #expect(engine.mask?.isPruning != true)
        let second = try runRound(2, masked: false)
        let mask = try #require(engine.mask)
        #expect(abs(second.sparsity! - 0.5) < 0.05)
        let pruned = PruningMask(zerosOf: engine.global, layout: Self.network.layout)
        #expect(pruned == mask, "the pruned weights are exactly zero")
        // A dense update (an old client) touches pruned weights: they stay zero.
        _ = try runRound(3, masked: false)
        #expect(PruningMask(zerosOf: engine.global, layout: Self.network.layout) == mask)

        // A sparse update keeping more than the mask is refused.
        var again = Self.engine(clients: 1, perRound: 1, rounds: 3) { $0.pruning = PruningSchedule(sparsity: 0.5, startRound: 1, endRound: 1) }
        let (id, task) = Self.tasks(again.beginRound(at: 0))[0]
        _ = again.updateArrived(Self.update(for: task), from: id, at: 0)
        _ = try again.closeRound(at: 0)
        let (id2, task2) = Self.tasks(again.beginRound(at: 1))[0]
        let tooMany = Self.update(for: task2, codec: try CodecSpec(parsing: "topk:1+fp32+raw"))
        #expect(Self.refusal(again.updateArrived(tooMany, from: id2, at: 1)) == .badUpdate)
    }

    @Test func aResumedPrunedModelKeepsItsMask() throws {
        var model = Self.network.initialParameters(seed: 1)
        let mask = PruningMask(pruning: model, layout: Self.network.layout, to: 0.5, scope: .layer)
        mask.apply(to: &model, layout: Self.network.layout)
        var settings = RoundEngine.Settings(rounds: 5, clientsPerRound: 1)
        settings.pruning = PruningSchedule(sparsity: 0.5, startRound: 1, endRound: 2)
        let engine = RoundEngine(
            settings: settings, network: Self.network, initial: model,
            resume: (round: 3, modelVersion: 3, optimizer: ServerOptimizer(settings: .init(), parameterCount: model.count), ledger: TrustLedger()))
        #expect(engine.mask == mask)
    }
    /// A client that keeps its shards (HELLO's `keeps-shards`) is sent a frozen shard once; a
    /// client that frees its model after each update, or one that reconnects, gets every shard.
    @Test func keptShardsThatDidNotChangeAreNotSentAgain() throws {
        let adapted = try Network(ModelSpec(input: .vector(4), classes: 2, layers: [.adapted(.dense(outputs: 3), rank: 1), .relu, .adapted(.dense(outputs: 2), rank: 1)]))
        var settings = RoundEngine.Settings(rounds: 3, clientsPerRound: 2, selectionSize: nil)
        settings.minimumUpdates = 2
        settings.minimumClients = 2
        settings.roundDeadline = 10
        settings.uplink = CodecSpec(codec: .fp32, zlibLevel: nil)
        var engine = RoundEngine(settings: settings, network: adapted, initial: adapted.initialParameters(seed: 1))
        engine.clientJoined("keeps", keepsShards: true, at: 0)
        engine.clientJoined("frees", at: 0)
        let ranges = adapted.layout.tensors.map(\.range)
        func runRound(at time: Double) throws -> [String: [Int]] {
            let tasks = Self.tasks(engine.beginRound(at: time))
            for (id, task) in tasks {
                #expect(task.shards == [2, 3, 6, 7], "only the adapters are trained")
                var generator = SeededGenerator(seed: 1)
                let all = try UpdateCodec(spec: settings.uplink, shardRanges: ranges).encode([Float](repeating: 0.01, count: adapted.parameterCount), generator: &generator)
                let update = RoundEngine.IncomingUpdate(round: task.round, modelVersion: task.modelVersion, exampleCount: 10, trainingLoss: 0.5,
                                                        shards: task.shards.map(Int.init), body: .encoded(task.shards.map { all[Int($0)] }), bytes: 0)
                _ = engine.updateArrived(update, from: id, at: time + 1)
            }
            guard case .completed = try engine.closeRound(at: time + 2) else { throw RoundEngineTestFailure("round not completed") }
            return Dictionary(uniqueKeysWithValues: tasks.map { ($0.0, $0.1.shardsToSend) })
        }
        let frozen = adapted.layout.tensors.filter { !$0.trainable }.map(\.range)
        let base = frozen.map { Array(engine.global[$0]) }
        #expect(try runRound(at: 0) == ["keeps": Array(0..<8), "frees": Array(0..<8)])
        #expect(frozen.map { Array(engine.global[$0]) } == base, "an update to a frozen shard would be refused")
        #expect(try runRound(at: 10) == ["keeps": [2, 3, 6, 7], "frees": Array(0..<8)])
        engine.clientJoined("keeps", keepsShards: true, at: 20)
        #expect(try runRound(at: 20) == ["keeps": Array(0..<8), "frees": Array(0..<8)], "a new connection holds nothing")
    }
}

/// Width classes in the engine: a client's memory budget picks its width, its task and update
/// are over its sub-model's layout, and each weight is averaged over the clients that hold it.
@Suite struct WidthClassEngineTests {
    @Test func budgetsPickWidthsAndEachWeightIsAveragedOverItsHolders() throws {
        let network = RoundEngineTests.network
        var settings = RoundEngine.Settings(rounds: 2, clientsPerRound: 2)
        settings.minimumUpdates = 2
        settings.minimumClients = 2
        settings.uplink = CodecSpec(codec: .fp32, zlibLevel: nil)
        settings.widths = [1, 0.5]
        var engine = RoundEngine(settings: settings, network: network, initial: network.initialParameters(seed: 1))
        #expect(engine.widths == [0.5, 1])
        let half = try #require(engine.subModels[0])
        engine.clientJoined("small", memoryBudget: UInt64(16 * half.network.parameterCount), at: 0)
        engine.clientJoined("large", memoryBudget: 0, at: 0)
        engine.clientJoined("tiny", memoryBudget: 1, at: 0)
        #expect(engine.width(of: "small") == 0.5 && engine.width(of: "large") == 1 && engine.width(of: "tiny") == 0.5)
        #expect(engine.subModel(of: "large") == nil && engine.subModel(of: "small")?.network.parameterCount == half.network.parameterCount)
        engine.clientLeft("tiny", at: 0)

        let before = engine.global
        let tasks = RoundEngineTests.tasks(engine.beginRound(at: 0))
        #expect(tasks.count == 2 && tasks.allSatisfy { $0.1.shards == [0, 1, 2, 3] && $0.1.shardsToSend == [0, 1, 2, 3] })
        func update(_ task: RoundEngine.Task, value: Float, over layout: ParameterLayout) throws -> RoundEngine.IncomingUpdate {
            var generator = SeededGenerator(seed: 1)
            let encoded = try UpdateCodec(spec: settings.uplink, shardRanges: layout.tensors.map(\.range))
                .encode([Float](repeating: value, count: layout.parameterCount), generator: &generator)
            return RoundEngine.IncomingUpdate(round: task.round, modelVersion: task.modelVersion, exampleCount: 10, trainingLoss: 0.5,
                                              shards: [0, 1, 2, 3], body: .encoded(encoded), bytes: 0)
        }
        let small = tasks.first { $0.0 == "small" }!.1
        // An update over the whole model from the half-width client does not fit its layout.
        #expect(RoundEngineTests.refusal(engine.updateArrived(try update(small, value: 1, over: network.layout), from: "small", at: 1)) == .badUpdate)
        engine.clientLeft("small", at: 1)
        engine.clientJoined("small", memoryBudget: UInt64(16 * half.network.parameterCount), at: 1)
        _ = try? engine.closeRound(at: 2)

        let retry = RoundEngineTests.tasks(engine.beginRound(at: 3))
        #expect(retry.count == 2)
        for (id, task) in retry {
            let u = try update(task, value: id == "small" ? 1 : 3, over: id == "small" ? half.network.layout : network.layout)
            #expect(RoundEngineTests.refusal(engine.updateArrived(u, from: id, at: 4)) == nil)
        }
        guard case .completed = try engine.closeRound(at: 5) else { throw RoundEngineTestFailure("round not completed") }
        let held = Set(half.positions.map(Int.init))
        for i in before.indices {
            let expected: Float = held.contains(i) ? 2 : 3   // (10·1 + 10·3) / 20, or the large client's alone
            #expect(abs((engine.global[i] - before[i]) - expected) < 1e-5, "place \(i)")
        }
    }
}

struct RoundEngineTestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
