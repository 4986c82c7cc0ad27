import FedCodec
import FedModel
import FedProtocol
import Foundation
import NIOCore
import Testing
@testable import FedCoordinator

/// Every frame error after WELCOME gets its typed ERROR before the connection closes, every
/// time: the ERROR is queued behind the outbox and the writer drains it before the close
/// (Protocol.md §5). Before, 42 of 92 such errors were closed silently, the close racing the
/// write; here each case runs several times on fresh connections and every one must see it.
@Suite(.serialized) struct WireErrorTests {
    /// Frame bytes with any header fields, and a CRC that is right unless told otherwise.
    static func frame(version: UInt8 = 2, type: UInt8, flags: UInt16 = 0, payload: [UInt8], length: UInt32? = nil, badCRC: Bool = false) -> [UInt8] {
        var buffer = ByteBuffer(bytes: Frame.magic)
        buffer.writeInteger(version)
        buffer.writeInteger(type)
        buffer.writeInteger(flags, endianness: .little)
        buffer.writeInteger(length ?? UInt32(payload.count), endianness: .little)
        let crc = Frame(type: type, payload: ByteBuffer(bytes: payload)).crc
        buffer.writeInteger(badCRC ? crc ^ 1 : crc, endianness: .little)
        buffer.writeBytes(payload)
        return Array(buffer.readableBytesView)
    }

    static let heartbeat = [UInt8](repeating: 1, count: 8)

    /// (name, bytes sent after WELCOME, the code expected on a version-2 connection).
    static let cases: [(String, [UInt8], ProtocolError.Code)] = [
        ("bad CRC", frame(type: 10, payload: heartbeat, badCRC: true), .badChecksum),
        ("bad magic", Array("FEDX".utf8) + Array(frame(type: 10, payload: heartbeat).dropFirst(4)), .badMagic),
        ("frame version 3", frame(version: 3, type: 10, payload: heartbeat), .unsupportedVersion),
        ("a version-1 frame on a version-2 connection", frame(version: 1, type: 10, payload: heartbeat), .unsupportedVersion),
        ("unknown message type", frame(type: 99, payload: heartbeat), .unknownMessageType),
        ("unknown flag bit", frame(type: 10, flags: 0x0100, payload: heartbeat), .unknownFlags),
        ("frame of another type inside a continued message", frame(type: 7, flags: 1, payload: [1, 2, 3]) + frame(type: 10, payload: heartbeat), .interleavedFrame),
        ("malformed payload", frame(type: 10, payload: [1, 2, 3]), .malformedMessage),
        ("frame over max_frame_bytes", frame(type: 10, payload: [], length: 4097), .frameTooLarge),
        ("message over max_message_bytes", (0..<5).flatMap { _ in frame(type: 7, flags: 1, payload: [UInt8](repeating: 0, count: 4096)) }, .messageTooLarge),
        ("a client sending ACKNOWLEDGEMENT", frame(type: 8, payload: [7, 1, 0, 0, 0]), .unexpectedMessage),
    ]

    static func deployment() async throws -> Deployment {
        var config = configuration(clients: 40, perRound: 1, rounds: 1) // no round starts: 40 never connect at once
        config.maximumFramePayload = 4096
        config.maximumMessage = 16384
        return try await Deployment.start(config)
    }

    @Test func everyFrameErrorAfterWelcomeIsAnsweredBeforeTheClose() async throws {
        let deployment = try await Self.deployment()
        defer { deployment.run.cancel() }
        var client = 0
        for (name, bytes, code) in Self.cases {
            for _ in 0..<3 {
                let peer = try await FramedPeer.connect(port: deployment.port)
                guard case .welcome(let welcome)? = try await peer.authenticate(id: "device-\(client)", secret: "secret-\(client)") else {
                    Issue.record("\(name): not welcomed")
                    return
                }
                client = (client + 1) % 40
                #expect(welcome.limits == Limits(maximumFramePayload: 4096, maximumMessage: 16384), "WELCOME carries the limits")
                try await peer.sendRaw(bytes)
                #expect(try await peer.nextError() == code, "\(name)")
                if code != .unexpectedMessage {
                    #expect(try await peer.reader.next() == nil, "\(name): the connection closes after the ERROR")
                }
            }
        }
    }

    /// A peer that keeps sending after its bad frame (the rest of a flood, a pipelined
    /// message) still reads its ERROR: the coordinator half-closes after the ERROR and drains
    /// what is in flight before closing, so no TCP reset discards the ERROR on the peer's side.
    @Test func theErrorArrivesEvenWhenThePeerKeepsSending() async throws {
        let deployment = try await Self.deployment()
        defer { deployment.run.cancel() }
        for i in 0..<10 {
            let peer = try await FramedPeer.connect(port: deployment.port)
            guard case .welcome? = try await peer.authenticate(id: "device-\(i)", secret: "secret-\(i)") else {
                Issue.record("not welcomed")
                return
            }
            let flood = [UInt8](repeating: 0x55, count: 1 << 20)
            try await peer.sendRaw(Self.frame(type: 10, payload: Self.heartbeat, badCRC: true) + flood)
            #expect(try await peer.nextError() == .badChecksum, "attempt \(i)")
        }
    }

    /// A version-1 connection gets the codes version 1 has: malformedMessage for the three
    /// version 2 added, as version-1 coordinators sent; and no limits in WELCOME.
    @Test func versionOnePeersGetVersionOneCodes() async throws {
        let deployment = try await Self.deployment()
        defer { deployment.run.cancel() }
        for (i, (flags, type)) in [(UInt16(0x0100), UInt8(10)), (UInt16(1), UInt8(7))].enumerated() {
            let peer = try await FramedPeer.connect(port: deployment.port)
            guard case .welcome(let welcome)? = try await peer.authenticate(id: "device-\(i)", secret: "secret-\(i)", versions: [1]) else {
                Issue.record("a version-1 peer was not welcomed")
                return
            }
            #expect(welcome.limits == nil)
            var bytes = Self.frame(version: 1, type: type, flags: flags, payload: [1, 2, 3])
            if type == 7 { bytes += Self.frame(version: 1, type: 10, payload: Self.heartbeat) }
            try await peer.sendRaw(bytes)
            #expect(try await peer.nextError() == .malformedMessage)
        }
    }

    @Test func helloMustListTheTaskCodec() async throws {
        var config = configuration(clients: 40, perRound: 1, rounds: 1)
        config.uplinkCodec = try CodecSpec(parsing: "topk:0.1+q8")
        let deployment = try await Deployment.start(config)
        defer { deployment.run.cancel() }
        for codecs in [[], ["fp32"], ["q8"], ["q4", "topk"]] {
            let peer = try await FramedPeer.connect(port: deployment.port)
            guard case .error(let code, let message)? = try await peer.authenticate(id: "device-1", secret: "secret-1", codecs: codecs) else {
                Issue.record("a client listing \(codecs) was not refused")
                continue
            }
            #expect(code == ProtocolError.Code.unsupportedCodec.rawValue, "\(codecs): \(message)")
        }
        let peer = try await FramedPeer.connect(port: deployment.port)
        guard case .welcome? = try await peer.authenticate(id: "device-1", secret: "secret-1", codecs: ["q8", "topk", "future-codec"]) else {
            Issue.record("a client listing q8 and topk was refused")
            return
        }
    }

    /// A low-rank codec's warm starts travel only in version 4: a client must list `lowrank`
    /// and speak version 4; one that does is welcomed and its task carries the warm starts.
    @Test func aLowRankCodecNeedsVersionFourAndItsName() async throws {
        var config = configuration(clients: 1, perRound: 1, rounds: 1)
        config.uplinkCodec = try CodecSpec(parsing: "lowrank:2+q8+ef")
        let deployment = try await Deployment.start(config)
        defer { deployment.run.cancel() }
        for (codecs, versions) in [(["q8"], [UInt8(4)]), (["q8", "topk"], [4]), (["q8", "lowrank"], [1, 2, 3])] {
            let peer = try await FramedPeer.connect(port: deployment.port)
            guard case .error(let code, let message)? = try await peer.authenticate(id: "device-0", secret: "secret-0", versions: versions, codecs: codecs) else {
                Issue.record("a client listing \(codecs) at versions \(versions) was not refused")
                continue
            }
            #expect(code == ProtocolError.Code.unsupportedCodec.rawValue, "\(codecs) \(versions): \(message)")
        }
        let peer = try await FramedPeer.connect(port: deployment.port)
        guard case .welcome? = try await peer.authenticate(id: "device-0", secret: "secret-0", versions: [3, 4], codecs: ["q8", "lowrank"]) else {
            Issue.record("a version-4 client listing q8 and lowrank was refused")
            return
        }
        while let message = try await peer.reader.next() {
            guard case .trainingTask(let task) = message else { continue }
            // Every weight matrix that rank-2 factors shrink, each with an orthonormal
            // columns x 2 warm start.
            let layout = try Network(config.model).layout
            let factored = layout.tensors.filter { $0.columns != nil && config.uplinkCodec.factorRank(count: $0.count, columns: $0.columns) != nil }
            #expect(task.warmStarts.map(\.shardIndex) == factored.map { UInt16($0.index) } && !factored.isEmpty)
            for start in task.warmStarts {
                #expect(start.rank == 2 && Int(start.columns) == layout.tensors[Int(start.shardIndex)].columns && start.values.count == 2 * Int(start.columns))
                let norm = (0..<Int(start.columns)).reduce(Float(0)) { $0 + start.values[$1 * 2] * start.values[$1 * 2] }
                #expect(abs(norm - 1) < 1e-4)
            }
            return
        }
        Issue.record("no TRAINING_TASK arrived")
    }
}
