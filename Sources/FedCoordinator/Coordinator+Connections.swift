import FedCodec
import FedProtocol
import FedRounds
import FedStore
import Foundation
import Logging
import NIOCore

/// Connections: handshake, the registry of authenticated clients, messages in and out,
/// heartbeats, idle timeouts and revocation.
extension Coordinator {
    /// Answers a connection beyond `max_connections` with ERROR overloaded and closes it.
    nonisolated func turnAway(_ connection: NIOAsyncChannel<Frame, Frame>) async {
        let peer = connection.channel.remoteAddress?.description ?? "?"
        logger.warning("refusing connection", metadata: ["peer": "\(peer)", "error": "too many connections (\(configuration.maximumConnections))"])
        metrics.refused.increment()
        try? store?.recordEvent(kind: "refusal", message: "\(peer): too many connections (max_connections = \(configuration.maximumConnections))")
        try? await connection.executeThenClose { _, outbound in
            try await MessageWriter(outbound).send(.error(code: ProtocolError.Code.overloaded.rawValue, message: "too many connections; try again later"))
        }
    }

    /// One connection, start to end. Never throws: errors are answered, logged and end only this connection.
    nonisolated func handle(_ connection: NIOAsyncChannel<Frame, Frame>) async {
        let peer = connection.channel.remoteAddress?.description ?? "?"
        var registered: (id: String, session: UInt64)?
        do {
            try await connection.executeThenClose { inbound, outbound in
                // No version yet: HELLO may come in any supported version's frame.
                let reader = MessageReader(inbound, framer: MessageFramer(
                    version: nil, maximumFramePayload: configuration.maximumFramePayload, maximumMessage: configuration.maximumMessage))
                let handshakeWriter = MessageWriter(outbound, framer: MessageFramer(version: nil, maximumFramePayload: configuration.maximumFramePayload))
                var failure: ProtocolError?
                do {
                    let (id, hello, version) = try await authenticate(reader: reader, writer: handshakeWriter)
                    let writer = handshakeWriter.speaking(version)
                    let (stream, continuation) = AsyncStream.makeStream(of: Outgoing.self)
                    guard let (session, model) = await register(id, hello: hello, version: version, outbound: continuation, channel: connection.channel) else {
                        throw ProtocolError(.shuttingDown, "the coordinator is shutting down")
                    }
                    registered = (id, session)
                    try await writer.send(.welcome(Welcome(
                        sessionID: session, heartbeatMilliseconds: configuration.heartbeatMilliseconds,
                        model: model,
                        limits: Limits(maximumFramePayload: UInt32(configuration.maximumFramePayload), maximumMessage: UInt32(configuration.maximumMessage)))))
                    if let error = try await serve(reader: reader, writer: writer, outbox: stream, continuation: continuation, from: id, session: session, version: version) {
                        failure = error   // its ERROR has been written
                        recordRefusal(error, client: registered?.id ?? error.clientID, peer: peer)
                    }
                } catch let error as ProtocolError {
                    failure = error
                    // Recorded before the ERROR goes out, so whoever reads it finds the event.
                    recordRefusal(error, client: registered?.id ?? error.clientID, peer: peer)
                    try? await handshakeWriter.speaking(reader.version ?? 1).send(.error(code: error.code.wireCode(version: reader.version ?? 1), message: error.message))
                }
                if failure != nil {
                    handshakeWriter.finish()
                    await Self.lingeringClose(connection.channel)
                }
            }
        } catch {
            logger.info("connection ended", metadata: ["peer": "\(peer)", "client": "\(registered?.id ?? "-")", "reason": "\(error)"])
        }
        if let registered { await unregister(registered.id, session: registered.session) }
    }

    private nonisolated func recordRefusal(_ failure: ProtocolError, client: String?, peer: String) {
        logger.warning("refusing connection", metadata: ["peer": "\(peer)", "client": "\(client ?? "-")", "error": "\(failure)"])
        metrics.refused.increment()
        try? store?.recordEvent(kind: "refusal", client: client, message: "\(peer): \(failure)")
    }

    /// After a final ERROR and the writer's half-close (FIN after the ERROR): waits, at most
    /// 2 s, for the peer to close its side. Closing at once with the peer's bytes still unread would make
    /// the kernel reset the connection, and a reset can discard the ERROR before the peer
    /// reads it.
    private static func lingeringClose(_ channel: any Channel) async {
        _ = try? await withDeadline(seconds: 2) { try await channel.closeFuture.get() }
    }

    /// How an authenticated connection's two halves ended.
    private enum Ending: Sendable {
        case writer, reader(ProtocolError?), drainTimeout
    }

    /// Reads messages and writes the outbox until either side ends. A protocol error in what
    /// the client sent is queued as an ERROR behind whatever is already in the outbox, and the
    /// writer drains the outbox before the connection closes, so the ERROR is always written:
    /// it never races the close. Returns that error.
    private nonisolated func serve(
        reader: MessageReader, writer: MessageWriter, outbox: AsyncStream<Outgoing>,
        continuation: AsyncStream<Outgoing>.Continuation, from id: String, session: UInt64, version: UInt8
    ) async throws -> ProtocolError? {
        try await withThrowingTaskGroup(of: Ending.self) { tasks in
            tasks.addTask {
                for await item in outbox {
                    switch item {
                    case .message(let message): try await writer.send(message)
                    case .frames(let frames): try await writer.send(frames: frames)
                    }
                }
                return .writer
            }
            tasks.addTask {
                do {
                    while let message = try await reader.next() {
                        if case .goodbye = message { break }
                        await self.received(message, from: id, session: session)
                    }
                    continuation.finish()
                    return .reader(nil)
                } catch let error as ProtocolError {
                    continuation.yield(.error(code: error.code.wireCode(version: version), message: error.message))
                    continuation.finish()
                    return .reader(error)
                } catch {
                    continuation.finish()
                    throw error
                }
            }
            defer { tasks.cancelAll() }
            guard case .reader(let error) = try await tasks.next()! else {
                // The coordinator ended the connection (GOODBYE, a refusal, a newer session):
                // FIN after what was written, and read on until the peer closes, for at most
                // 2 s. Closing outright with the peer's bytes (a heartbeat echo) unread would
                // make the kernel reset the connection, and a reset can discard the GOODBYE.
                writer.finish()
                tasks.addTask {
                    try await Task.sleep(nanoseconds: 2_000_000_000)
                    return .drainTimeout
                }
                _ = try await tasks.next()
                return nil
            }
            // The reader ending first lets the writer drain what is queued (an ERROR last), for
            // at most a few seconds (a peer that reads nothing cannot hold us).
            tasks.addTask {
                try await Task.sleep(nanoseconds: 5_000_000_000)
                return .drainTimeout
            }
            _ = try await tasks.next()
            return error
        }
    }

    /// The public key `id` authenticates with: the database's registration when there is one
    /// (nil if revoked), else the configuration file's.
    private nonisolated func publicKey(of id: String) throws -> String? {
        if let store, let credential = try store.credential(id: id) {
            return credential.revoked ? nil : credential.publicKey
        }
        return configuration.clientKeys[id]
    }

    /// HELLO → CHALLENGE → AUTHENTICATE, within the handshake timeout. Chooses the highest
    /// protocol version both sides speak (the reader checks every later frame against it) and
    /// refuses a client that cannot encode the task's codec.
    private nonisolated func authenticate(reader: MessageReader, writer: MessageWriter) async throws -> (String, Hello, UInt8) {
        let timeout = configuration.handshakeTimeout
        return try await withDeadline(seconds: timeout) {
            guard case .hello(let hello)? = try await reader.next() else {
                throw ProtocolError(.unexpectedMessage, "the first message must be HELLO")
            }
            guard let version = hello.protocolVersions.filter(Frame.supportedVersions.contains).max() else {
                throw ProtocolError(.unsupportedVersion, "client speaks versions \(hello.protocolVersions), coordinator speaks \(Frame.supportedVersions.map(String.init).joined(separator: " and "))")
            }
            reader.version = version
            if let missing = Self.missingCodec(in: hello.codecs, for: self.configuration.uplinkCodec) {
                throw ProtocolError(.unsupportedCodec, "updates are encoded \(self.configuration.uplinkCodec); HELLO's codec list \(hello.codecs) lacks \"\(missing)\"", clientID: hello.clientID)
            }
            if self.configuration.uplinkCodec.lowRank != nil, version < 4 {
                throw ProtocolError(.unsupportedCodec, "updates are encoded \(self.configuration.uplinkCodec), whose warm starts need protocol version 4; the client speaks \(hello.protocolVersions)", clientID: hello.clientID)
            }
            let nonce = Authentication.nonce()
            try await writer.speaking(version).send(.challenge(nonce: nonce, version: version))
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
            return (hello.clientID, hello, version)
        }
    }

    /// The name HELLO's codec list must carry for `spec` and does not (Protocol.md §2): the
    /// base codec, `topk` for a sparse one and `lowrank` for low-rank factors; nil when the list
    /// has them all.
    static func missingCodec(in codecs: [String], for spec: CodecSpec) -> String? {
        if !codecs.contains(spec.codec.description) { return spec.codec.description }
        if spec.topK != nil, !codecs.contains("topk") { return "topk" }
        if spec.lowRank != nil, !codecs.contains("lowrank") { return "lowrank" }
        return nil
    }

    /// Registers an authenticated client (a reconnecting device replaces its stale connection):
    /// its session and the model description its WELCOME names (with width classes, its
    /// sub-model's); nil once the run is ending.
    private func register(_ id: String, hello: Hello, version: UInt8, outbound: AsyncStream<Outgoing>.Continuation, channel: any Channel) -> (UInt64, String)? {
        guard !finished, !isStopping else { return nil }
        if let existing = connections[id] {
            existing.outbound.finish()
            existing.channel.close(promise: nil)
            engine.clientLeft(id, at: now())
        }
        let session = nextSession
        nextSession += 1
        connections[id] = Connection(session: session, version: version, outbound: outbound, channel: channel)
        engine.clientJoined(id, memoryBudget: hello.memoryBudget, keepsShards: hello.codecs.contains(Hello.keepsShards), at: now())
        metrics.connected.set(to: Double(connections.count))
        var metadata: Logger.Metadata = ["client": "\(id)", "protocol": "\(version)", "examples": "\(hello.exampleCount)", "connected": "\(connections.count)"]
        if let width = engine.width(of: id) { metadata["width"] = "\(width)" }
        logger.info("client joined", metadata: metadata)
        wake()
        return (session, engine.subModel(of: id)?.network.spec.wireDescription ?? configuration.model.wireDescription)
    }

    /// Forgets a client whose connection ended (unless a newer session replaced it).
    private func unregister(_ id: String, session: UInt64) {
        guard let connection = connections[id], connection.session == session else { return }
        connections[id] = nil
        awaitingUpdate.remove(id)
        engine.clientLeft(id, at: now())
        metrics.connected.set(to: Double(connections.count))
        logger.info("client left", metadata: ["client": "\(id)", "connected": "\(connections.count)"])
        if tasksInFlight.remove(id) != nil { sendQueuedTasks() }
        wake()
    }

    private func received(_ message: Message, from id: String, session: UInt64) {
        guard connections[id]?.session == session else { return }
        connections[id]?.lastHeard = Date()
        // A client that missed a deadline is selectable again once it is heard from.
        if engine.clientHeard(id, at: now()) { wake() }
        switch message {
        case .update(let update):
            awaitingUpdate.remove(id)
            // The run is over: the GOODBYE already queued is this client's last message.
            if finished { connections[id]?.outbound.finish() }
            let incoming = RoundEngine.IncomingUpdate(
                round: Int(update.round), modelVersion: update.modelVersion, exampleCount: Int(update.exampleCount),
                trainingLoss: Double(update.trainingLoss), shards: update.shards.map { Int($0.index) },
                body: .encoded(update.shards.map(\.encoded)), bytes: update.shards.reduce(0) { $0 + $1.encoded.count })
            perform(engine.updateArrived(incoming, from: id, at: now()))
            if tasksInFlight.remove(id) != nil { sendQueuedTasks() }
            wake()
        case .decline(let decline):
            // The client will not deliver this round's update: stop waiting for it.
            guard awaitingUpdate.contains(id), Int(decline.round) == engine.roundInProgress else {
                logger.info("declined a round it is not training", metadata: ["client": "\(id)", "round": "\(decline.round)"])
                return
            }
            awaitingUpdate.remove(id)
            logger.warning("client declined the round", metadata: [
                "client": "\(id)", "round": "\(decline.round)", "reason": "\(decline.reason)", "message": "\(decline.message)",
            ])
            try? store?.recordEvent(kind: "declined", client: id, message: "round \(decline.round): \(decline.reason): \(decline.message)")
            engine.clientDropped(id, at: now())
            if tasksInFlight.remove(id) != nil { sendQueuedTasks() }
            wake()
        case .heartbeat:
            break // it counts as hearing from the client (above); our own heartbeats come back here
        default:
            let error = ProtocolError(.unexpectedMessage, "\(message.type) is not expected from a client now")
            logger.warning("refused", metadata: ["client": "\(id)", "error": "\(error)"])
            metrics.refused.increment()
            connections[id]?.outbound.yield(.error(code: error.code.rawValue, message: error.message))
        }
    }

    /// Carries out the engine's answers to an update or a revocation.
    func perform(_ actions: [RoundEngine.Action]) {
        for action in actions {
            switch action {
            case .acknowledge(let id, let round):
                metrics.accepted.increment()
                connections[id]?.outbound.yield(.acknowledgement(type: MessageType.update.rawValue, round: UInt32(round)))
            case .refuse(let id, let refusal):
                metrics.refused.increment()
                logger.warning("refused", metadata: ["client": "\(id)", "error": "\(refusal)"])
                connections[id]?.outbound.yield(.error(code: ProtocolError.Code(refusal.code).rawValue, message: refusal.message))
            case .disconnect(let id, let refusal):
                disconnect(id, ProtocolError(ProtocolError.Code(refusal.code), refusal.message, clientID: id))
            case .sendTask:
                preconditionFailure("tasks are sent by the round loop")
            }
        }
    }

    /// Reads the revoked ids from the store (`fedcoord clients revoke` may run beside us) and
    /// hands them to the engine, which drops their connections and never selects them again.
    func refreshRevocations() {
        guard let store, let revoked = try? store.revokedIDs() else { return }
        perform(engine.revoke(Set(revoked), at: now()))
    }

    /// Refuses with `error`, says so to the client and closes its connection.
    func disconnect(_ id: String, _ error: ProtocolError) {
        guard let connection = connections[id] else { return }
        logger.warning("disconnecting client", metadata: ["client": "\(id)", "error": "\(error)"])
        metrics.refused.increment()
        try? store?.recordEvent(kind: "refusal", client: id, message: "\(error)")
        connection.outbound.yield(.error(code: error.code.rawValue, message: error.message))
        connection.outbound.finish()
        connections[id] = nil
        awaitingUpdate.remove(id)
        engine.clientLeft(id, at: now())
        metrics.connected.set(to: Double(connections.count))
        if tasksInFlight.remove(id) != nil { sendQueuedTasks() }
        wake()
    }

    /// Every heartbeat period: a HEARTBEAT to each idle client (a live one echoes it), and
    /// clients silent for longer than `idle_timeout` while not training are dropped (a client
    /// that is training is bounded by the round deadline instead). Every second: revocations.
    func keepConnectionsAlive() async {
        let period = Double(max(50, configuration.heartbeatMilliseconds)) / 1000
        let tick = min(1, period)
        var nextHeartbeat = Date().addingTimeInterval(period)
        while !finished {
            do { try await Task.sleep(nanoseconds: UInt64(tick * 1e9)) } catch { return }
            refreshRevocations()
            guard Date() >= nextHeartbeat else { continue }
            nextHeartbeat = Date().addingTimeInterval(period)
            let now = Date()
            let timestamp = UInt64(now.timeIntervalSince1970 * 1000)
            for (id, connection) in connections where !engine.isTraining(id) {
                if configuration.idleTimeout > 0, now.timeIntervalSince(connection.lastHeard) > configuration.idleTimeout {
                    disconnect(id, ProtocolError(.timeout, "nothing heard for \(String(format: "%.1f", configuration.idleTimeout)) s (idle_timeout)", clientID: id))
                } else {
                    connection.outbound.yield(.heartbeat(timestamp: timestamp))
                }
            }
        }
    }
}

/// What the coordinator queues for a connection's writer: a message, or one already framed
/// (a model shard, framed once per round and protocol version for every client).
enum Outgoing: Sendable {
    case message(Message)
    case frames([Frame])
}

extension AsyncStream<Outgoing>.Continuation {
    @discardableResult
    func yield(_ message: Message) -> YieldResult { yield(.message(message)) }
}
