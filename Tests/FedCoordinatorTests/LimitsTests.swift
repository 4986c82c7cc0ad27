import FedClient
import FedModel
import FedProtocol
import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import FedCoordinator

/// Connection limits: too many connections, slow-loris peers, silent peers, oversized frames.
@Suite(.serialized, .timeLimit(.minutes(2))) struct LimitsTests {
    /// A raw TCP connection that sends bytes on demand and reports the first ERROR it receives.
    final class RawPeer: @unchecked Sendable {
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        init(port: Int) async throws {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: port) { channel in
                    channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
                }
        }
        deinit {
            channel.outbound.finish()
            channel.channel.close(promise: nil)
        }
        func send(_ bytes: [UInt8]) async throws { try await channel.outbound.write(ByteBuffer(bytes: bytes)) }
        /// The first ERROR code received, or nil if the connection closed without one.
        func firstError() async throws -> ProtocolError.Code? {
            var decoder = FrameDecoder()
            var framer = MessageFramer(version: nil)
            var buffer = ByteBuffer()
            for try await var chunk in channel.inbound {
                buffer.writeBuffer(&chunk)
                while let frame = try decoder.decodeFrame(&buffer) {
                    if case .error(let code, _)? = try framer.receive(frame) { return ProtocolError.Code(rawValue: code) }
                }
            }
            return nil
        }
    }

    func helloBytes(_ id: String) -> [UInt8] {
        let frames = MessageFramer().frames(for: .hello(Hello(clientID: id, protocolVersions: [2], codecs: ["fp32", "fp16", "q8", "q4", "q2", "sign", "topk"], memoryBudget: 0, exampleCount: 1)))
        var buffer = ByteBuffer()
        let encoder = FrameEncoder()
        for frame in frames { try! encoder.encode(data: frame, out: &buffer) }
        return Array(buffer.readableBytesView)
    }

    @Test func connectionsBeyondTheLimitAreTurnedAway() async throws {
        var config = configuration(clients: 2, perRound: 2, rounds: 1)
        config.maximumConnections = 3
        let deployment = try await Deployment.start(config)
        defer { deployment.run.cancel() }
        var held: [RawPeer] = []
        for _ in 0..<3 { held.append(try await RawPeer(port: deployment.port)) }
        for _ in 0..<50 where deployment.coordinator.connectionCount < 3 { try await Task.sleep(nanoseconds: 20_000_000) }
        let extra = try await RawPeer(port: deployment.port)
        #expect(try await extra.firstError() == .overloaded)
        // Closing one makes room again: the next connection is served (and times out politely
        // in its handshake instead of being turned away).
        held.removeLast()
        for _ in 0..<100 where deployment.coordinator.connectionCount > 2 { try await Task.sleep(nanoseconds: 20_000_000) }
        let next = try await RawPeer(port: deployment.port)
        try await next.send(helloBytes("device-0"))
        guard case .challenge? = try await FramedPeerReader(next).message() else {
            Issue.record("a connection within the limit was not served")
            return
        }
        _ = held
    }

    @Test func aSlowLorisPeerIsCutOff() async throws {
        var config = configuration(clients: 2, perRound: 2, rounds: 1)
        config.readTimeout = 1
        config.handshakeTimeout = 30 // so that the read timeout, not the handshake's, decides
        let deployment = try await Deployment.start(config)
        defer { deployment.run.cancel() }
        let peer = try await RawPeer(port: deployment.port)
        let hello = helloBytes("device-0")
        let start = Date()
        let dribble = Task {
            for byte in hello {
                try await peer.send([byte])
                try await Task.sleep(nanoseconds: 500_000_000)
            }
        }
        defer { dribble.cancel() }
        #expect(try await peer.firstError() == .timeout)
        // The whole HELLO would take over 20 s at this pace; the 1 s read timeout ends it long
        // before (bounded generously: on a loaded machine the next byte may come late).
        let elapsed = Date().timeIntervalSince(start)
        #expect(elapsed < 12, "cut off after \(elapsed) s")
    }

    @Test func aSilentClientIsDroppedButALiveOneStays() async throws {
        // Rounds wait for two clients. First an authenticated peer that never answers the
        // heartbeats sits alone past the idle timeout; then a live daemon (which echoes them)
        // does the same, and stays.
        var config = configuration(clients: 3, perRound: 2, rounds: 1)
        config.minimumClients = 2
        // Generous against a loaded machine: the live daemon must answer within 3 s.
        config.heartbeatMilliseconds = 200
        config.idleTimeout = 3
        let deployment = try await Deployment.start(config)
        defer { deployment.run.cancel() }
        let silent = try await FramedPeer.connect(port: deployment.port)
        guard case .welcome? = try await silent.authenticate(id: "device-2", secret: "secret-2") else {
            Issue.record("not welcomed")
            return
        }
        let start = Date()
        #expect(try await silent.nextError() == .timeout)
        #expect(Date().timeIntervalSince(start) < 15)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 3, seed: 1)
        let live = deployment.client("device-0", secret: "secret-0", indices: shares[0])
        let liveTask = Task { await live.run() }
        try await Task.sleep(nanoseconds: 4_000_000_000)
        // The live daemon is still connected: with a second client the round runs with both.
        let second = deployment.client("device-1", secret: "secret-1", indices: shares[1])
        let secondTask = Task { await second.run() }
        let rounds = try await deployment.rounds()
        #expect(rounds.count == 1 && rounds[0].completed == 2)
        await secondTask.value
        await liveTask.value
    }
}

/// Reads whole messages from a ``LimitsTests/RawPeer``.
struct FramedPeerReader {
    let peer: LimitsTests.RawPeer
    init(_ peer: LimitsTests.RawPeer) { self.peer = peer }
    func message() async throws -> Message? {
        var decoder = FrameDecoder()
        var framer = MessageFramer(version: nil)
        var buffer = ByteBuffer()
        for try await var chunk in peer.channel.inbound {
            buffer.writeBuffer(&chunk)
            while let frame = try decoder.decodeFrame(&buffer) {
                if let message = try framer.receive(frame) { return message }
            }
        }
        return nil
    }
}
