import Foundation
import FedCodec
import FedModel

/// The server half of federated training, free of sockets, databases and clocks: the one place
/// where rounds are run, driven alike by the coordinator (real time, real connections) and by
/// fedsim's memory transport (a virtual clock).
///
/// It takes events with explicit times (a client joined or left, an update arrived, a deadline
/// passed) and answers with actions for its shell to perform (send a task, acknowledge, refuse,
/// disconnect). It owns the global model, its version and the server optimizer's state, client
/// selection and shard assignment, admission, quorum and retry, the aggregator with its trust
/// ledger and norm reference, evaluation, and the record of every round.
///
/// A round: ``beginRound(at:)`` selects clients and returns their tasks; updates come in with
/// ``updateArrived(_:from:at:)``; once ``isReadyToClose(at:)`` (all wanted updates, every
/// selected client reported or gone, or the deadline passed), ``closeRound(at:)`` applies the
/// aggregate (or abandons the attempt below quorum) and returns the record to commit.
public struct RoundEngine {
    /// What the engine needs to know about the run.
    public struct Settings: Sendable {
        /// Rounds to complete.
        public var rounds: Int
        /// Updates wanted per round.
        public var clientsPerRound: Int
        /// Clients selected per round (≥ `clientsPerRound` with over-selection).
        public var selectionSize: Int
        /// Fewest updates that make a round count (fewer: the round is abandoned and drawn again).
        public var minimumUpdates = 1
        /// Clients connected before a round begins.
        public var minimumClients = 1
        /// Seconds a round collects updates (on the engine's clock); 0 = no deadline.
        public var roundDeadline = 0.0
        public var localEpochs = 1
        public var batchSize = 10
        public var learningRate: Float = 0.1
        /// The codec clients encode their updates with.
        public var uplink = CodecSpec(codec: .fp32, zlibLevel: nil)
        public var seed: UInt64 = 1
        /// Stop once the test metric reaches this, in the metric's direction (0 = never).
        public var targetMetric = 0.0
        /// The task's headline metric (``Loss/metric``): what `evaluate` returns and which way
        /// the target is reached.
        public var metric = Metric.accuracy
        /// Evaluate after every this many rounds (and after the last).
        public var evaluateEvery = 1
        public var aggregation = AggregationSettings()
        public var serverOptimizer = ServerOptimizer.Settings()
        /// Default bound on what one update can do, without holding the round's updates: an
        /// update whose L2 norm exceeds this multiple of the median norm of the updates accepted
        /// in recent rounds is scaled down to it (0 = off). Before any round has been accepted
        /// there is no reference; the commit guard below covers that round.
        public var updateBound = 0.0
        /// Commit guard: a round whose new model holds a non-finite value, or whose test loss
        /// is non-finite or above this multiple of the previous model's, is rejected and the
        /// previous model kept (0 = only the finite check). A rejected round teaches the
        /// update bound its reference (the median norm of that round's updates).
        public var lossGuard = 0.0
        /// A client selected in a round that closed at its deadline without its update (frozen,
        /// or too slow) is not selected again until it is heard from after that deadline
        /// (``RoundEngine/clientHeard(_:at:)``), so one frozen device cannot make every round
        /// wait for its whole deadline.
        public var skipClientsThatMissedADeadline = false
        /// The order in which admitted updates are added: as they arrive (streamed, memory one
        /// model), or in selection order once the round closes (held encoded until then: what a
        /// simulation on a virtual clock needs to stay bit-for-bit reproducible).
        public var addInSelectionOrder = false
        /// Federated magnitude pruning (nil = none): the engine prunes the global model on this
        /// schedule, and ``RoundEngine/mask`` says what the shells send sparse.
        public var pruning: PruningSchedule?
        /// Device classes by width (HeteroFL, ``SubModel``): each client is given the largest of
        /// these widths whose training fits its memory budget
        /// (``ClientSelection/widthClass(memoryBudget:parameterCounts:)``), and trains that
        /// nested sub-model; each weight is averaged over the clients that hold it. Empty: every
        /// client holds the whole model (its budget picks the shards it trains).
        public var widths: [Double] = []

        public init(rounds: Int, clientsPerRound: Int, selectionSize: Int? = nil) {
            self.rounds = rounds
            self.clientsPerRound = clientsPerRound
            self.selectionSize = selectionSize ?? clientsPerRound
        }
    }

    /// A training task for one client.
    public struct Task: Sendable, Equatable {
        public var round: Int
        public var modelVersion: UInt32
        /// The shards the client trains.
        public var shards: [UInt16]
        /// The shards it must be sent first (it does not hold them at this version).
        public var shardsToSend: [Int]
        public var deadline: Double?
        /// Under a `lowrank:R` uplink: per trained shard coded as factors, its warm start
        /// (columns × r, orthonormal; ``LowRankFactors``). Empty otherwise.
        public var warmStarts: [Int: [Float]] = [:]
    }

    public enum Action: Sendable, Equatable {
        case sendTask(client: String, Task)
        case acknowledge(client: String, round: Int)
        case refuse(client: String, Refusal)
        /// Refuse and close the client's connection (a revoked client).
        case disconnect(client: String, Refusal)
    }

    /// An update as it arrived: its header, and its body encoded (one encoded shard per index in
    /// `shards`) or already decoded into a model-sized delta (fedsim's memory transport).
    public struct IncomingUpdate: Sendable {
        public enum Body: Sendable {
            case encoded([[UInt8]])
            case decoded([Float])
        }

        public var round: Int
        public var modelVersion: UInt32
        public var exampleCount: Int
        public var trainingLoss: Double
        public var shards: [Int]
        public var body: Body
        /// Bytes it took on the wire.
        public var bytes: Int
        /// The places of the model a width-scaled sub-model covers (``SubModel/positions``); nil
        /// for an update of whole shards. The delta is model-sized, zero elsewhere.
        public var positions: [Int32]?
        /// Set by the engine: the sender's width class, whose sub-model the body is encoded over.
        var widthClass: Int?

        public init(round: Int, modelVersion: UInt32, exampleCount: Int, trainingLoss: Double, shards: [Int], body: Body, bytes: Int) {
            self.round = round
            self.modelVersion = modelVersion
            self.exampleCount = exampleCount
            self.trainingLoss = trainingLoss
            self.shards = shards
            self.body = body
            self.bytes = bytes
        }
    }

    private struct Client {
        var trainedShards: [UInt16]
        var heldVersions: [UInt32?]
        /// Whether the client keeps the shards it was sent between rounds (HELLO's
        /// `keeps-shards`): then a shard whose values have not changed is not sent again.
        var keepsShards = false
        /// The client's width class (an index into the sorted widths), when there are classes.
        var widthClass: Int?
        /// Selected in the round in progress and not yet reported.
        var busy = false
        var taskSentAt: Double?
    }

    private struct RoundInProgress {
        var round: Int
        var modelVersion: UInt32
        var selected: [String]
        var selectionIndex: [String: Int]
        var reported: Set<String> = []
        var gone: Set<String> = []
        var deadline: Double?
        var closed = false
        var startedAt: Double
        var aggregator: UpdateAggregator
        /// Who each added update came from, in the aggregator's order.
        var aggregated: [String] = []
        /// Admitted updates waiting for the close, by selection index (with `addInSelectionOrder`).
        var held: [Int: (update: IncomingUpdate, client: String)] = [:]
        var lossSum = 0.0
        var examples = 0.0
        var uplinkBytes = 0
        var downlinkBytes = 0
        var refused = 0
        var participations: [RoundParticipation] = []
        /// Norms of the updates added, in the order added.
        var norms: [Double] = []
        var notices: [AggregationNotice] = []
        /// With ensemble distillation: the added clients' outputs on the server's examples.
        var teachers: EnsembleDistillation.Teachers?
    }

    public let settings: Settings
    public let layout: ParameterLayout
    public private(set) var global: [Float]
    public private(set) var modelVersion: UInt32
    public private(set) var optimizer: ServerOptimizer
    public private(set) var ledger: TrustLedger
    /// The round the next ``beginRound(at:)`` runs.
    public private(set) var nextRound: Int
    /// True once the last round is committed or the target reached.
    public private(set) var isFinished = false
    /// With pruning, the weights the global model keeps (its other weights are zero): shells
    /// send masked shards sparse over it, and updates count only there.
    public private(set) var mask: PruningMask?

    private let ranges: [Range<Int>]
    private let trusted: TrustedDirections?
    /// FedDF: the aggregate is distilled further from the round's client models on the
    /// server's examples (nil: plain aggregation).
    private let fusion: EnsembleDistillation?
    private let evaluate: (([Float]) -> (metric: Double, loss: Double))?
    private var referenceNorm: Double?
    private var clients: [String: Client] = [:]
    private var sortedIDs: [String]?
    private var revoked: Set<String> = []
    private var current: RoundInProgress?
    private var attempt = 0
    /// Clients that missed a deadline and have not been heard from since.
    private var missedDeadline: Set<String> = []
    /// Norms of the updates accepted in recent rounds (the update bound's reference).
    private var recentNorms: [Double] = []
    /// The test loss of the model the next round starts from (the commit guard's reference).
    private var previousLoss: Double?
    private var scratch: [Float]
    /// Per shard, the model version in which its values last changed (a frozen shard never
    /// changes after the start).
    private var changedAt: [UInt32]
    /// With width classes: the widths in ascending order and their sub-models (nil at width 1).
    public let widths: [Double]
    public let subModels: [SubModel?]
    /// Under a `lowrank:R` uplink, per shard, the shape it travels in as factors (nil: whole).
    public let factorShapes: [UpdateCodec.FactorShape?]
    /// The warm start of every factored shard (columns × r): drawn from the seed at the start
    /// (and after a restart), then the next power step on each committed update.
    public private(set) var warmStarts: [Int: [Float]] = [:]

    /// - Parameters:
    ///   - resume: the last committed round's state, when resuming a run.
    ///   - trusted: the server's directions on its trusted data (trust rule only).
    ///   - fusion: ensemble distillation of each round's client models (FedDF), on the
    ///     server's examples.
    ///   - evaluate: test accuracy and loss of a model (nil: rounds are not evaluated).
    public init(
        settings: Settings, network: Network, initial: [Float],
        resume: (round: Int, modelVersion: UInt32, optimizer: ServerOptimizer, ledger: TrustLedger)? = nil,
        trusted: TrustedDirections? = nil,
        fusion: EnsembleDistillation? = nil,
        evaluate: (([Float]) -> (metric: Double, loss: Double))? = nil
    ) {
        precondition(initial.count == network.parameterCount, "initial model does not match the network")
        self.settings = settings
        layout = network.layout
        ranges = network.layout.tensors.map(\.range)
        global = initial
        modelVersion = resume?.modelVersion ?? 0
        optimizer = resume?.optimizer ?? ServerOptimizer(settings: settings.serverOptimizer, parameterCount: network.parameterCount)
        ledger = resume?.ledger ?? TrustLedger()
        nextRound = (resume?.round ?? 0) + 1
        isFinished = nextRound > settings.rounds
        self.trusted = trusted
        self.fusion = fusion
        self.evaluate = evaluate
        scratch = [Float](repeating: 0, count: network.parameterCount)
        changedAt = Array(repeating: modelVersion, count: ranges.count)
        widths = settings.widths.sorted()
        subModels = widths.map { width in
            guard width < 1 else { return nil }
            guard let sub = try? SubModel(of: network, fraction: width) else { preconditionFailure("width \(width) does not fit the model (the shells check it)") }
            return sub
        }
        factorShapes = UpdateCodec(spec: settings.uplink, shardRanges: ranges, columns: network.layout.tensors.map(\.columns)).factorShapes
        for (index, shape) in factorShapes.enumerated() {
            guard let shape else { continue }
            warmStarts[index] = LowRankFactors.initialWarmStart(columns: shape.columns, rank: shape.rank, seed: settings.seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(index))
        }
        // A resumed pruned model carries its mask in its zeros.
        if settings.pruning != nil {
            let implied = PruningMask(zerosOf: initial, layout: network.layout)
            if implied.isPruning { mask = implied }
        }
    }

    /// The next warm starts: one power step on the update each factored shard received since
    /// `before` (the model the update was applied to).
    private mutating func advanceWarmStarts(from before: [Float]) {
        for (index, shape) in factorShapes.enumerated() {
            guard let shape, let previous = warmStarts[index] else { continue }
            let applied = ranges[index].map { global[$0] - before[$0] }
            warmStarts[index] = applied.withUnsafeBufferPointer {
                LowRankFactors.nextWarmStart($0, rows: shape.rows, columns: shape.columns, previous: previous, rank: shape.rank)
            }
        }
    }

    /// After a restart, the warm starts that follow the last committed update: one step from
    /// the seeded start on global − `previousModel` (the checkpoint before the last one).
    public mutating func followWarmStarts(from previousModel: [Float]) {
        precondition(previousModel.count == global.count, "the previous model does not match")
        advanceWarmStarts(from: previousModel)
    }

    // MARK: Clients

    /// Clients known to the engine (connected, not revoked).
    public var clientCount: Int { clients.count }

    public func isConnected(_ id: String) -> Bool { clients[id] != nil }

    /// The sub-model a client trains (nil: the whole model), chosen when it joined.
    public func subModel(of id: String) -> SubModel? {
        clients[id]?.widthClass.flatMap { subModels[$0] }
    }

    /// The width a client trains at (nil without width classes).
    public func width(of id: String) -> Double? {
        clients[id]?.widthClass.map { widths[$0] }
    }

    /// Whether `id` was selected in the round in progress and has not reported yet.
    public func isTraining(_ id: String) -> Bool { clients[id]?.busy ?? false }

    /// A client authenticated (or, simulated, came online). A reconnecting client starts afresh:
    /// it holds no shards. A revoked client is not taken. A client that `keepsShards` (HELLO's
    /// `keeps-shards`) is sent only the shards whose values changed since it was last sent them.
    public mutating func clientJoined(_ id: String, memoryBudget: UInt64 = 0, keepsShards: Bool = false, at time: Double) {
        guard !revoked.contains(id) else { return }
        missedDeadline.remove(id)
        let wasBusy = clients[id]?.busy ?? false
        // With width classes the client trains every shard of its sub-model (same indices as the
        // model's); otherwise its budget picks the shards it trains.
        let widthClass = widths.isEmpty ? nil : ClientSelection.widthClass(
            memoryBudget: memoryBudget, parameterCounts: subModels.map { $0?.network.parameterCount ?? layout.parameterCount })
        clients[id] = Client(
            trainedShards: widthClass == nil ? ClientSelection.shardsToTrain(layout: layout, memoryBudget: memoryBudget) : layout.trainableIndices.map(UInt16.init),
            heldVersions: Array(repeating: nil, count: ranges.count), keepsShards: keepsShards, widthClass: widthClass, busy: wasBusy)
        if wasBusy { clients[id]?.taskSentAt = time }
        sortedIDs = nil
    }

    /// Something arrived from `id` (a heartbeat echo, an update): a client that missed a
    /// deadline is alive again and can be selected. Returns true when that changed anything.
    @discardableResult
    public mutating func clientHeard(_ id: String, at time: Double) -> Bool {
        guard current?.selectionIndex[id] == nil || current?.reported.contains(id) == true else { return false }
        return missedDeadline.remove(id) != nil
    }

    /// A client's connection ended. If it was training in the round in progress it counts as
    /// dropped.
    public mutating func clientLeft(_ id: String, at time: Double) {
        guard clients.removeValue(forKey: id) != nil else { return }
        sortedIDs = nil
        clientDropped(id, at: time)
    }

    /// A selected client will deliver nothing this round (it left, or a simulated device dropped
    /// out); it stays known for later rounds.
    public mutating func clientDropped(_ id: String, at time: Double) {
        guard var round = current, round.selectionIndex[id] != nil, !round.reported.contains(id), !round.gone.contains(id) else { return }
        round.gone.insert(id)
        round.participations.append(RoundParticipation(client: id, state: .dropped, bytes: 0, examples: 0, localLoss: nil, refusal: nil, durationSeconds: nil))
        current = round
        clients[id]?.busy = false
    }

    /// `ids` are revoked (their keys withdrawn): connected ones are disconnected, and they are
    /// never selected again.
    public mutating func revoke(_ ids: Set<String>, at time: Double) -> [Action] {
        let new = ids.subtracting(revoked)
        revoked.formUnion(new)
        var actions: [Action] = []
        for id in new.sorted() where clients[id] != nil {
            actions.append(.disconnect(client: id, Refusal(.authenticationFailed, "client \"\(id)\" has been revoked")))
            clientLeft(id, at: time)
        }
        return actions
    }

    // MARK: Rounds

    /// Whether a round can begin now: none in progress, rounds left, enough clients.
    public var canBeginRound: Bool {
        current == nil && !isFinished && clients.count >= settings.minimumClients
            && (settings.minimumClients == 0 || clients.contains { !$0.value.busy && !missedDeadline.contains($0.key) })
    }

    /// Whether a round is collecting updates.
    public var roundInProgress: Int? { current?.round }

    /// When the round in progress stops collecting, if it has a deadline.
    public var deadline: Double? { current?.deadline }

    /// Selects up to ``Settings/selectionSize`` idle clients with the shared draw and returns
    /// their tasks (with the shards each must be sent first).
    public mutating func beginRound(at time: Double) -> [Action] {
        precondition(current == nil && !isFinished, "a round is in progress or the run is finished")
        if sortedIDs == nil { sortedIDs = clients.keys.sorted() }
        let pool = sortedIDs!.filter { clients[$0]?.busy == false && !missedDeadline.contains($0) }
        let selected = ClientSelection.draw(from: pool, count: settings.selectionSize, seed: settings.seed, round: nextRound, attempt: attempt)
        let deadline = settings.roundDeadline > 0 ? time + settings.roundDeadline : nil
        current = RoundInProgress(
            round: nextRound, modelVersion: modelVersion, selected: selected,
            selectionIndex: Dictionary(uniqueKeysWithValues: selected.enumerated().map { ($1, $0) }),
            deadline: deadline, startedAt: time,
            aggregator: UpdateAggregator(shardRanges: ranges, settings: settings.aggregation, previousReferenceNorm: referenceNorm, ledger: ledger),
            teachers: fusion?.startRound())
        return selected.map { id in
            var client = clients[id]!
            // What the client lacks at this version. A client that keeps its shards still holds
            // the values of those unchanged since it got them; the shards it trains must be at
            // the task's version (Protocol.md, section 3).
            let missing = client.heldVersions.indices.filter { index in
                guard let held = client.heldVersions[index] else { return true }
                guard held != modelVersion else { return false }
                // (A sub-model's shard is sent whole again: its places changed or not.)
                return !client.keepsShards || client.widthClass.flatMap({ subModels[$0] }) != nil
                    || held < changedAt[index] || client.trainedShards.contains(UInt16(index))
            }
            for index in missing { client.heldVersions[index] = modelVersion }
            client.busy = true
            client.taskSentAt = time
            clients[id] = client
            var task = Task(round: nextRound, modelVersion: modelVersion, shards: client.trainedShards, shardsToSend: missing, deadline: deadline)
            for shard in client.trainedShards { task.warmStarts[Int(shard)] = warmStarts[Int(shard)] }
            return .sendTask(client: id, task)
        }
    }

    /// Counts bytes of model shards the shell sent for the round in progress.
    public mutating func countDownload(bytes: Int) {
        current?.downlinkBytes += bytes
    }

    /// An update arrived from `id`. Admission is decided from its header (round, version,
    /// sender, shards, codec) before its body is decoded; an admitted update is added to the
    /// round's aggregate (or held for selection order).
    public mutating func updateArrived(_ update: IncomingUpdate, from id: String, at time: Double) -> [Action] {
        if revoked.contains(id) {
            clientLeft(id, at: time)
            return [.disconnect(client: id, Refusal(.authenticationFailed, "client \"\(id)\" has been revoked"))]
        }
        // After its update a client may have dropped its model (fedsim's clients do, to stay
        // small while idle): nothing it held is assumed any more (Protocol.md, section 3).
        if let client = clients[id], !client.keepsShards { clients[id]!.heldVersions = Array(repeating: nil, count: ranges.count) }
        guard var round = current else {
            return [.refuse(client: id, Refusal(.lateUpdate, "no round is collecting updates"))]
        }
        defer { current = round }
        guard update.round == round.round, update.modelVersion == round.modelVersion else {
            return [refuse(id, update, Refusal(.staleRound, "update for round \(update.round) (model version \(update.modelVersion)); the current round is \(round.round) (version \(round.modelVersion))"), state: .refused, in: &round)]
        }
        guard round.selectionIndex[id] != nil else {
            return [refuse(id, update, Refusal(.unexpectedMessage, "client \(id) was not selected for round \(round.round)"), state: .refused, in: &round)]
        }
        guard !round.reported.contains(id) else {
            return [refuse(id, update, Refusal(.unexpectedMessage, "client \(id) already sent its update for round \(round.round)"), state: .refused, in: &round)]
        }
        var update = update
        update.widthClass = clients[id]?.widthClass
        do {
            try checkHeader(update, from: id)
        } catch let refusal as Refusal {
            return [refuse(id, update, refusal, state: .refused, in: &round)]
        } catch {
            return [refuse(id, update, Refusal(.badUpdate, "\(error)"), state: .refused, in: &round)]
        }
        if let deadline = round.deadline, time > deadline { round.closed = true }
        guard !round.closed, round.reported.count < settings.clientsPerRound else {
            clients[id]?.busy = false
            return [refuse(id, update, Refusal(.lateUpdate, "round \(round.round) already has its \(settings.clientsPerRound) updates or passed its deadline"), state: .late, in: &round)]
        }
        if settings.addInSelectionOrder {
            // Checked now (a refusal must not take a place), added in selection order at the close.
            do { try decode(update) } catch let refusal as Refusal {
                return [refuse(id, update, refusal, state: .refused, in: &round)]
            } catch {
                return [refuse(id, update, Refusal(.badUpdate, "\(error)"), state: .refused, in: &round)]
            }
            round.held[round.selectionIndex[id]!] = (update, id)
        } else {
            do {
                try add(update, from: id, to: &round)
            } catch let refusal as Refusal {
                return [refuse(id, update, refusal, state: .refused, in: &round)]
            } catch {
                return [refuse(id, update, Refusal(.badUpdate, "\(error)"), state: .refused, in: &round)]
            }
        }
        round.reported.insert(id)
        round.lossSum += update.trainingLoss * Double(update.exampleCount)
        round.examples += Double(update.exampleCount)
        round.uplinkBytes += update.bytes
        round.participations.append(RoundParticipation(
            client: id, state: .accepted, bytes: update.bytes, examples: update.exampleCount, localLoss: update.trainingLoss,
            refusal: nil, durationSeconds: clients[id]?.taskSentAt.map { time - $0 }))
        clients[id]?.busy = false
        return [.acknowledge(client: id, round: round.round)]
    }

    /// The deadline passed: later updates are late.
    public mutating func deadlinePassed(at time: Double) {
        current?.closed = true
    }

    /// Whether the round in progress can close: it has every update it wants, every selected
    /// client reported or left, or its deadline has passed.
    public func isReadyToClose(at time: Double) -> Bool {
        guard let round = current else { return false }
        if round.closed || round.reported.count >= settings.clientsPerRound { return true }
        if let deadline = round.deadline, time >= deadline { return true }
        return round.selected.allSatisfy { round.reported.contains($0) || round.gone.contains($0) }
    }

    /// Closes the round in progress: below quorum the attempt is abandoned (nothing applied; the
    /// next ``beginRound(at:)`` draws again); otherwise the aggregate is applied through the
    /// server optimizer, the model evaluated, and the round's record returned for commit.
    public mutating func closeRound(at time: Double) throws -> RoundClosing {
        guard var round = current else { preconditionFailure("no round in progress") }
        current = nil
        for id in round.selected { clients[id]?.busy = false }
        if settings.skipClientsThatMissedADeadline, let deadline = round.deadline, time >= deadline,
           round.reported.count < settings.clientsPerRound {
            for id in round.selected where !round.reported.contains(id) && !round.gone.contains(id) && clients[id] != nil {
                missedDeadline.insert(id)
            }
        }
        let completed = round.reported.count
        guard completed >= settings.minimumUpdates else {
            attempt += 1
            return .abandoned(round: round.round, updates: completed, quorum: settings.minimumUpdates)
        }
        if settings.addInSelectionOrder {
            for index in round.held.keys.sorted() {
                let (update, id) = round.held[index]!
                try add(update, from: id, to: &round)
            }
            round.held = [:]
        }
        if let trusted {
            round.aggregator.setTrustedDirections(trusted.directions(from: global, learningRate: settings.learningRate, seed: settings.seed, round: round.round))
        }
        var dpGenerator = SeededGenerator(seed: settings.seed, stream: 0xD9, UInt64(round.round))
        let (mean, outcome) = round.aggregator.finish(generator: &dpGenerator)
        var evaluation: (metric: Double, loss: Double)?
        if let mean {
            let guarding = settings.updateBound > 0 || settings.lossGuard > 0
            if guarding, settings.lossGuard > 0, previousLoss == nil, let evaluate { previousLoss = evaluate(global).loss }
            let (savedModel, savedOptimizer) = (global, optimizer)
            optimizer.apply(delta: mean, to: &global)
            if let fusion, let teachers = round.teachers {
                global = fusion.fuse(initial: global, teachers: teachers, seed: settings.seed, round: round.round).model
            }
            if guarding {
                var problem: String?
                if !global.allSatisfy(\.isFinite) {
                    problem = "the new model holds non-finite values"
                } else if settings.lossGuard > 0, let evaluate {
                    let result = evaluate(global)
                    evaluation = result
                    if !result.loss.isFinite {
                        problem = "the new model's test loss is \(result.loss)"
                    } else if let previous = previousLoss, result.loss > settings.lossGuard * previous {
                        problem = String(format: "the new model's test loss %.4g is more than %g × the previous %.4g", result.loss, settings.lossGuard, previous)
                    }
                }
                if let problem {
                    (global, optimizer) = (savedModel, savedOptimizer)
                    attempt += 1
                    // The next attempt bounds updates against this round's median norm.
                    if recentNorms.isEmpty { recentNorms = round.norms }
                    return .rejected(round: round.round, reason: problem)
                }
            }
            if let schedule = settings.pruning {
                if let sparsity = schedule.step(afterRound: round.round) {
                    mask = PruningMask(pruning: global, layout: layout, to: sparsity, scope: schedule.scope, previous: mask)
                }
                // Also after rounds without a step: server momentum may have moved pruned weights.
                if let mask, mask.isPruning { mask.apply(to: &global, layout: layout) }
            }
            modelVersion += 1
            // Bit for bit, as the clients' SHA-256 checks see the values.
            global.withUnsafeBytes { now in
                savedModel.withUnsafeBytes { before in
                    for (index, range) in ranges.enumerated() {
                        let offset = range.lowerBound * 4
                        if memcmp(now.baseAddress! + offset, before.baseAddress! + offset, range.count * 4) != 0 { changedAt[index] = modelVersion }
                    }
                }
            }
            advanceWarmStarts(from: savedModel)
        }
        if let reference = outcome.referenceNorm { referenceNorm = reference }
        ledger = round.aggregator.ledger
        recentNorms = Array((recentNorms + round.norms).suffix(200))
        var record = RoundOutcome(
            round: round.round, selected: round.selected.count, completed: completed, refused: round.refused,
            dropped: round.participations.filter { $0.state == .dropped }.count,
            late: round.participations.filter { $0.state == .late }.count,
            uplinkBytes: round.uplinkBytes, downlinkBytes: round.downlinkBytes,
            trainingLoss: round.examples > 0 ? round.lossSum / round.examples : 0,
            testMetric: nil, testLoss: nil, seconds: 0, abandonedAttempts: attempt, modelVersion: modelVersion,
            startedAt: round.startedAt, closedAt: time, participations: round.participations,
            notices: round.notices + notices(outcome, aggregated: round.aggregated, round: round.round),
            trust: Dictionary(uniqueKeysWithValues: Set(round.aggregated).compactMap { id in ledger.records[id].map { (id, $0) } }))
        if settings.pruning != nil { record.sparsity = mask?.sparsity(layout: layout) ?? 0 }
        if let evaluate, round.round % max(1, settings.evaluateEvery) == 0 || round.round == settings.rounds {
            let evaluation = evaluation ?? evaluate(global)
            record.testMetric = evaluation.metric
            record.testLoss = evaluation.loss
            previousLoss = evaluation.loss
        } else if let evaluation {
            previousLoss = evaluation.loss
        }
        attempt = 0
        nextRound = round.round + 1
        if nextRound > settings.rounds { isFinished = true }
        if settings.targetMetric > 0, let value = record.testMetric, settings.metric.reaches(value, settings.targetMetric) { isFinished = true }
        return .completed(record)
    }

    /// Ends the run early (a shutdown): no further round begins; a round in progress is
    /// dropped without applying anything.
    public mutating func abandonRound() {
        guard let round = current else { return }
        for id in round.selected { clients[id]?.busy = false }
        current = nil
    }

    // MARK: Admission and aggregation

    private mutating func refuse(_ id: String, _ update: IncomingUpdate, _ refusal: Refusal, state: ParticipationState, in round: inout RoundInProgress) -> Action {
        if state == .refused { round.refused += 1 }
        round.uplinkBytes += update.bytes
        round.participations.append(RoundParticipation(
            client: id, state: state, bytes: update.bytes, examples: state == .late ? update.exampleCount : 0,
            localLoss: state == .late ? update.trainingLoss : nil, refusal: refusal.code, durationSeconds: nil))
        return .refuse(client: id, refusal)
    }

    /// Checks what the header says: examples, loss, shard indices (in range, not repeated,
    /// assigned to this client), and that every encoded shard follows the task's codec spec.
    private func checkHeader(_ update: IncomingUpdate, from id: String) throws {
        guard update.exampleCount > 0 else { throw Refusal(.badUpdate, "update with no examples") }
        guard update.trainingLoss.isFinite else { throw Refusal(.badUpdate, "training loss is \(update.trainingLoss)") }
        guard !update.shards.isEmpty else { throw Refusal(.badUpdate, "update carries no shards") }
        let partial = update.positions != nil || update.widthClass.flatMap({ subModels[$0] }) != nil
        if partial, settings.aggregation.holdsUpdates || settings.aggregation.dpClip > 0 {
            throw Refusal(.badUpdate, "a sub-model's update needs plain FedAvg (each weight is a mean over the clients that hold it)")
        }
        let assigned = clients[id]?.trainedShards ?? layout.trainableIndices.map(UInt16.init)
        var seen = Set<Int>()
        for index in update.shards {
            guard index >= 0, index < ranges.count, seen.insert(index).inserted else {
                throw Refusal(.badUpdate, "shard index \(index) is out of range or repeated")
            }
            guard assigned.contains(UInt16(index)) else { throw Refusal(.badUpdate, "shard \(index) was not assigned to this client") }
        }
        switch update.body {
        case .encoded(let shards):
            guard shards.count == update.shards.count else { throw Refusal(.badUpdate, "\(shards.count) encoded shards for \(update.shards.count) indices") }
            for (index, bytes) in zip(update.shards, shards) {
                let header: ShardCodec.Header
                do {
                    header = try bytes.withUnsafeBytes {
                        try ShardCodec.parseHeader($0, expectedCount: self.ranges(of: update)[index].count, columns: factorShapes[index]?.columns)
                    }
                } catch {
                    throw Refusal(.badUpdate, "shard \(index): \(error)")
                }
                if let problem = settings.uplink.nonconformance(of: header, maskKeeps: mask?.kept[index]?.count, factorRank: factorShapes[index]?.rank) {
                    throw Refusal(.badUpdate, "shard \(index) is \(problem)")
                }
            }
        case .decoded(let delta):
            guard delta.count == scratch.count else { throw Refusal(.badUpdate, "delta of \(delta.count) values for a model of \(scratch.count)") }
        }
    }

    /// The shard ranges an update's body is encoded over: its sender's sub-model's, or the model's.
    private func ranges(of update: IncomingUpdate) -> [Range<Int>] {
        update.widthClass.flatMap { subModels[$0] }.map { $0.network.layout.tensors.map(\.range) } ?? ranges
    }

    /// Decodes the body into ``scratch`` (an encoded one) and checks every value is finite. A
    /// sub-model's body is decoded over its layout and put in its places (zero elsewhere).
    private mutating func decode(_ update: IncomingUpdate) throws {
        switch update.body {
        case .encoded(let shards) where update.widthClass.flatMap({ subModels[$0] }) != nil:
            let sub = subModels[update.widthClass!]!
            let subRanges = sub.network.layout.tensors.map(\.range)
            var values = [Float](repeating: 0, count: sub.network.parameterCount)
            try values.withUnsafeMutableBufferPointer { all in
                for (index, bytes) in zip(update.shards, shards) {
                    do {
                        try bytes.withUnsafeBytes { try ShardCodec.decode($0, into: UnsafeMutableBufferPointer(rebasing: all[subRanges[index]])) }
                    } catch {
                        throw Refusal(.badUpdate, "shard \(index): \(error)")
                    }
                }
            }
            scratch.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
            sub.scatter(values, into: &scratch)
            guard FiniteScan.allFinite(scratch, in: update.shards.map { ranges[$0] }) else { throw Refusal(.badUpdate, "the update holds non-finite values") }
        case .encoded(let shards):
            try scratch.withUnsafeMutableBufferPointer { all in
                for (index, bytes) in zip(update.shards, shards) {
                    do {
                        try bytes.withUnsafeBytes {
                            try ShardCodec.decode($0, into: UnsafeMutableBufferPointer(rebasing: all[ranges[index]]), mask: mask?.kept[index], columns: factorShapes[index]?.columns)
                        }
                    } catch {
                        throw Refusal(.badUpdate, "shard \(index): \(error)")
                    }
                }
            }
            guard FiniteScan.allFinite(scratch, in: update.shards.map { ranges[$0] }) else { throw Refusal(.badUpdate, "the update holds non-finite values") }
        case .decoded(let delta):
            guard FiniteScan.allFinite(delta, in: update.shards.map { ranges[$0] }) else { throw Refusal(.badUpdate, "the update holds non-finite values") }
        }
    }

    private mutating func add(_ update: IncomingUpdate, from id: String, to round: inout RoundInProgress) throws {
        try decode(update)
        var delta: [Float]
        switch update.body {
        case .encoded: delta = scratch
        case .decoded(let decoded): delta = decoded
        }
        // Pruned weights stay zero: whatever an update says about them is dropped.
        if let mask, mask.isPruning { mask.apply(to: &delta, layout: layout) }
        let norm = UpdateAggregator.norm(delta, shards: update.shards, ranges: ranges)
        round.norms.append(norm)
        if settings.updateBound > 0, let reference = Self.median(recentNorms), reference > 0, norm > settings.updateBound * reference {
            let scale = Float(settings.updateBound * reference / norm)
            for index in update.shards { for i in ranges[index] { delta[i] *= scale } }
            round.notices.append(AggregationNotice(kind: .bounded, client: id, message: String(
                format: "round %d: update norm %.4g scaled down to %.4g (update_bound %.4g × the median accepted norm %.4g)",
                round.round, norm, settings.updateBound * reference, settings.updateBound, reference)))
        }
        let positions = update.positions ?? update.widthClass.flatMap { subModels[$0] }?.positions
        round.aggregator.add(delta: delta, shards: update.shards, weight: Double(update.exampleCount), client: id, positions: positions)
        if let fusion { fusion.addTeacher(global: global, delta: delta, ranges: update.shards.map { ranges[$0] }, to: &round.teachers!) }
        round.aggregated.append(id)
    }

    static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    private func notices(_ outcome: UpdateAggregator.Outcome, aggregated: [String], round: Int) -> [AggregationNotice] {
        var notices: [AggregationNotice] = []
        for index in outcome.untrusted {
            notices.append(AggregationNotice(kind: .untrusted, client: aggregated[index], message: String(
                format: "round %d: update left out by the trust rule: score %.4f, client trust %.4f, threshold %.4f",
                round, outcome.scores[index], outcome.trust[index], outcome.trustThreshold ?? 0)))
        }
        let bound = settings.aggregation.normBound > 0 ? settings.aggregation.normBound : 1.5
        let reference = String(format: "%.4g", outcome.referenceNorm ?? 0)
        for (index, kind) in outcome.clipped.map({ ($0, AggregationNotice.Kind.clipped) }) + outcome.excluded.map({ ($0, .leftOut) }) {
            notices.append(AggregationNotice(kind: kind, client: aggregated[index], message:
                "round \(round): update \(kind.rawValue) by the norm bound (\(bound) × reference norm \(reference))"))
        }
        return notices
    }
}
