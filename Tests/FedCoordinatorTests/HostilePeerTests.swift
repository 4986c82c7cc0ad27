import FedClient
import FedCodec
import FedModel
import FedProtocol
import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import FedCoordinator

/// A hand-driven protocol peer for the tests: it can say exactly the wrong thing.
final class FramedPeer: @unchecked Sendable {
    let channel: NIOAsyncChannel<Frame, Frame>
    let inbound: NIOAsyncChannelInboundStream<Frame>
    private(set) var writer: MessageWriter
    let reader: MessageReader

    static func connect(port: Int) async throws -> FramedPeer {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture { try makeFramedChannel(channel) }
            }
        return FramedPeer(channel)
    }

    deinit {
        // NIO requires an async channel's writer to be finished before it goes away.
        channel.outbound.finish()
        channel.channel.close(promise: nil)
    }

    private init(_ channel: NIOAsyncChannel<Frame, Frame>) {
        self.channel = channel
        inbound = channel.inbound
        writer = MessageWriter(channel.outbound)
        reader = MessageReader(channel.inbound, framer: MessageFramer(version: nil))
    }

    /// HELLO offering `versions`, in a frame of the lowest, then AUTHENTICATE; the peer speaks
    /// the version the coordinator chose from then on. Returns the answer (WELCOME or ERROR).
    func authenticate(id: String, secret: String, versions: [UInt8] = [2], codecs: [String] = ["fp32", "fp16", "q8", "q4", "q2", "sign", "topk"]) async throws -> Message? {
        writer = writer.speaking(versions.min() ?? 2)
        try await writer.send(.hello(Hello(clientID: id, protocolVersions: versions, codecs: codecs, memoryBudget: 0, exampleCount: 100)))
        let answer = try await reader.next()
        guard case .challenge(let nonce, let version)? = answer else { return answer }
        reader.version = version
        writer = writer.speaking(version)
        try await writer.send(.authenticate(signature: Authentication.sign(secret: testSecret(secret), nonce: nonce, clientID: id)))
        return try await reader.next()
    }

    /// Writes `bytes` as they are, below the frame encoder (bad CRCs, bad headers, ...).
    func sendRaw(_ bytes: [UInt8]) async throws {
        let channel = channel.channel
        try await channel.eventLoop.flatSubmit {
            channel.pipeline.context(handlerType: FrameWriter.self).flatMap { context in
                context.writeAndFlush(NIOAny(ByteBuffer(bytes: bytes)))
            }
        }.get()
    }

    /// Messages until the first ERROR (returned) or the end of the connection (nil).
    func nextError() async throws -> ProtocolError.Code? {
        while let message = try await reader.next() {
            if case .error(let code, _) = message { return ProtocolError.Code(rawValue: code) }
        }
        return nil
    }
}

/// Sends raw bytes and returns the error code of the first ERROR frame that comes back.
func sendRaw(_ bytes: [UInt8], port: Int) async throws -> ProtocolError.Code? {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port) { channel in
            channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
        }
    return try await channel.executeThenClose { inbound, outbound in
        try await outbound.write(ByteBuffer(bytes: bytes))
        var decoder = FrameDecoder()
        var framer = MessageFramer(version: nil)
        var buffer = ByteBuffer()
        for try await var chunk in inbound {
            buffer.writeBuffer(&chunk)
            while let frame = try decoder.decodeFrame(&buffer) {
                if case .error(let code, _)? = try framer.receive(frame) { return ProtocolError.Code(rawValue: code) }
            }
        }
        return nil
    }
}

/// A valid-looking update for the 2NN: zero deltas, fp32.
func zeroUpdate(round: UInt32, version: UInt32) throws -> Update {
    let layout = try Network(.mnist2NN).layout
    var g = SeededGenerator(seed: 1)
    let shards = try layout.tensors.map { tensor in
        ShardDelta(index: UInt16(tensor.index), encoded: try [Float](repeating: 0, count: tensor.count).withUnsafeBufferPointer {
            try ShardCodec.encode($0, spec: CodecSpec(parsing: "fp32+raw"), generator: &g)
        })
    }
    return Update(round: round, modelVersion: version, exampleCount: 10, trainingLoss: 1, shards: shards)
}

@Suite(.serialized) struct HostilePeerTests {
    @Test func badPeersAreRefusedAndTheRunCompletes() async throws {
        // Six honest clients and two stragglers that authenticate but never train. Rounds start
        // only when all eight are connected, which the test does after the hostile checks.
        // All eight are selected and six updates are wanted: a round ends when the six honest
        // updates are in, whatever the machine's load (no deadline decides it).
        var config = configuration(clients: 8, perRound: 6, rounds: 2)
        config.overSelection = 1.34
        config.minimumUpdates = 6
        config.roundDeadline = 120
        config.finishGrace = 0.5
        let deployment = try await Deployment.start(config)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 6, seed: 2)
        let daemons = (0..<6).map { deployment.client("device-\($0)", secret: "secret-\($0)", indices: shares[$0]) }
        let clientTasks = daemons.map { daemon in Task { await daemon.run() } }

        let straggler = try await FramedPeer.connect(port: deployment.port)
        guard case .welcome? = try await straggler.authenticate(id: "device-6", secret: "secret-6") else {
            Issue.record("the straggler was not welcomed")
            return
        }

        // Strangers and broken peers, while the round runs.
        let wrongSecret = try await FramedPeer.connect(port: deployment.port)
        #expect(try await wrongSecret.authenticate(id: "device-1", secret: "guess") == .error(code: ProtocolError.Code.authenticationFailed.rawValue, message: "authentication failed for client \"device-1\""))
        let unknown = try await FramedPeer.connect(port: deployment.port)
        if case .error(let code, _)? = try await unknown.authenticate(id: "intruder", secret: "x") {
            #expect(code == ProtocolError.Code.authenticationFailed.rawValue)
        } else {
            Issue.record("an unknown client was not refused")
        }
        #expect(try await sendRaw(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8), port: deployment.port) == .badMagic)
        var oversized = ByteBuffer(bytes: Frame.magic)
        oversized.writeInteger(UInt8(1)); oversized.writeInteger(UInt8(1)); oversized.writeInteger(UInt16(0), endianness: .little)
        oversized.writeInteger(UInt32(1 << 30), endianness: .little); oversized.writeInteger(UInt32(0), endianness: .little)
        #expect(try await sendRaw(Array(oversized.readableBytesView), port: deployment.port) == .frameTooLarge)
        var badCRC = ByteBuffer()
        for frame in MessageFramer().frames(for: .heartbeat(timestamp: 1)) { frame.write(to: &badCRC) }
        badCRC.setInteger(UInt32(0xDEAD_BEEF), at: 12, endianness: .little)
        #expect(try await sendRaw(Array(badCRC.readableBytesView), port: deployment.port) == .badChecksum)
        let newer = try await sendRaw({ var b = badCRC; b.setInteger(UInt8(9), at: 4); return Array(b.readableBytesView) }(), port: deployment.port)
        #expect(newer == .unsupportedVersion)

        // A peer that drops in the middle of a frame.
        var partial = ByteBuffer()
        for frame in MessageFramer().frames(for: .update(try zeroUpdate(round: 1, version: 0))) { frame.write(to: &partial) }
        let dropper = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: deployment.port) { channel in
                channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
            }
        try await dropper.executeThenClose { _, outbound in
            try await outbound.write(partial.getSlice(at: 0, length: 5000)!)
        }

        // The last client joins: rounds begin. Once the straggler holds a task, its update for
        // a round that is not current is refused as stale.
        let second = try await FramedPeer.connect(port: deployment.port)
        guard case .welcome? = try await second.authenticate(id: "device-7", secret: "secret-7") else {
            Issue.record("the second straggler was not welcomed")
            return
        }
        while let message = try await straggler.reader.next() {
            if case .trainingTask = message { break }
        }
        try await straggler.writer.send(.update(try zeroUpdate(round: 77, version: 0)))

        let history = try await deployment.run.value
        for task in clientTasks { await task.value }
        #expect(history.count == 2, "the run completes despite the bad peers")
        #expect(history.allSatisfy { $0.completed == 6 && $0.selected == 8 }, "\(history.map { ($0.selected, $0.completed) })")
        #expect(history.compactMap(\.testMetric).last! > 0.6)
        var sawStale = false
        while let message = try await straggler.reader.next() {
            if case .error(let code, _) = message, code == ProtocolError.Code.staleRound.rawValue { sawStale = true }
        }
        #expect(sawStale, "the stale update was refused with staleRound")
    }
}

@Suite(.serialized) struct ResilienceTests {
    @Test func selectedClientDroppingMidUploadDoesNotStopTheRound() async throws {
        var config = configuration(clients: 5, perRound: 5, rounds: 1)
        config.minimumUpdates = 3
        // Far beyond the round's work even on a loaded machine: a round that ends well before it
        // ended because the dropped client left.
        config.roundDeadline = 600
        let deployment = try await Deployment.start(config)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 4, seed: 3)
        let daemons = (0..<4).map { deployment.client("device-\($0)", secret: "secret-\($0)", indices: shares[$0]) }
        let tasks = daemons.map { daemon in Task { await daemon.run() } }
        let dropper = try await FramedPeer.connect(port: deployment.port)
        guard case .welcome? = try await dropper.authenticate(id: "device-4", secret: "secret-4") else {
            Issue.record("not welcomed")
            return
        }
        var task: TrainingTask?
        while let message = try await dropper.reader.next() {
            if case .trainingTask(let t) = message { task = t; break }
        }
        let assigned = try #require(task)
        // Half of a real update frame, then the connection goes away.
        var bytes = ByteBuffer()
        for frame in MessageFramer(version: 2).frames(for: .update(try zeroUpdate(round: assigned.round, version: assigned.modelVersion))) { frame.write(to: &bytes) }
        try await dropper.channel.channel.writeAndFlush(NIOAny(Frame(version: 2, type: MessageType.update.rawValue, flags: 0, payload: bytes.getSlice(at: 16, length: 100)!)))
            .get()
        try await dropper.channel.channel.close()
        let history = try await deployment.run.value
        for t in tasks { await t.value }
        #expect(history.count == 1)
        #expect(history[0].completed == 4 && history[0].selected == 5, "round 1: \(history[0])")
        #expect(history[0].seconds < 300, "the round ended when the dropped client left, not at the deadline")
    }

    @Test func clientsReconnectToARestartedCoordinator() async throws {
        var config = configuration(clients: 2, perRound: 2, rounds: 50)
        let first = try await Deployment.start(config)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 2, seed: 4)
        let daemons = (0..<2).map { i -> ClientDaemon in
            var c = ClientConfiguration(clientID: "device-\(i)", secret: testSecret("secret-\(i)"), data: DatasetSlice(dataset: Data6k.train, indices: shares[i]))
            c.port = first.port
            c.reconnect = true
            c.initialBackoff = 0.05
            return ClientDaemon(configuration: c)
        }
        let tasks = daemons.map { daemon in Task { await daemon.run() } }
        // The first coordinator dies after one round without saying goodbye: stop its task.
        while await first.coordinator.history.isEmpty { try await Task.sleep(nanoseconds: 10_000_000) }
        first.run.cancel()
        _ = try? await first.run.value
        // A new coordinator on the same port; the daemons find it on their own.
        config.port = first.port
        config.rounds = 2
        let second = try await Deployment.start(config)
        let history = try await second.run.value
        for t in tasks { await t.value }
        #expect(history.count == 2 && history.allSatisfy { $0.completed == 2 })
        for daemon in daemons { #expect(await daemon.completedRounds.count >= 3, "rounds with the first coordinator, then two with the second") }
    }
}

@Suite(.serialized) struct ShardAssignmentTests {
    @Test func aSmallDeviceTrainsItsShardsOnly() async throws {
        let deployment = try await Deployment.start(configuration(clients: 2, perRound: 2, rounds: 2))
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 2, seed: 5)
        var small = ClientConfiguration(clientID: "device-0", secret: testSecret("secret-0"), data: DatasetSlice(dataset: Data6k.train, indices: shares[0]))
        small.port = deployment.port
        small.reconnect = false
        small.memoryBudget = UInt64(199_210 * 4 + 12 * 40_000)  // room for dense2.weight only
        let daemons = [ClientDaemon(configuration: small), deployment.client("device-1", secret: "secret-1", indices: shares[1])]
        let tasks = daemons.map { daemon in Task { await daemon.run() } }
        let history = try await deployment.run.value
        for t in tasks { await t.value }
        #expect(history.count == 2 && history.allSatisfy { $0.completed == 2 && $0.refused == 0 }, "\(history)")
        // The small device uploads one shard: its update is far smaller than the full one.
        #expect(history[0].uplinkBytes < 199_210 * 4 + 40_000 * 4 + 1000)
        #expect(await daemons[0].completedRounds == [1, 2])
    }
}

import FedStore

@Suite(.serialized) struct ResumeTests {
    @Test func aRestartedCoordinatorContinuesFromItsLastCommittedRound() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("fedresume-\(UUID().uuidString).sqlite").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        var config = configuration(clients: 2, perRound: 2, rounds: 2)
        config.databasePath = path
        config.serverOptimizer = ServerOptimizer.Settings(kind: .fedAdam, learningRate: 0.02)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 2, seed: 6)

        func runDeployment(rounds: Int) async throws -> (history: [CoordinatorRound], coordinator: Coordinator) {
            config.rounds = rounds
            let deployment = try await Deployment.start(config)
            let tasks = (0..<2).map { i in Task { await deployment.client("device-\(i)", secret: "secret-\(i)", indices: shares[i]).run() } }
            let history = try await deployment.run.value
            for t in tasks { await t.value }
            return (history, deployment.coordinator)
        }

        let first = try await runDeployment(rounds: 2)
        #expect(first.history.map(\.round) == [1, 2])
        let committed = try #require(try RunStore(path: path).lastCheckpoint())
        #expect(committed.round == 2)
        #expect(committed.modelSHA256 == RunStore.sha256(await first.coordinator.global))
        #expect(!committed.optimizerV.isEmpty, "FedAdam's moments are in the checkpoint")

        // A new process on the same database: same model, continues at round 3.
        config.rounds = 4
        let resumed = try Coordinator(configuration: config, test: Data6k.test)
        #expect(await resumed.firstRound == 3)
        #expect(RunStore.sha256(await resumed.global) == committed.modelSHA256)
        #expect(await resumed.modelVersion == committed.modelVersion)

        let second = try await runDeployment(rounds: 4)
        #expect(second.history.map(\.round) == [3, 4])
        let rounds = try RunStore(path: path).rounds()
        #expect(rounds.map(\.round) == [1, 2, 3, 4], "no committed round lost or duplicated")
        #expect(rounds.last!.testMetric! > rounds.first!.testMetric!)
        let participants = try RunStore(path: path).participations(round: 3)
        #expect(participants.map(\.client).sorted() == ["device-0", "device-1"] && participants.allSatisfy { $0.state == "accepted" && $0.examples == 3000 })
        #expect(participants.allSatisfy { ($0.durationSeconds ?? -1) > 0 }, "task-to-update durations are recorded")
    }
}

@Suite(.serialized) struct MetricsTests {
    func get(_ path: String, port: Int) async throws -> String {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
            }
        return try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: "GET \(path) HTTP/1.1\r\nHost: x\r\n\r\n"))
            var response = ""
            for try await chunk in inbound { response += String(buffer: chunk) }
            return response
        }
    }

    @Test func prometheusEndpointReportsTheRun() async throws {
        // Two daemons and a peer the test drives: it answers round 1 at once and holds its
        // round-2 update until the metrics are read, so round 2 cannot end in between. No
        // deadline or timing decides anything: every count below is exact.
        var config = configuration(clients: 3, perRound: 3, rounds: 2)
        config.metricsPort = 0
        config.minimumUpdates = 3
        config.roundDeadline = 600
        let deployment = try await Deployment.start(config)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 2, seed: 7)
        // A refused stranger, counted in the metrics.
        _ = try await FramedPeer.connect(port: deployment.port).authenticate(id: "nobody", secret: "x")
        let held = try await FramedPeer.connect(port: deployment.port)
        _ = try await held.authenticate(id: "device-2", secret: "secret-2")
        let tasks = (0..<2).map { i in Task { await deployment.client("device-\(i)", secret: "secret-\(i)", indices: shares[i]).run() } }
        func nextTask() async throws -> TrainingTask? {
            while let message = try await held.reader.next() {
                if case .trainingTask(let task) = message { return task }
            }
            return nil
        }
        let first = try #require(try await nextTask())
        try await held.writer.send(.update(try zeroUpdate(round: first.round, version: first.modelVersion)))
        let second = try #require(try await nextTask())
        #expect(second.round == 2)
        let port = try #require(await deployment.coordinator.metricsPort)
        // Round 2's two daemon updates arrive on their own time: wait for them (5 accepted).
        var response = ""
        for _ in 0..<600 {
            response = try await get("/metrics", port: port)
            if response.contains("fed_updates_accepted_total 5") { break }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        #expect(response.hasPrefix("HTTP/1.1 200 OK"))
        for line in ["fed_updates_accepted_total 5", "fed_updates_refused_total 1", "fed_rounds_total 1", "fed_round 1",
                     "fed_connected_clients 3", "# HELP fed_test_accuracy"] {
            #expect(response.contains(line), "missing \(line) in\n\(response)")
        }
        try await held.writer.send(.update(try zeroUpdate(round: second.round, version: second.modelVersion)))
        #expect(try await get("/other", port: port).hasPrefix("HTTP/1.1 404"))
        _ = try await deployment.run.value
        for t in tasks { await t.value }
    }
}
