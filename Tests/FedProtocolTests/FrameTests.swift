import Foundation
import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing
@testable import FedProtocol

func bytes(of frames: [Frame]) -> ByteBuffer {
    var buffer = ByteBuffer()
    for frame in frames { frame.write(to: &buffer) }
    return buffer
}

extension Message {
    /// What this message reads as on a connection of `version` (version 1 drops WELCOME's
    /// limits and GOODBYE's code).
    func asVersion(_ version: UInt8) -> Message {
        guard version < 2 else { return self }
        switch self {
        case .welcome(var welcome):
            welcome.limits = nil
            return .welcome(welcome)
        case .goodbye(let goodbye):
            return .goodbye(Goodbye(.finished, reason: goodbye.reason))
        default:
            return self
        }
    }
}

let sampleMessages: [Message] = [
    .hello(Hello(clientID: "device-17", protocolVersions: [1], codecs: ["q8", "topk:0.01+q8"], memoryBudget: 64 << 20, exampleCount: 600)),
    .challenge(nonce: Array(0..<32), version: 1),
    .authenticate(signature: Array(repeating: 0xAB, count: 64)),
    .welcome(Welcome(sessionID: 42, heartbeatMilliseconds: 5000, model: "784|10|dense:200,relu,dense:200,relu,dense:10", limits: Limits(maximumFramePayload: 1 << 20, maximumMessage: 64 << 20))),
    .modelShard(ModelShard(round: 3, modelVersion: 3, shardIndex: 1, sha256: Array(repeating: 7, count: 32), encoded: [1, 2, 3, 4, 5])),
    .trainingTask(TrainingTask(round: 3, modelVersion: 3, shards: [0, 1, 2, 3, 4, 5], localEpochs: 1, batchSize: 10, learningRate: 0.1, codec: "q8", deadlineMilliseconds: 30_000)),
    .update(Update(round: 3, modelVersion: 3, exampleCount: 600, trainingLoss: 0.25, shards: [ShardDelta(index: 0, encoded: [9, 9]), ShardDelta(index: 5, encoded: [])])),
    .acknowledgement(type: 7, round: 3),
    .error(code: ProtocolError.Code.staleRound.rawValue, message: "update for round 2, the coordinator is in round 3"),
    .heartbeat(timestamp: 1_700_000_000_000),
    .goodbye(Goodbye(.goingAway, reason: "shutting down")),
]

@Suite struct FrameTests {
    @Test func decoderHandlesEveryByteBoundary() throws {
        // The verifier feeds the input one byte at a time, all at once and shuffled with others.
        let framer = MessageFramer()
        let pairs: [(ByteBuffer, [Frame])] = sampleMessages.map { message in
            let frames = framer.frames(for: message)
            return (bytes(of: frames), frames)
        }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { FrameDecoder() }
    }

    @Test(arguments: [1, 2] as [UInt8])
    func everyMessageRoundTrips(version: UInt8) throws {
        var framer = MessageFramer(version: version)
        for message in sampleMessages {
            var decoder = FrameDecoder()
            var buffer = bytes(of: framer.frames(for: message))
            #expect(buffer.getInteger(at: 4, as: UInt8.self) == version)
            var decoded: Message?
            while let frame = try decoder.decodeFrame(&buffer) { decoded = try framer.receive(frame) }
            #expect(decoded == message.asVersion(version))
            #expect(buffer.readableBytes == 0)
        }
    }

    /// Version 1 has no limits in WELCOME and no code in GOODBYE (every GOODBYE ends the run).
    @Test func versionOneLayouts() throws {
        var v1 = MessageFramer(version: 1)
        let goodbye = v1.frames(for: .goodbye(Goodbye(.goingAway, reason: "bye")))
        #expect(goodbye[0].payload.readableBytes == 2 + 3)
        #expect(try v1.receive(goodbye[0]) == .goodbye(Goodbye(.finished, reason: "bye")))
        var v2 = MessageFramer(version: 2)
        #expect(v2.frames(for: .goodbye(Goodbye(.goingAway, reason: "bye")))[0].payload.readableBytes == 1 + 2 + 3)
        // A framer speaking one version refuses the other's frames; one not yet told accepts both.
        #expect { try v2.receive(goodbye[0]) } throws: { ($0 as? ProtocolError)?.code == .unsupportedVersion }
        var open = MessageFramer(version: nil)
        #expect(try open.receive(goodbye[0]) == .goodbye(Goodbye(.finished, reason: "bye")))
    }

    @Test func aFrameOfAnotherTypeInsideAContinuedMessageIsInterleaved() throws {
        var framer = MessageFramer(maximumFramePayload: 100)
        let first = framer.frames(for: .goodbye(Goodbye(.finished, reason: String(repeating: "x", count: 300))))[0]
        _ = try framer.receive(first)
        let heartbeat = framer.frames(for: .heartbeat(timestamp: 1))[0]
        #expect { try framer.receive(heartbeat) } throws: { ($0 as? ProtocolError)?.code == .interleavedFrame }
    }

    @Test func largeMessagesAreSplitAndJoined() throws {
        var framer = MessageFramer(maximumFramePayload: 1000)
        let big = Message.modelShard(ModelShard(round: 1, modelVersion: 1, shardIndex: 0, sha256: Array(repeating: 1, count: 32), encoded: (0..<10_000).map { UInt8($0 % 251) }))
        let frames = framer.frames(for: big)
        #expect(frames.count == 11)
        #expect(frames.dropLast().allSatisfy(\.isContinued) && !frames.last!.isContinued)
        var result: Message?
        for frame in frames { result = try framer.receive(frame) }
        #expect(result == big)
    }

    @Test func tooLargeReassembledMessageIsRefused() throws {
        var framer = MessageFramer(maximumFramePayload: 100, maximumMessage: 250)
        let frames = MessageFramer(maximumFramePayload: 100).frames(for: .goodbye(Goodbye(.finished, reason: String(repeating: "x", count: 400))))
        #expect { for frame in frames { _ = try framer.receive(frame) } } throws: { ($0 as? ProtocolError)?.code == .messageTooLarge }
    }

    func decodeError(_ buffer: ByteBuffer, maximumPayload: Int = Frame.defaultMaximumPayload) -> ProtocolError.Code? {
        var decoder = FrameDecoder(maximumPayload: maximumPayload)
        var b = buffer
        do {
            while try decoder.decodeFrame(&b) != nil {}
            return nil
        } catch let error as ProtocolError {
            return error.code
        } catch {
            return nil
        }
    }

    @Test func garbageIsRefusedAtOnce() {
        #expect(decodeError(ByteBuffer(string: "GET / HTTP/1.1\r\n")) == .badMagic)
        #expect(decodeError(ByteBuffer(bytes: [0x46, 0x00])) == .badMagic, "two bytes are enough to tell")
    }

    @Test func wrongVersionOversizeAndBadChecksum() {
        let good = bytes(of: MessageFramer().frames(for: .heartbeat(timestamp: 1)))
        var version = good
        version.setInteger(Frame.currentVersion + 1, at: 4)
        #expect(decodeError(version) == .unsupportedVersion)
        version.setInteger(UInt8(0), at: 4)
        #expect(decodeError(version) == .unsupportedVersion)
        #expect(decodeError(good, maximumPayload: 4) == .frameTooLarge)
        var corrupt = good
        corrupt.setInteger(UInt8(0xFF), at: Frame.headerSize)
        #expect(decodeError(corrupt) == .badChecksum)
        var flags = good
        flags.setInteger(UInt16(0x8000), at: 6, endianness: .little)
        #expect(decodeError(flags) == .unknownFlags)
    }

    @Test func oversizedFrameIsRefusedBeforeItsPayloadArrives() {
        var header = ByteBuffer(bytes: Frame.magic)
        header.writeInteger(UInt8(1))
        header.writeInteger(UInt8(9))
        header.writeInteger(UInt16(0), endianness: .little)
        header.writeInteger(UInt32.max, endianness: .little)
        header.writeInteger(UInt32(0), endianness: .little)
        #expect(decodeError(header) == .frameTooLarge)
    }

    @Test func malformedPayloadsAreRefused() {
        #expect { try Message.decode(type: 99, payload: ByteBuffer()) } throws: { ($0 as? ProtocolError)?.code == .unknownMessageType }
        for message in sampleMessages {
            var payload = ByteBuffer()
            message.encodePayload(into: &payload)
            if payload.readableBytes > 0 {
                let short = payload.getSlice(at: 0, length: payload.readableBytes - 1)!
                #expect { try Message.decode(type: message.type.rawValue, payload: short) } throws: { ($0 as? ProtocolError)?.code == .malformedMessage }
            }
            var long = payload
            long.writeInteger(UInt8(0))
            #expect { try Message.decode(type: message.type.rawValue, payload: long) } throws: { ($0 as? ProtocolError)?.code == .malformedMessage }
        }
        // A length prefix larger than the payload is refused without allocating it.
        var lying = ByteBuffer()
        lying.writeInteger(UInt32(1), endianness: .little)
        lying.writeInteger(UInt32(1), endianness: .little)
        lying.writeInteger(UInt16(0), endianness: .little)
        lying.writeBytes([UInt8](repeating: 0, count: 32))
        lying.writeInteger(UInt32.max, endianness: .little)
        #expect { try Message.decode(type: MessageType.modelShard.rawValue, payload: lying) } throws: { ($0 as? ProtocolError)?.code == .malformedMessage }
    }

    @Test func authenticationVerifiesTheKeyAndTheNonce() throws {
        let (secret, publicKey) = Authentication.generate()
        let (other, otherKey) = Authentication.generate()
        #expect(try Authentication.publicKey(ofSecret: secret) == publicKey)
        #expect(secret != other && publicKey != otherKey)
        let nonce = Authentication.nonce()
        let signature = try Authentication.sign(secret: secret, nonce: nonce, clientID: "dev1")
        #expect(signature.count == 64)
        #expect(Authentication.verify(signature: signature, publicKey: publicKey, nonce: nonce, clientID: "dev1"))
        #expect(!Authentication.verify(signature: signature, publicKey: otherKey, nonce: nonce, clientID: "dev1"))
        #expect(!Authentication.verify(signature: signature, publicKey: publicKey, nonce: Authentication.nonce(), clientID: "dev1"), "a replayed signature fails against a fresh nonce")
        #expect(!Authentication.verify(signature: signature, publicKey: publicKey, nonce: nonce, clientID: "dev2"))
        var flipped = signature
        flipped[10] ^= 1
        #expect(!Authentication.verify(signature: flipped, publicKey: publicKey, nonce: nonce, clientID: "dev1"))
        #expect(!Authentication.verify(signature: signature, publicKey: "fedpk1:zz", nonce: nonce, clientID: "dev1"))
        // What is printed is what is parsed; anything else is refused with a clear error.
        #expect(secret.hasPrefix("fedsk1:") && secret.count == 7 + 64)
        for bad in ["", "secret", "fedsk1:", "fedsk1:" + String(repeating: "g", count: 64), publicKey] {
            #expect(throws: ProtocolError.self) { try Authentication.sign(secret: bad, nonce: nonce, clientID: "dev1") }
        }
    }

    @Test func helloHexExample() {
        // HELLO travels in a frame of the lowest version it offers.
        let frames = MessageFramer(version: 1).frames(for: .hello(Hello(clientID: "dev1", protocolVersions: [1, 2], codecs: ["q8"], memoryBudget: 0, exampleCount: 600)))
        let hex = bytes(of: frames).readableBytesView.map { String(format: "%02x", $0) }.joined(separator: " ")
        #expect(hex == "46 45 44 4c 01 01 00 00 1c 00 00 00 44 7c e7 4d 04 00 64 65 76 31 02 00 01 02 01 00 02 00 71 38 00 00 00 00 00 00 00 00 58 02 00 00")
    }
}

@Suite struct ProtocolExampleTests {
    @Test func smallUpdateHexExample() {
        // An update for round 1 from model version 0: 600 examples, loss 0.5, one shard (index 1)
        // whose delta [0.5, -0.25] is encoded q8+raw.
        let shard: [UInt8] = [
            0x46, 0x43, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
            0x02, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0xa5, 0x53, 0x54, 0xd3,
            0x00, 0x00, 0x80, 0xbe, 0xc1, 0xc0, 0x40, 0x3b, 0xff, 0x00,
        ]
        let frames = MessageFramer(version: 2).frames(for: .update(Update(round: 1, modelVersion: 0, exampleCount: 600, trainingLoss: 0.5, shards: [ShardDelta(index: 1, encoded: shard)])))
        let hex = bytes(of: frames).readableBytesView.map { String(format: "%02x", $0) }.joined(separator: " ")
        #expect(hex == "46 45 44 4c 02 07 00 00 42 00 00 00 2d c2 16 7f 01 00 00 00 00 00 00 00 58 02 00 00 00 00 00 3f 01 00 01 00 2a 00 00 00 46 43 01 02 00 00 00 00 00 01 00 00 02 00 00 00 02 00 00 00 0a 00 00 00 0a 00 00 00 a5 53 54 d3 00 00 80 be c1 c0 40 3b ff 00")
    }

    /// The connection's frame writer sends the header and then the payload buffer itself: the
    /// same bytes as the encoder, with the payload never copied.
    @Test func frameWriterSendsThePayloadBufferItself() throws {
        let channel = EmbeddedChannel(handler: FrameWriter())
        let payload = ByteBuffer(bytes: (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        let frame = Frame(type: 3, flags: Frame.flagContinued, payload: payload)
        try channel.writeOutbound(frame)
        let header = try #require(try channel.readOutbound(as: ByteBuffer.self))
        let body = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        var expected = ByteBuffer()
        try FrameEncoder().encode(data: frame, out: &expected)
        var written = header
        written.writeImmutableBuffer(body)
        #expect(written == expected)
        #expect(header.readableBytes == Frame.headerSize)
        let shared = body.withUnsafeReadableBytes { b in payload.withUnsafeReadableBytes { p in b.baseAddress == p.baseAddress } }
        #expect(shared, "the payload was copied")
        _ = try channel.finish()
    }

    /// A frame framed once for many connections carries its CRC-32 computed once; the bytes
    /// are those of the plain frame, and changing the payload drops the kept checksum.
    @Test func keptChecksumWritesTheSameBytes() {
        let payload = ByteBuffer(bytes: (0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 13) })
        let plain = Frame(type: 4, payload: payload)
        var kept = plain.withChecksum()
        var a = ByteBuffer(), b = ByteBuffer()
        plain.write(to: &a)
        kept.write(to: &b)
        #expect(a == b && kept == plain && kept.crc == plain.crc)
        kept.payload = ByteBuffer(bytes: [1, 2, 3])
        #expect(kept.crc == Frame(type: 4, payload: ByteBuffer(bytes: [1, 2, 3])).crc)
    }
}
