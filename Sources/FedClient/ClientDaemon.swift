import Crypto
import FedCodec
import FedModel
import FedProtocol
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL

/// What a client daemon needs: where the coordinator is, who it is, and its private data.
public struct ClientConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 7420
    public var clientID: String
    public var secret: String
    /// The device's own examples; they never leave the process. Nil only with an external
    /// ``trainer`` that reads the device's data itself.
    public var data: DatasetSlice?
    /// Hands training to the device's own program instead of training here (nil = built in).
    public var trainer: ExternalTrainer?
    /// The data's path, handed to an external trainer in its task file.
    public var dataPath: String?
    /// Seed of local shuffling and stochastic rounding (with the round and ``seedStream``).
    public var seed: UInt64 = 1
    /// Separates this client's random streams from others' (fedsim passes the client index).
    public var seedStream: UInt64 = 0
    /// Bytes of memory this device offers for training (0 = no limit); a small budget makes the
    /// coordinator assign only some shards (Protocol.md, section 7).
    public var memoryBudget: UInt64 = 0
    /// File that keeps the error-feedback residual across restarts (nil = memory only).
    public var stateFile: URL?
    /// Reconnect forever with exponential backoff (a daemon) or stop when the connection ends.
    public var reconnect = true
    /// First and largest reconnection delay, in seconds; each wait is jittered ±50 %.
    public var initialBackoff = 0.2
    public var maximumBackoff = 30.0
    /// TLS towards the coordinator (nil = plain TCP).
    public var tls: ClientTLS?
    /// Keep the model shards between rounds (a daemon: a shard unchanged since the last round is
    /// not downloaded again). Off, an idle client holds no model and no training buffers; fedsim
    /// turns it off for its thousands of in-process clients.
    public var retainModel = true
    /// Shards verified by daemons sharing this process (nil: every shard is hashed, as on a
    /// lone device).
    public var verifiedShards: VerifiedShards?
    /// Protocol versions offered in HELLO; the coordinator picks the highest it speaks.
    public var protocolVersions: [UInt8] = Array(Frame.supportedVersions)

    public init(clientID: String, secret: String, data: DatasetSlice?, trainer: ExternalTrainer? = nil) {
        precondition(data != nil || trainer != nil, "a client trains on its data or through an external trainer")
        self.clientID = clientID
        self.secret = secret
        self.data = data
        self.trainer = trainer
    }
}

/// The device side: connects, authenticates, caches the model shards it is sent (by index and
/// version), trains on its own data when given a task, encodes its delta with the requested
/// codec (keeping the error-feedback residual), uploads it, and waits for the next task.
public actor ClientDaemon {
    public let configuration: ClientConfiguration
    private let logger: Logger
    private var network: Network?
    /// The device's data with its targets read as the current model's loss reads them.
    private var data: DatasetSlice?
    private var trainer: LocalTrainer?
    private var model: [Float] = []
    private var versions: [UInt32?] = []
    /// Per shard, the positions a pruned (sparse) model shard kept, or nil for a whole shard.
    private var masks: [[UInt32]?] = []
    /// Error-feedback residual: loaded or created on the first task that uses `+ef`.
    private var residual: ErrorFeedback?
    /// Rounds this client trained and uploaded.
    public private(set) var completedRounds: [Int] = []
    /// Rounds its external trainer could not deliver (declined to the coordinator on version 3).
    public private(set) var declinedRounds: [Int] = []
    /// The coordinator's GOODBYE reason, once it said goodbye.
    public private(set) var goodbyeReason: String?
    /// Why the daemon gave up: an error that waiting and reconnecting cannot fix (its data
    /// does not fit the coordinator's model, its state file cannot be written). ``run()``
    /// returns with it set; fedclient exits with it as a one-line error.
    public private(set) var fatalError: String?
    private var stopped = false
    /// Set when the current connection reached WELCOME.
    private var establishedSession = false
    private var connection: (any Channel)?
    /// The protocol version of the current connection, once the coordinator chose it.
    private var version: UInt8?
    private var tlsContext: NIOSSLContext?

    public init(configuration: ClientConfiguration, logger: Logger? = nil) {
        self.configuration = configuration
        data = configuration.data
        self.logger = logger ?? Logger(label: "fedclient.\(configuration.clientID)")
    }

    /// Runs until the coordinator says goodbye, ``stop()`` is called, or (without `reconnect`)
    /// the connection ends.
    public func run() async {
        var backoff = configuration.initialBackoff
        while !stopped {
            do {
                let finished = try await session()
                if finished { return }
                backoff = configuration.initialBackoff
            } catch is CancellationError {
                return
            } catch where stopped {
                return
            } catch let error as UnrecoverableError {
                logger.error("giving up", metadata: ["error": "\(error.message)"])
                fatalError = error.message
                return
            } catch {
                logger.info("connection lost", metadata: ["error": "\(error)"])
            }
            // A connection that got as far as WELCOME was a working one: the next wait starts
            // short again (a coordinator restarted many times must not push it to the maximum).
            if establishedSession {
                backoff = configuration.initialBackoff
                establishedSession = false
            }
            guard configuration.reconnect, !stopped, !Task.isCancelled else { return }
            let wait = backoff * Double.random(in: 0.5...1.5)
            backoff = min(configuration.maximumBackoff, backoff * 2)
            // Sleep in short steps so that stop() takes effect at once.
            let until = Date().addingTimeInterval(wait)
            while !stopped, Date() < until {
                do { try await Task.sleep(nanoseconds: 50_000_000) } catch { return }
            }
        }
    }

    /// Says goodbye to the coordinator (if connected), closes the connection and ends ``run()``.
    public func stop() {
        stopped = true
        guard let connection else { return }
        let framer = MessageFramer(version: version ?? configuration.protocolVersions.min() ?? 1)
        for frame in framer.frames(for: .goodbye(Goodbye(.goingAway, reason: "client stopping"))) {
            connection.write(frame, promise: nil)
        }
        connection.flush()
        connection.close(promise: nil)
    }

    /// One connection. Returns true when the coordinator said goodbye.
    private func session() async throws -> Bool {
        if let tls = configuration.tls, tlsContext == nil { tlsContext = try tls.makeContext() }
        let tlsContext = self.tlsContext
        let tls = configuration.tls
        let host = configuration.host
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(host: configuration.host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tlsContext, let tls { try channel.pipeline.syncOperations.addHandler(tls.makeHandler(context: tlsContext, host: host)) }
                    return try makeFramedChannel(channel)
                }
            }
        connection = channel.channel
        defer { connection = nil }
        if stopped { channel.channel.close(promise: nil) }
        return try await channel.executeThenClose { inbound, outbound in
            let reader = MessageReader(inbound, framer: MessageFramer(version: nil))
            // HELLO travels in a frame of the lowest version offered, which any coordinator
            // speaking it can read; every later frame carries the version the coordinator chose.
            let offered = configuration.protocolVersions
            var writer = MessageWriter(outbound, framer: MessageFramer(version: offered.min() ?? 1))
            defer { version = nil }
            try await writer.send(.hello(Hello(
                clientID: configuration.clientID, protocolVersions: offered,
                codecs: ["fp32", "fp16", "q8", "q4", "q2", "sign", "topk", "lowrank"] + (configuration.retainModel ? [Hello.keepsShards] : []),
                memoryBudget: configuration.memoryBudget,
                exampleCount: UInt32(configuration.data?.count ?? 0))))
            switch try await reader.next() {
            case .challenge(let nonce, let chosen)?:
                guard offered.contains(chosen) else {
                    throw ProtocolError(.unsupportedVersion, "the coordinator chose protocol version \(chosen), this client offered \(offered)")
                }
                version = chosen
                reader.version = chosen
                writer = writer.speaking(chosen)
                try await writer.send(.authenticate(signature: Authentication.sign(secret: configuration.secret, nonce: nonce, clientID: configuration.clientID)))
            case .error(let code, let message)?:
                throw Self.handshakeError(code: code, message: message)
            default:
                throw ProtocolError(.unexpectedMessage, "expected CHALLENGE")
            }
            var maximumMessage = MessageFramer.defaultMaximumMessage
            switch try await reader.next() {
            case .welcome(let welcome)?:
                establishedSession = true
                if let limits = welcome.limits {
                    // Send no frame and no message larger than the coordinator reads.
                    writer = writer.speaking(writer.framer.version!, maximumFramePayload: min(Frame.defaultMaximumPayload, Int(limits.maximumFramePayload)))
                    maximumMessage = Int(limits.maximumMessage)
                }
                try prepare(model: welcome.model)
            case .error(let code, let message)?:
                throw Self.handshakeError(code: code, message: message)
            default:
                throw ProtocolError(.unexpectedMessage, "expected WELCOME")
            }
            logger.info("connected", metadata: ["coordinator": "\(configuration.host):\(configuration.port)", "protocol": "\(version ?? 0)"])
            while let message = try await reader.next() {
                switch message {
                case .modelShard(let shard):
                    try receive(shard)
                case .trainingTask(let task):
                    let update: Update
                    do {
                        update = try await train(task)
                    } catch let failure as ExternalTrainer.Failure {
                        // Nothing to deliver this round; the client keeps serving.
                        logger.warning("cannot deliver this round", metadata: ["round": "\(task.round)", "reason": "\(failure.reason)", "error": "\(failure.message)"])
                        declinedRounds.append(Int(task.round))
                        if (version ?? 1) >= 3 {
                            try await writer.send(.decline(Decline(round: task.round, reason: failure.reason, message: String(failure.message.prefix(1000)))))
                        }
                        if !configuration.retainModel { releaseModel() }
                        continue
                    }
                    let size = update.shards.reduce(18) { $0 + 6 + $1.encoded.count }
                    guard size <= maximumMessage else {
                        logger.error("update not sent", metadata: ["round": "\(task.round)", "error": "\(size) bytes exceed the coordinator's message limit of \(maximumMessage)"])
                        continue
                    }
                    do {
                        try await writer.send(.update(update))
                    } catch {
                        // The coordinator closed the connection while this client trained; it
                        // may have said GOODBYE first (the run finished), which is read here.
                        if let goodbye = await Self.goodbye(in: reader) { return saidGoodbye(goodbye) }
                        throw error
                    }
                case .heartbeat(let timestamp):
                    do {
                        try await writer.send(.heartbeat(timestamp: timestamp))
                    } catch {
                        // The echo crossed the coordinator's GOODBYE and close.
                        if let goodbye = await Self.goodbye(in: reader) { return saidGoodbye(goodbye) }
                        throw error
                    }
                case .acknowledgement:
                    break
                case .error(let code, let text):
                    logger.warning("coordinator refused", metadata: ["code": "\(code)", "message": "\(text)"])
                case .goodbye(let goodbye):
                    return saidGoodbye(goodbye)
                default:
                    throw ProtocolError(.unexpectedMessage, "\(message.type) is not expected from the coordinator")
                }
            }
            return false
        }
    }

    /// A GOODBYE among the messages that arrived before the connection closed, if any.
    private static func goodbye(in reader: MessageReader) async -> Goodbye? {
        while let message = try? await reader.next() {
            if case .goodbye(let goodbye) = message { return goodbye }
        }
        return nil
    }

    /// True when the run is over; a coordinator going away (restarting) is reconnected to.
    private func saidGoodbye(_ goodbye: Goodbye) -> Bool {
        switch goodbye.code {
        case .finished:
            logger.info("coordinator said goodbye", metadata: ["reason": "\(goodbye.reason)"])
            goodbyeReason = goodbye.reason
            return true
        case .goingAway:
            logger.info("coordinator going away; reconnecting later", metadata: ["reason": "\(goodbye.reason)"])
            return false
        }
    }

    /// An ERROR during the handshake: a codec this client cannot encode is not fixed by waiting.
    private static func handshakeError(code: UInt16, message: String) -> any Error {
        let code = ProtocolError.Code(rawValue: code) ?? .unexpectedMessage
        if code == .unsupportedCodec || code == .unsupportedVersion {
            return UnrecoverableError(message: "the coordinator refused this client: \(message)")
        }
        return ProtocolError(code, message)
    }

    /// Builds the network the coordinator named (once; a different model resets the cache).
    private func prepare(model description: String) throws {
        // A model this build cannot read or build (an unknown layer or loss) is not fixed by
        // reconnecting: stop with one line.
        let spec: ModelSpec
        let network: Network
        do {
            spec = try ModelSpec(wireDescription: description)
            if let current = self.network, current.spec == spec { return }
            network = try Network(spec)
        } catch let error as ModelError {
            throw UnrecoverableError(message: "cannot train the coordinator's model \"\(description)\": \(error)")
        }
        guard let source = configuration.data else {
            // An external trainer reads the data itself.
            resetModel(for: network)
            return
        }
        guard source.dataset.sampleShape.count == spec.input.count else {
            throw UnrecoverableError(message: "local data has \(source.dataset.sampleShape.count) features per example, the coordinator's model expects \(spec.input.count)")
        }
        // The device read its data before it knew the task: read the targets as the model's loss does.
        let converted: Dataset
        do { converted = try source.dataset.converted(to: TargetFormat(spec)) } catch let error as DataError {
            throw UnrecoverableError(message: "local data does not fit the coordinator's task (\(spec.loss), \(spec.classes) outputs): \(error.problem)")
        }
        if let problem = network.accepts(converted) { throw UnrecoverableError(message: "local data does not fit the coordinator's model: \(problem)") }
        data = DatasetSlice(dataset: converted, indices: source.indices)
        resetModel(for: network)
    }

    private func resetModel(for network: Network) {
        self.network = network
        trainer = nil
        model = []
        versions = Array(repeating: nil, count: network.layout.tensors.count)
        masks = Array(repeating: nil, count: network.layout.tensors.count)
        residual = nil
    }

    /// Forgets the model and training buffers (after an upload, when not retaining the model).
    private func releaseModel() {
        guard let network else { return }
        model = []
        trainer = nil
        versions = Array(repeating: nil, count: network.layout.tensors.count)
    }

    private func receive(_ shard: ModelShard) throws {
        guard let network else { throw ProtocolError(.unexpectedMessage, "model shard before WELCOME") }
        let index = Int(shard.shardIndex)
        guard index < network.layout.tensors.count else { throw ProtocolError(.malformedMessage, "shard index \(index) out of range") }
        let range = network.layout.tensors[index].range
        if model.isEmpty { model = [Float](repeating: 0, count: network.parameterCount) }
        if masks.count != network.layout.tensors.count { masks = Array(repeating: nil, count: network.layout.tensors.count) }
        do {
            var kept: [UInt32]?
            try model.withUnsafeMutableBufferPointer { all in
                try shard.encoded.withUnsafeBytes { try ShardCodec.decode($0, into: UnsafeMutableBufferPointer(rebasing: all[range]), keptPositions: &kept) }
            }
            // A sparse model shard is pruned: only the positions it lists are trained.
            masks[index] = kept
        } catch let error as CodecError {
            versions[index] = nil
            throw ProtocolError(.malformedMessage, "model shard \(index): \(error)")
        }
        if configuration.verifiedShards?.contains(encoded: shard.encoded, count: range.count, sha256: shard.sha256) != true {
            let digest = model[range].withUnsafeBytes { Array(SHA256.hash(data: $0)) }
            guard digest == shard.sha256 else {
                versions[index] = nil
                throw ProtocolError(.badChecksum, "model shard \(index) does not match its SHA-256")
            }
            configuration.verifiedShards?.insert(encoded: shard.encoded, count: range.count, sha256: shard.sha256)
        }
        versions[index] = shard.modelVersion
    }

    private func train(_ task: TrainingTask) async throws -> Update {
        guard let network else { throw ProtocolError(.unexpectedMessage, "training task before WELCOME") }
        guard !model.isEmpty else { throw ProtocolError(.unexpectedMessage, "training task before any model shard") }
        for index in task.shards where versions[Int(index)] != task.modelVersion {
            throw ProtocolError(.unexpectedMessage, "task for model version \(task.modelVersion) but shard \(index) is at \(versions[Int(index)].map(String.init) ?? "none")")
        }
        let spec = try CodecSpec(parsing: task.codec)
        guard task.batchSize > 0, task.localEpochs > 0, task.batchSize <= 1024 else {
            throw ProtocolError(.malformedMessage, "task with batch \(task.batchSize) and \(task.localEpochs) epochs")
        }
        let trained = Set(task.shards.map(Int.init))
        guard trained.allSatisfy({ $0 < network.layout.tensors.count }) else {
            throw ProtocolError(.malformedMessage, "task names a shard outside the model")
        }
        var local = model
        let mask = PruningMask(kept: masks.count == network.layout.tensors.count ? masks : Array(repeating: nil, count: network.layout.tensors.count))
        let examples: Int, meanLoss: Double
        if let external = configuration.trainer {
            let result = try await external.run(model: model, network: network, task: task, trained: trained, dataPath: configuration.dataPath)
            (local, examples, meanLoss) = (result.parameters, result.examples, result.loss)
        } else {
            guard let data else { throw UnrecoverableError(message: "no data to train on") }
            // Buffers sized for the batch the task asks for, kept while it stays the same.
            let batch = Int(task.batchSize)
            let trainer = self.trainer.flatMap { $0.workspace.capacity == batch ? $0 : nil } ?? LocalTrainer(network: network, batchCapacity: batch)
            self.trainer = trainer
            var generator = SeededGenerator(seed: configuration.seed, stream: 0xC11E, UInt64(task.round), configuration.seedStream)
            let frozen = Set(network.layout.tensors.indices).subtracting(trained)
            let summary = trainer.train(
                parameters: &local, anchor: nil, data: data, epochs: Int(task.localEpochs),
                batchSize: Int(task.batchSize), sgd: SGD(learningRate: task.learningRate), generator: &generator,
                frozen: frozen, keep: mask.multipliers(layout: network.layout))
            (examples, meanLoss) = (data.count, summary.meanLoss)
        }
        // The delta is formed in place of the local model: one pass, no new array.
        var delta = local
        local = []
        delta.withUnsafeMutableBufferPointer { d in model.withUnsafeBufferPointer { m in for i in d.indices { d[i] -= m[i] } } }
        if spec.errorFeedback, residual == nil { residual = try loadResidual(count: network.parameterCount) }
        if spec.errorFeedback { residual?.compensate(&delta) }
        // Pruned weights stay zero (an external trainer may have moved them): their delta is
        // not sent, and the update travels sparse over the mask.
        if mask.isPruning { mask.apply(to: &delta, layout: network.layout) }
        var codecGenerator = SeededGenerator(seed: configuration.seed, stream: 0xC0DE, UInt64(task.round), configuration.seedStream)
        // Low-rank factors are computed only for the shards the task trains (from its warm
        // starts); other codecs encode every shard and send the trained ones.
        let tensors = network.layout.tensors
        let coded = spec.lowRank != nil ? task.shards.map(Int.init) : Array(tensors.indices)
        let codec = UpdateCodec(spec: spec, shardRanges: coded.map { tensors[$0].range }, count: network.parameterCount, columns: coded.map { tensors[$0].columns })
        let warmStarts = spec.lowRank != nil ? try Self.warmStarts(of: task, for: codec, shards: coded) : nil
        let codedMasks = mask.isPruning ? coded.map { mask.kept[$0] } : nil
        let encoded = try codec.encode(delta, masks: codedMasks, receiverHoldsMasks: true, warmStarts: warmStarts, generator: &codecGenerator)
        if spec.errorFeedback, var feedback = residual {
            var decoded = delta
            try codec.decode(encoded, into: &decoded, masks: coded.map { mask.kept[$0] })
            feedback.record(sent: delta, decoded: decoded)
            residual = feedback
            try saveResidual(feedback)
        }
        completedRounds.append(Int(task.round))
        if !configuration.retainModel { releaseModel() }
        return Update(
            round: task.round, modelVersion: task.modelVersion, exampleCount: UInt32(examples),
            trainingLoss: Float(meanLoss),
            shards: task.shards.map { index in ShardDelta(index: index, encoded: encoded[coded.firstIndex(of: Int(index))!]) })
    }

    /// The task's warm start for every shard `codec` codes as low-rank factors, in the codec's
    /// shard order; a missing, misshapen or non-finite one, or one for a shard the task does
    /// not factor, makes the task malformed (Protocol.md §8.6).
    static func warmStarts(of task: TrainingTask, for codec: UpdateCodec, shards: [Int]) throws -> [[Float]?] {
        var given: [Int: TrainingTask.WarmStart] = [:]
        for start in task.warmStarts {
            guard let position = shards.firstIndex(of: Int(start.shardIndex)), codec.factorShapes[position] != nil,
                  given.updateValue(start, forKey: position) == nil else {
                throw ProtocolError(.malformedMessage, "task carries a warm start for shard \(start.shardIndex), which it does not code as low-rank factors (or twice)")
            }
        }
        return try codec.factorShapes.enumerated().map { position, shape in
            guard let shape else { return nil }
            guard let start = given[position] else { throw ProtocolError(.malformedMessage, "task has no warm start for shard \(shards[position]) (\(task.codec))") }
            guard Int(start.rank) == shape.rank, Int(start.columns) == shape.columns, start.values.count == shape.rank * shape.columns else {
                throw ProtocolError(.malformedMessage, "warm start of shard \(shards[position]) is \(start.columns)x\(start.rank), the shard's factors are \(shape.columns)x\(shape.rank)")
            }
            guard start.values.allSatisfy(\.isFinite) else { throw ProtocolError(.malformedMessage, "warm start of shard \(shards[position]) holds non-finite values") }
            return start.values
        }
    }

    // MARK: Error-feedback state

    private func loadResidual(count: Int) throws -> ErrorFeedback {
        var feedback = ErrorFeedback(count: count)
        guard let url = configuration.stateFile, let data = try? Data(contentsOf: url) else { return feedback }
        guard data.count == count * 4 else {
            logger.warning("ignoring residual state of the wrong size", metadata: ["file": "\(url.path)"])
            return feedback
        }
        var values = [Float](repeating: 0, count: count)
        _ = values.withUnsafeMutableBytes { data.copyBytes(to: $0) }
        guard values.allSatisfy(\.isFinite) else {
            logger.warning("ignoring residual state with non-finite values", metadata: ["file": "\(url.path)"])
            return feedback
        }
        let sent = values
        feedback.record(sent: sent, decoded: [Float](repeating: 0, count: count))
        return feedback
    }

    /// Writes the residual to `state_file.tmp`, then renames it over the state file: a kill
    /// mid-write leaves the old state whole and at most that one temporary file, which the
    /// next start removes.
    private func saveResidual(_ feedback: ErrorFeedback) throws {
        guard let url = configuration.stateFile else { return }
        let data = feedback.residual.withUnsafeBytes { Data($0) }
        let temporary = Self.temporaryStateFile(url)
        do {
            try data.write(to: temporary)
            guard rename(temporary.path, url.path) == 0 else { throw CocoaError(.fileWriteUnknown) }
        } catch {
            throw UnrecoverableError(message: "cannot write the state file \(url.path): \(String(cString: strerror(errno)))")
        }
    }

    static func temporaryStateFile(_ url: URL) -> URL { url.appendingPathExtension("tmp") }

    /// Checks, before connecting, what waiting cannot fix: the state file's directory must
    /// exist and be writable. Removes a temporary state file left by a kill mid-write.
    public static func checkStateFile(_ url: URL?) throws {
        guard let url else { return }
        let directory = url.deletingLastPathComponent().path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw UnrecoverableError(message: "state_file \(url.path): directory \(directory) does not exist")
        }
        guard FileManager.default.isWritableFile(atPath: directory) else {
            throw UnrecoverableError(message: "state_file \(url.path): directory \(directory) is not writable")
        }
        try? FileManager.default.removeItem(at: temporaryStateFile(url))
    }
}

/// An error that waiting and reconnecting cannot fix; the daemon stops with it.
public struct UnrecoverableError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
