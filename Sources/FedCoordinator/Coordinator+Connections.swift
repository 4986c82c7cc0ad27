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
                let reader = MessageReader(inbound)
                let writer = MessageWriter(outbound)
                do {
                    let (id, hello) = try await authenticate(reader: reader, writer: writer)
                    let (stream, continuation) = AsyncStream.makeStream(of: Message.self)
                    guard let session = await register(id, hello: hello, outbound: continuation, channel: connection.channel) else {
                        throw ProtocolError(.shuttingDown, "the coordinator is shutting down")
                    }
                    registered = (id, session)
                    try await writer.send(.welcome(sessionID: session, heartbeatMilliseconds: configuration.heartbeatMilliseconds, model: configuration.model.wireDescription))
                    try await withThrowingTaskGroup(of: Void.self) { tasks in
                        tasks.addTask {
                            for await message in stream { try await writer.send(message) }
                        }
                        tasks.addTask {
                            defer { continuation.finish() }
                            while let message = try await reader.next() {
                                if case .goodbye = message { return }
                                await self.received(message, from: id, session: session)
                            }
                        }
                        try await tasks.next()
                        tasks.cancelAll()
                    }
                } catch let error as ProtocolError {
                    let client = registered?.id ?? error.clientID
                    logger.warning("refusing connection", metadata: ["peer": "\(peer)", "client": "\(client ?? "-")", "error": "\(error)"])
                    metrics.refused.increment()
                    try? store?.recordEvent(kind: "refusal", client: client, message: "\(peer): \(error)")
                    try? await writer.send(.error(code: error.code.rawValue, message: error.message))
                }
            }
        } catch {
            logger.info("connection ended", metadata: ["peer": "\(peer)", "client": "\(registered?.id ?? "-")", "reason": "\(error)"])
        }
        if let registered { await unregister(registered.id, session: registered.session) }
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

    /// Registers an authenticated client (a reconnecting device replaces its stale connection);
    /// nil once the run is ending.
    private func register(_ id: String, hello: Hello, outbound: AsyncStream<Message>.Continuation, channel: any Channel) -> UInt64? {
        guard !finished, !isStopping else { return nil }
        if let existing = connections[id] {
            existing.outbound.finish()
            existing.channel.close(promise: nil)
            engine.clientLeft(id, at: now())
        }
        let session = nextSession
        nextSession += 1
        connections[id] = Connection(session: session, outbound: outbound, channel: channel)
        engine.clientJoined(id, memoryBudget: hello.memoryBudget, at: now())
        metrics.connected.set(to: Double(connections.count))
        logger.info("client joined", metadata: ["client": "\(id)", "examples": "\(hello.exampleCount)", "connected": "\(connections.count)"])
        wake()
        return session
    }

    /// Forgets a client whose connection ended (unless a newer session replaced it).
    private func unregister(_ id: String, session: UInt64) {
        guard let connection = connections[id], connection.session == session else { return }
        connections[id] = nil
        awaitingUpdate.remove(id)
        engine.clientLeft(id, at: now())
        metrics.connected.set(to: Double(connections.count))
        logger.info("client left", metadata: ["client": "\(id)", "connected": "\(connections.count)"])
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
        engine.clientLeft(id, at: now())
        metrics.connected.set(to: Double(connections.count))
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
