import NIOCore

/// Message type bytes (the frame header's type field).
public enum MessageType: UInt8, Sendable, CaseIterable {
    case hello = 1, challenge = 2, authenticate = 3, welcome = 4, modelShard = 5
    case trainingTask = 6, update = 7, acknowledgement = 8, error = 9, heartbeat = 10, goodbye = 11
    /// Version 3: a client will not deliver a round's update.
    case decline = 12
}

/// HELLO, client → coordinator, first message of a connection.
public struct Hello: Equatable, Sendable {
    public var clientID: String
    public var protocolVersions: [UInt8]
    /// Codec spec strings the client can encode (e.g. "q8", "topk:0.01+q8").
    public var codecs: [String]
    /// Bytes of memory the client can give to training; 0 = no limit stated.
    public var memoryBudget: UInt64
    public var exampleCount: UInt32
    /// A feature name in the codec list (Protocol.md, section 2): the client keeps every shard
    /// it is sent for as long as its connection lasts, so shards whose values have not changed
    /// need not be sent again. Coordinators that do not know it ignore it.
    public static let keepsShards = "keeps-shards"

    public init(clientID: String, protocolVersions: [UInt8], codecs: [String], memoryBudget: UInt64, exampleCount: UInt32) {
        self.clientID = clientID
        self.protocolVersions = protocolVersions
        self.codecs = codecs
        self.memoryBudget = memoryBudget
        self.exampleCount = exampleCount
    }
}

/// The limits a coordinator reads messages with, announced in WELCOME (version 2).
public struct Limits: Equatable, Sendable {
    /// Largest payload of one frame.
    public var maximumFramePayload: UInt32
    /// Largest reassembled message.
    public var maximumMessage: UInt32
    public init(maximumFramePayload: UInt32, maximumMessage: UInt32) {
        self.maximumFramePayload = maximumFramePayload
        self.maximumMessage = maximumMessage
    }
}

/// WELCOME, coordinator → client: authentication succeeded.
public struct Welcome: Equatable, Sendable {
    public var sessionID: UInt64
    public var heartbeatMilliseconds: UInt32
    /// The architecture (FedModel's wire description, Protocol.md §6).
    public var model: String
    /// The coordinator's limits; nil on a version-1 connection, which cannot carry them.
    public var limits: Limits?
    public init(sessionID: UInt64, heartbeatMilliseconds: UInt32, model: String, limits: Limits?) {
        self.sessionID = sessionID
        self.heartbeatMilliseconds = heartbeatMilliseconds
        self.model = model
        self.limits = limits
    }
}

/// DECLINE, client → coordinator (version 3): the client cannot deliver its update for this
/// round (its external trainer failed, ran out of time or returned unusable shards), so the
/// coordinator need not wait for it. The connection stays open and the client stays selectable.
public struct Decline: Equatable, Sendable {
    public enum Reason: UInt16, Sendable, CaseIterable {
        /// The training program exited with an error, or could not be started.
        case trainerFailed = 1
        /// The training program did not finish within the task's time.
        case trainerTimedOut = 2
        /// The training program's output was unusable: missing or wrongly shaped shards,
        /// non-finite values, a malformed result file.
        case invalidOutput = 3
        /// Anything else that stops this round's training on the device.
        case cannotTrain = 4
    }
    public var round: UInt32
    /// A ``Reason`` code; an unknown code is read as ``Reason/cannotTrain``.
    public var reason: Reason
    public var message: String
    public init(round: UInt32, reason: Reason, message: String) {
        self.round = round
        self.reason = reason
        self.message = message
    }
}

/// GOODBYE, either way: the sender closes the connection after it.
public struct Goodbye: Equatable, Sendable {
    /// Why (version 2; a version-1 GOODBYE always means ``finished``).
    public enum Code: UInt8, Sendable {
        /// The run is over: a client stops and does not reconnect.
        case finished = 1
        /// The sender is stopping for now (a coordinator restarting, a client shutting down):
        /// the peer may reconnect later, with the usual backoff.
        case goingAway = 2
    }
    public var code: Code
    public var reason: String
    public init(_ code: Code, reason: String) {
        self.code = code
        self.reason = reason
    }
}

/// One model shard, coordinator → client.
public struct ModelShard: Equatable, Sendable {
    public var round: UInt32
    public var modelVersion: UInt32
    public var shardIndex: UInt16
    /// SHA-256 of the decoded shard as little-endian float32 values.
    public var sha256: [UInt8]
    /// The shard in the encoded-shard format (Protocol.md), which names its own codec.
    public var encoded: [UInt8]
    public init(round: UInt32, modelVersion: UInt32, shardIndex: UInt16, sha256: [UInt8], encoded: [UInt8]) {
        self.round = round
        self.modelVersion = modelVersion
        self.shardIndex = shardIndex
        self.sha256 = sha256
        self.encoded = encoded
    }
}

/// TRAINING_TASK, coordinator → selected client.
public struct TrainingTask: Equatable, Sendable {
    public var round: UInt32
    public var modelVersion: UInt32
    public var shards: [UInt16]
    public var localEpochs: UInt16
    public var batchSize: UInt16
    public var learningRate: Float
    public var codec: String
    /// Milliseconds from receipt until the update must have arrived.
    public var deadlineMilliseconds: UInt32
    /// Version 4, under a `lowrank:R` codec: the warm start of every shard the update sends as
    /// low-rank factors (Protocol.md §8.6). Empty otherwise, and on older versions.
    public var warmStarts: [WarmStart] = []

    /// The coordinator's right factor for one shard: `columns` × `rank` values, row-major,
    /// with orthonormal columns.
    public struct WarmStart: Equatable, Sendable {
        public var shardIndex: UInt16
        public var rank: UInt16
        public var columns: UInt32
        public var values: [Float]
        public init(shardIndex: UInt16, rank: UInt16, columns: UInt32, values: [Float]) {
            self.shardIndex = shardIndex
            self.rank = rank
            self.columns = columns
            self.values = values
        }
    }

    public init(round: UInt32, modelVersion: UInt32, shards: [UInt16], localEpochs: UInt16, batchSize: UInt16, learningRate: Float, codec: String,
                deadlineMilliseconds: UInt32, warmStarts: [WarmStart] = []) {
        self.round = round
        self.modelVersion = modelVersion
        self.shards = shards
        self.localEpochs = localEpochs
        self.batchSize = batchSize
        self.learningRate = learningRate
        self.codec = codec
        self.deadlineMilliseconds = deadlineMilliseconds
        self.warmStarts = warmStarts
    }
}

/// UPDATE, client → coordinator.
public struct Update: Equatable, Sendable {
    public var round: UInt32
    public var modelVersion: UInt32
    public var exampleCount: UInt32
    public var trainingLoss: Float
    /// (shard index, encoded delta) per trained shard.
    public var shards: [ShardDelta]
    public init(round: UInt32, modelVersion: UInt32, exampleCount: UInt32, trainingLoss: Float, shards: [ShardDelta]) {
        self.round = round
        self.modelVersion = modelVersion
        self.exampleCount = exampleCount
        self.trainingLoss = trainingLoss
        self.shards = shards
    }
}

public struct ShardDelta: Equatable, Sendable {
    public var index: UInt16
    public var encoded: [UInt8]
    public init(index: UInt16, encoded: [UInt8]) {
        self.index = index
        self.encoded = encoded
    }
}

/// Everything that can be said on a connection.
public enum Message: Equatable, Sendable {
    case hello(Hello)
    /// A fresh 32-byte random nonce to sign, and the version the coordinator chose.
    case challenge(nonce: [UInt8], version: UInt8)
    /// Ed25519 signature of "FEDL-AUTH-v1" ‖ nonce ‖ client id in UTF-8.
    case authenticate(signature: [UInt8])
    /// Authentication succeeded.
    case welcome(Welcome)
    case modelShard(ModelShard)
    case trainingTask(TrainingTask)
    case update(Update)
    /// Receipt of a message of `type` for `round`.
    case acknowledgement(type: UInt8, round: UInt32)
    case error(code: UInt16, message: String)
    case heartbeat(timestamp: UInt64)
    case goodbye(Goodbye)
    /// Version 3 only.
    case decline(Decline)

    public var type: MessageType {
        switch self {
        case .hello: .hello
        case .challenge: .challenge
        case .authenticate: .authenticate
        case .welcome: .welcome
        case .modelShard: .modelShard
        case .trainingTask: .trainingTask
        case .update: .update
        case .acknowledgement: .acknowledgement
        case .error: .error
        case .heartbeat: .heartbeat
        case .goodbye: .goodbye
        case .decline: .decline
        }
    }

    /// The payload bytes on a connection speaking `version` (Protocol.md gives each layout).
    public func encodePayload(into buffer: inout ByteBuffer, version: UInt8 = Frame.currentVersion) {
        switch self {
        case .hello(let h):
            buffer.writeString16(h.clientID)
            buffer.writeInteger(UInt16(h.protocolVersions.count), endianness: .little)
            buffer.writeBytes(h.protocolVersions)
            buffer.writeInteger(UInt16(h.codecs.count), endianness: .little)
            for codec in h.codecs { buffer.writeString16(codec) }
            buffer.writeInteger(h.memoryBudget, endianness: .little)
            buffer.writeInteger(h.exampleCount, endianness: .little)
        case .challenge(let nonce, let version):
            buffer.writeBytes(nonce)
            buffer.writeInteger(version)
        case .authenticate(let signature):
            buffer.writeBytes(signature)
        case .welcome(let w):
            buffer.writeInteger(w.sessionID, endianness: .little)
            buffer.writeInteger(w.heartbeatMilliseconds, endianness: .little)
            buffer.writeString16(w.model)
            if version >= 2 {
                let limits = w.limits ?? Limits(maximumFramePayload: UInt32(Frame.defaultMaximumPayload), maximumMessage: UInt32(MessageFramer.defaultMaximumMessage))
                buffer.writeInteger(limits.maximumFramePayload, endianness: .little)
                buffer.writeInteger(limits.maximumMessage, endianness: .little)
            }
        case .modelShard(let s):
            buffer.writeInteger(s.round, endianness: .little)
            buffer.writeInteger(s.modelVersion, endianness: .little)
            buffer.writeInteger(s.shardIndex, endianness: .little)
            buffer.writeBytes(s.sha256)
            buffer.writeBytes32(s.encoded)
        case .trainingTask(let t):
            buffer.writeInteger(t.round, endianness: .little)
            buffer.writeInteger(t.modelVersion, endianness: .little)
            buffer.writeInteger(UInt16(t.shards.count), endianness: .little)
            for s in t.shards { buffer.writeInteger(s, endianness: .little) }
            buffer.writeInteger(t.localEpochs, endianness: .little)
            buffer.writeInteger(t.batchSize, endianness: .little)
            buffer.writeInteger(t.learningRate.bitPattern, endianness: .little)
            buffer.writeString16(t.codec)
            buffer.writeInteger(t.deadlineMilliseconds, endianness: .little)
            if version >= 4 {
                buffer.writeInteger(UInt16(t.warmStarts.count), endianness: .little)
                for w in t.warmStarts {
                    buffer.writeInteger(w.shardIndex, endianness: .little)
                    buffer.writeInteger(w.rank, endianness: .little)
                    buffer.writeInteger(w.columns, endianness: .little)
                    for value in w.values { buffer.writeInteger(value.bitPattern, endianness: .little) }
                }
            }
        case .update(let u):
            buffer.writeInteger(u.round, endianness: .little)
            buffer.writeInteger(u.modelVersion, endianness: .little)
            buffer.writeInteger(u.exampleCount, endianness: .little)
            buffer.writeInteger(u.trainingLoss.bitPattern, endianness: .little)
            buffer.writeInteger(UInt16(u.shards.count), endianness: .little)
            for s in u.shards {
                buffer.writeInteger(s.index, endianness: .little)
                buffer.writeBytes32(s.encoded)
            }
        case .acknowledgement(let type, let round):
            buffer.writeInteger(type)
            buffer.writeInteger(round, endianness: .little)
        case .error(let code, let message):
            buffer.writeInteger(code, endianness: .little)
            buffer.writeString16(message)
        case .heartbeat(let timestamp):
            buffer.writeInteger(timestamp, endianness: .little)
        case .goodbye(let goodbye):
            if version >= 2 { buffer.writeInteger(goodbye.code.rawValue) }
            buffer.writeString16(goodbye.reason)
        case .decline(let decline):
            buffer.writeInteger(decline.round, endianness: .little)
            buffer.writeInteger(decline.reason.rawValue, endianness: .little)
            buffer.writeString16(decline.message)
        }
    }

    /// Parses a whole payload of a connection speaking `version`; every byte must be
    /// accounted for.
    public static func decode(type rawType: UInt8, payload: ByteBuffer, version: UInt8 = Frame.currentVersion) throws -> Message {
        guard let type = MessageType(rawValue: rawType), type != .decline || version >= 3 else {
            throw ProtocolError(.unknownMessageType, "message type \(rawType)\(rawType == MessageType.decline.rawValue ? " (DECLINE needs protocol version 3)" : "")")
        }
        var b = payload
        let message: Message
        switch type {
        case .hello:
            let id = try b.readString16(field: "client id")
            let versions = try b.readBytesOrThrow(Int(b.readU16("version count")), field: "versions")
            let codecCount = try b.readU16("codec count")
            var codecs: [String] = []
            for _ in 0..<codecCount { codecs.append(try b.readString16(field: "codec")) }
            message = .hello(Hello(
                clientID: id, protocolVersions: versions, codecs: codecs,
                memoryBudget: try b.readU64("memory budget"), exampleCount: try b.readU32("example count")))
        case .challenge:
            message = .challenge(nonce: try b.readBytesOrThrow(32, field: "nonce"), version: try b.readU8("version"))
        case .authenticate:
            message = .authenticate(signature: try b.readBytesOrThrow(Authentication.signatureLength, field: "signature"))
        case .welcome:
            let session = try b.readU64("session id"), heartbeat = try b.readU32("heartbeat")
            let model = try b.readString16(field: "model")
            var limits: Limits?
            if version >= 2 {
                limits = Limits(maximumFramePayload: try b.readU32("frame limit"), maximumMessage: try b.readU32("message limit"))
            }
            message = .welcome(Welcome(sessionID: session, heartbeatMilliseconds: heartbeat, model: model, limits: limits))
        case .modelShard:
            message = .modelShard(ModelShard(
                round: try b.readU32("round"), modelVersion: try b.readU32("model version"),
                shardIndex: try b.readU16("shard index"), sha256: try b.readBytesOrThrow(32, field: "sha256"),
                encoded: try b.readBytes32(field: "encoded shard")))
        case .trainingTask:
            let round = try b.readU32("round"), modelVersion = try b.readU32("model version")
            let count = try b.readU16("shard count")
            var shards: [UInt16] = []
            for _ in 0..<count { shards.append(try b.readU16("shard index")) }
            var task = TrainingTask(
                round: round, modelVersion: modelVersion, shards: shards,
                localEpochs: try b.readU16("local epochs"), batchSize: try b.readU16("batch size"),
                learningRate: Float(bitPattern: try b.readU32("learning rate")),
                codec: try b.readString16(field: "codec"), deadlineMilliseconds: try b.readU32("deadline"))
            if version >= 4 {
                let count = try b.readU16("warm start count")
                for _ in 0..<count {
                    let index = try b.readU16("warm start shard index"), rank = try b.readU16("warm start rank")
                    let columns = try b.readU32("warm start columns")
                    // Checked against what is left before anything is allocated.
                    let values = UInt64(columns) * UInt64(rank)
                    guard values * 4 <= UInt64(b.readableBytes) else {
                        throw ProtocolError(.malformedMessage, "warm start of shard \(index) declares \(columns)x\(rank) values, \(b.readableBytes) bytes remain")
                    }
                    var floats: [Float] = []
                    floats.reserveCapacity(Int(values))
                    for _ in 0..<values { floats.append(Float(bitPattern: try b.readU32("warm start value"))) }
                    task.warmStarts.append(.init(shardIndex: index, rank: rank, columns: columns, values: floats))
                }
            }
            message = .trainingTask(task)
        case .update:
            let round = try b.readU32("round"), version = try b.readU32("model version")
            let examples = try b.readU32("example count")
            let loss = Float(bitPattern: try b.readU32("training loss"))
            let count = try b.readU16("shard count")
            var shards: [ShardDelta] = []
            for _ in 0..<count {
                shards.append(ShardDelta(index: try b.readU16("shard index"), encoded: try b.readBytes32(field: "shard delta")))
            }
            message = .update(Update(round: round, modelVersion: version, exampleCount: examples, trainingLoss: loss, shards: shards))
        case .acknowledgement:
            message = .acknowledgement(type: try b.readU8("type"), round: try b.readU32("round"))
        case .error:
            message = .error(code: try b.readU16("code"), message: try b.readString16(field: "message"))
        case .heartbeat:
            message = .heartbeat(timestamp: try b.readU64("timestamp"))
        case .goodbye:
            if version >= 2 {
                // An unknown code is read as going away: reconnecting later is the safe guess.
                let code = Goodbye.Code(rawValue: try b.readU8("goodbye code")) ?? .goingAway
                message = .goodbye(Goodbye(code, reason: try b.readString16(field: "reason")))
            } else {
                message = .goodbye(Goodbye(.finished, reason: try b.readString16(field: "reason")))
            }
        case .decline:
            let round = try b.readU32("round")
            let reason = Decline.Reason(rawValue: try b.readU16("reason")) ?? .cannotTrain
            message = .decline(Decline(round: round, reason: reason, message: try b.readString16(field: "message")))
        }
        guard b.readableBytes == 0 else {
            throw ProtocolError(.malformedMessage, "\(b.readableBytes) bytes after the end of a \(type) message")
        }
        return message
    }
}

extension ByteBuffer {
    mutating func writeString16(_ s: String) {
        let utf8 = Array(s.utf8.prefix(Int(UInt16.max)))
        writeInteger(UInt16(utf8.count), endianness: .little)
        writeBytes(utf8)
    }

    mutating func writeBytes32(_ bytes: [UInt8]) {
        writeInteger(UInt32(bytes.count), endianness: .little)
        writeBytes(bytes)
    }

    mutating func readU8(_ field: String) throws -> UInt8 {
        guard let v = readInteger(as: UInt8.self) else { throw ProtocolError(.malformedMessage, "message ends before \(field)") }
        return v
    }

    mutating func readU16(_ field: String) throws -> UInt16 {
        guard let v = readInteger(endianness: .little, as: UInt16.self) else { throw ProtocolError(.malformedMessage, "message ends before \(field)") }
        return v
    }

    mutating func readU32(_ field: String) throws -> UInt32 {
        guard let v = readInteger(endianness: .little, as: UInt32.self) else { throw ProtocolError(.malformedMessage, "message ends before \(field)") }
        return v
    }

    mutating func readU64(_ field: String) throws -> UInt64 {
        guard let v = readInteger(endianness: .little, as: UInt64.self) else { throw ProtocolError(.malformedMessage, "message ends before \(field)") }
        return v
    }

    mutating func readBytesOrThrow(_ count: Int, field: String) throws -> [UInt8] {
        guard let bytes = readBytes(length: count) else { throw ProtocolError(.malformedMessage, "message ends inside \(field)") }
        return bytes
    }

    mutating func readString16(field: String) throws -> String {
        let length = Int(try readU16("\(field) length"))
        let bytes = try readBytesOrThrow(length, field: field)
        guard let s = String(validating: bytes, as: UTF8.self) else { throw ProtocolError(.malformedMessage, "\(field) is not UTF-8") }
        return s
    }

    /// A u32-length-prefixed byte string; the length is checked against what is present
    /// before anything is allocated.
    mutating func readBytes32(field: String) throws -> [UInt8] {
        let length = Int(try readU32("\(field) length"))
        guard length <= readableBytes else { throw ProtocolError(.malformedMessage, "\(field) declares \(length) bytes, \(readableBytes) present") }
        return try readBytesOrThrow(length, field: field)
    }
}
