import Crypto
import FedProtocol
import NIOCore
@testable import FedCodec

/// The frame cases of the vectors file: every message type in version 2 (and the version-1
/// layouts that differ), a message split over frames, and invalid frames with the ERROR code
/// a receiver answers them with.
enum FrameVectorCases {
    /// A fixed client key, so AUTHENTICATE's signature (Ed25519 is deterministic) is a vector too.
    static let secret = try! Authentication.secret(fromSeed: Array(SHA256.hash(data: Array("conformance".utf8))))
    static let nonce: [UInt8] = Array(0..<32)

    static func frames(_ message: Message, version: UInt8, frameLimit: Int = Frame.defaultMaximumPayload) -> [UInt8] {
        let framer = MessageFramer(version: version, maximumFramePayload: frameLimit)
        var buffer = ByteBuffer()
        for frame in framer.frames(for: message) { frame.write(to: &buffer) }
        return Array(buffer.readableBytesView)
    }

    static func raw(version: UInt8 = 2, type: UInt8, flags: UInt16 = 0, payload: [UInt8], length: UInt32? = nil, crc: UInt32? = nil) -> [UInt8] {
        var buffer = ByteBuffer(bytes: Frame.magic)
        buffer.writeInteger(version)
        buffer.writeInteger(type)
        buffer.writeInteger(flags, endianness: .little)
        buffer.writeInteger(length ?? UInt32(payload.count), endianness: .little)
        buffer.writeInteger(crc ?? Frame(type: type, payload: ByteBuffer(bytes: payload)).crc, endianness: .little)
        buffer.writeBytes(payload)
        return Array(buffer.readableBytesView)
    }

    static func all() throws -> ([FrameVector], [InvalidFrameVector]) {
        let q8 = try encodeShard([0.5, -0.25, 0.25, -1], "q8")
        let q8Decoded = try ShardCodec.decode(q8, expectedCount: 4)
        let q4 = try encodeShard((0..<10).map { Float($0) * 0.37 - 1.2 }, "q4+g3+raw")
        let q4Decoded = try ShardCodec.decode(q4, expectedCount: 10)
        let signature = try Authentication.sign(secret: secret, nonce: nonce, clientID: "dev1")
        let model = "784|10|dense:200,relu,dense:200,relu,dense:10"
        let limits = Limits(maximumFramePayload: 1 << 20, maximumMessage: 64 << 20)
        let update = Update(round: 1, modelVersion: 0, exampleCount: 600, trainingLoss: 0.5, shards: [ShardDelta(index: 1, encoded: try encodeShard([0.5, -0.25], "q8+raw"))])
        let messages: [(String, UInt8, Message)] = [
            ("HELLO offering versions 1 and 2 (so in a version-1 frame)", 1, .hello(Hello(clientID: "dev1", protocolVersions: [1, 2], codecs: ["q8"], memoryBudget: 0, exampleCount: 600))),
            ("HELLO offering version 2 only, every codec, a memory budget", 2, .hello(Hello(clientID: "device-17", protocolVersions: [2], codecs: ["fp32", "fp16", "q8", "q4", "q2", "sign", "topk"], memoryBudget: 64 << 20, exampleCount: 1234))),
            ("CHALLENGE choosing version 2, nonce 00..1f", 2, .challenge(nonce: nonce, version: 2)),
            ("CHALLENGE choosing version 1", 1, .challenge(nonce: nonce, version: 1)),
            ("AUTHENTICATE: Ed25519 over \"FEDL-AUTH-v1\" ‖ nonce 00..1f ‖ \"dev1\" by the key \(secret) (public \(try Authentication.publicKey(ofSecret: secret)))", 2, .authenticate(signature: signature)),
            ("WELCOME, version 2: with the coordinator's limits", 2, .welcome(Welcome(sessionID: 42, heartbeatMilliseconds: 5000, model: model, limits: limits))),
            ("WELCOME, version 1: no limits", 1, .welcome(Welcome(sessionID: 42, heartbeatMilliseconds: 5000, model: model, limits: nil))),
            ("MODEL_SHARD: a q8 (zlib) shard with the SHA-256 of its decoded values \(sha256Hex(q8Decoded))", 2, .modelShard(ModelShard(round: 3, modelVersion: 2, shardIndex: 5, sha256: unhex(sha256Hex(q8Decoded)), encoded: q8))),
            ("MODEL_SHARD: a q4+g3+raw shard of 10 values, SHA-256 \(sha256Hex(q4Decoded))", 2, .modelShard(ModelShard(round: 3, modelVersion: 2, shardIndex: 1, sha256: unhex(sha256Hex(q4Decoded)), encoded: q4))),
            ("TRAINING_TASK", 2, .trainingTask(TrainingTask(round: 3, modelVersion: 2, shards: [0, 1, 4], localEpochs: 1, batchSize: 10, learningRate: 0.1, codec: "topk:0.01+q8+ef", deadlineMilliseconds: 60_000))),
            ("UPDATE (Protocol.md §9's example, in version 2)", 2, .update(update)),
            ("ACKNOWLEDGEMENT of an UPDATE for round 3", 2, .acknowledgement(type: 7, round: 3)),
            ("ERROR staleRound", 2, .error(code: 10, message: "update for round 2, the coordinator is in round 3")),
            ("HEARTBEAT", 2, .heartbeat(timestamp: 1_700_000_000_000)),
            ("GOODBYE, version 2: finished", 2, .goodbye(Goodbye(.finished, reason: "training finished"))),
            ("GOODBYE, version 2: going away", 2, .goodbye(Goodbye(.goingAway, reason: "the coordinator is stopping; reconnect later"))),
            ("GOODBYE, version 1: no code (always the end of the run)", 1, .goodbye(Goodbye(.finished, reason: "training finished"))),
            ("CHALLENGE choosing version 3", 3, .challenge(nonce: nonce, version: 3)),
            ("DECLINE, version 3: the external trainer ran out of time in round 3", 3, .decline(Decline(round: 3, reason: .trainerTimedOut, message: "\"python3 train.py\" ran past its 60.0 s limit and was stopped"))),
            ("CHALLENGE choosing version 4", 4, .challenge(nonce: nonce, version: 4)),
            ("TRAINING_TASK, version 4: no warm starts (a codec without low rank)", 4, .trainingTask(TrainingTask(round: 3, modelVersion: 2, shards: [0, 1, 4], localEpochs: 1, batchSize: 10, learningRate: 0.1, codec: "q8", deadlineMilliseconds: 60_000))),
            ("TRAINING_TASK, version 4: lowrank:2+q8+ef, warm starts of shard 0 (3 columns) and shard 2 (2 columns)", 4, .trainingTask(TrainingTask(
                round: 7, modelVersion: 6, shards: [0, 1, 2, 3], localEpochs: 5, batchSize: 10, learningRate: 0.05, codec: "lowrank:2+q8+ef", deadlineMilliseconds: 30_000,
                warmStarts: [.init(shardIndex: 0, rank: 2, columns: 3, values: [0.6, 0, 0.8, 0, 0, 1]), .init(shardIndex: 2, rank: 2, columns: 2, values: [1, 0, 0, -1])]))),
            ("DECLINE, version 4", 4, .decline(Decline(round: 3, reason: .trainerFailed, message: "exit status 1"))),
        ]
        var valid = messages.map { name, version, message in
            FrameVector(name: name, version: Int(version), bytes: hex(frames(message, version: version)), message: "\(message)", frameLimit: nil)
        }
        let split = Message.modelShard(ModelShard(round: 3, modelVersion: 2, shardIndex: 1, sha256: unhex(sha256Hex(q4Decoded)), encoded: q4))
        valid.append(FrameVector(name: "MODEL_SHARD split into frames of at most 32 payload bytes (every frame but the last has the continued flag)", version: 2, bytes: hex(frames(split, version: 2, frameLimit: 32)), message: "\(split)", frameLimit: 32))

        let heartbeat: [UInt8] = [0, 0x10, 0xA5, 0xD4, 0xE8, 0, 0, 0]
        var taskBuffer = ByteBuffer()
        Message.trainingTask(TrainingTask(round: 3, modelVersion: 2, shards: [0], localEpochs: 1, batchSize: 10, learningRate: 0.1, codec: "lowrank:2+q8", deadlineMilliseconds: 60_000))
            .encodePayload(into: &taskBuffer, version: 3)
        let taskV3 = Array(taskBuffer.readableBytesView)
        let good = raw(type: 10, payload: heartbeat)
        let invalid: [(String, UInt8, [UInt8], ProtocolError.Code)] = [
            ("not FEDL at all", 2, Array("GET / HTTP/1.1\r\n".utf8), .badMagic),
            ("bad magic", 2, [0x46, 0x45, 0x44, 0x58] + good.dropFirst(4), .badMagic),
            ("frame version 3 on a version-2 connection", 2, raw(version: 3, type: 10, payload: heartbeat), .unsupportedVersion),
            ("frame version 4 on a version-3 connection", 3, raw(version: 4, type: 10, payload: heartbeat), .unsupportedVersion),
            ("frame version 5", 4, raw(version: 5, type: 10, payload: heartbeat), .unsupportedVersion),
            ("TRAINING_TASK in version 4 without its warm-start count (the version-3 layout)", 4, raw(version: 4, type: 6, payload: taskV3), .malformedMessage),
            ("TRAINING_TASK in version 4 whose warm start declares more values than follow", 4, raw(version: 4, type: 6, payload: taskV3 + [1, 0, 0, 0, 2, 0, 3, 0, 0, 0] + [UInt8](repeating: 0, count: 20)), .malformedMessage),
            ("TRAINING_TASK in version 4 with 0x10000 x 0x10000 warm-start values declared (refused before allocating)", 4, raw(version: 4, type: 6, payload: taskV3 + [1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), .malformedMessage),
            ("frame version 0", 2, raw(version: 0, type: 10, payload: heartbeat), .unsupportedVersion),
            ("a version-1 frame on a version-2 connection", 2, raw(version: 1, type: 10, payload: heartbeat), .unsupportedVersion),
            ("payload length over the 1 MiB default limit (refused from the header alone)", 2, Array(raw(type: 10, payload: [], length: (1 << 20) + 1)), .frameTooLarge),
            ("CRC-32 mismatch", 2, raw(type: 10, payload: heartbeat, crc: 0x1234_5678), .badChecksum),
            ("message type 0", 2, raw(type: 0, payload: heartbeat), .unknownMessageType),
            ("message type 12 (DECLINE) on a version-2 connection", 2, raw(type: 12, payload: heartbeat), .unknownMessageType),
            ("message type 13", 3, raw(version: 3, type: 13, payload: heartbeat), .unknownMessageType),
            ("DECLINE one byte short", 3, raw(version: 3, type: 12, payload: [3, 0, 0, 0, 2, 0, 1, 0]), .malformedMessage),
            ("HEARTBEAT one byte short", 2, raw(type: 10, payload: Array(heartbeat.dropLast())), .malformedMessage),
            ("HEARTBEAT with a byte after its layout", 2, raw(type: 10, payload: heartbeat + [0]), .malformedMessage),
            ("GOODBYE whose reason is not UTF-8", 2, raw(type: 11, payload: [1, 2, 0, 0xC3, 0x28]), .malformedMessage),
            ("UPDATE whose shard declares more bytes than follow", 2, raw(type: 7, payload: [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x3f, 1, 0, 1, 0, 0xff, 0, 0, 0, 1, 2]), .malformedMessage),
            ("unknown flag bit 1", 2, raw(type: 10, flags: 2, payload: heartbeat), .unknownFlags),
            ("unknown flag bit 1 on a version-1 connection", 1, raw(version: 1, type: 10, flags: 2, payload: heartbeat), .malformedMessage),
            ("a HEARTBEAT frame inside a continued UPDATE", 2, raw(type: 7, flags: 1, payload: [1, 0, 0, 0]) + good, .interleavedFrame),
        ]
        return (valid, invalid.map { name, version, bytes, code in
            let wire = code.wireCode(version: version)
            return InvalidFrameVector(name: name, version: Int(version), bytes: hex(bytes), error: "\(ProtocolError.Code(rawValue: wire)!)", code: Int(wire))
        })
    }
}
