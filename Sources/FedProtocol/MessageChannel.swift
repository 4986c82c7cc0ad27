import Crypto
import Foundation
import NIOCore

/// Installs the frame decoder and encoder on a new connection and wraps it for async use.
/// Call inside the bootstrap's channel initializer.
public func makeFramedChannel(
    _ channel: any Channel, maximumFramePayload: Int = Frame.defaultMaximumPayload, readTimeout: TimeAmount? = nil
) throws -> NIOAsyncChannel<Frame, Frame> {
    // Reads of at most 16 KB: every connection keeps its receive buffer while idle, and with
    // NIO's 64 KB a process holding 1,000 connections that have each carried a model kept
    // 128 MB of them (fedsim's TCP transport holds both ends). A model still arrives in 50
    // reads instead of 13.
    try channel.syncOptions?.setOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: 16384))
    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maximumPayload: maximumFramePayload, readTimeout: readTimeout)))
    try channel.pipeline.syncOperations.addHandler(FrameWriter())
    // Finishing the writer half-closes the connection after everything written so far: the
    // way to say a last GOODBYE or ERROR and let the peer read it before the close.
    return try NIOAsyncChannel(wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
}

/// Reads whole messages from a framed connection. It may be handed from task to task (for
/// example into a timeout), but only one task may call ``next()`` at a time.
public final class MessageReader: @unchecked Sendable {
    private var iterator: NIOAsyncChannelInboundStream<Frame>.AsyncIterator
    private var framer: MessageFramer

    public init(_ inbound: NIOAsyncChannelInboundStream<Frame>, framer: MessageFramer = MessageFramer()) {
        iterator = inbound.makeAsyncIterator()
        self.framer = framer
    }

    /// The protocol version frames must carry from now on (set once it is chosen).
    public var version: UInt8? {
        get { framer.version }
        set { framer.version = newValue }
    }

    /// The next message, or nil when the peer closed the connection.
    public func next() async throws -> Message? {
        while let frame = try await iterator.next() {
            if let message = try framer.receive(frame) { return message }
        }
        return nil
    }
}

/// Writes whole messages to a framed connection.
public struct MessageWriter: Sendable {
    private let outbound: NIOAsyncChannelOutboundWriter<Frame>
    public let framer: MessageFramer

    public init(_ outbound: NIOAsyncChannelOutboundWriter<Frame>, framer: MessageFramer = MessageFramer()) {
        self.outbound = outbound
        self.framer = framer
    }

    /// The same connection, writing `version`'s frames split at `maximumFramePayload`.
    public func speaking(_ version: UInt8, maximumFramePayload: Int? = nil) -> MessageWriter {
        var framer = framer
        framer.version = version
        if let maximumFramePayload { framer.maximumFramePayload = maximumFramePayload }
        return MessageWriter(outbound, framer: framer)
    }

    public func send(_ message: Message) async throws {
        try await outbound.write(contentsOf: framer.frames(for: message))
    }

    /// Writes frames made earlier (by a framer of this connection's version and frame size),
    /// for a message sent to many connections alike.
    public func send(frames: [Frame]) async throws {
        try await outbound.write(contentsOf: frames)
    }

    /// Ends the outbound half: what was sent is written, then the connection is half-closed
    /// (TCP FIN) while the peer can still send.
    public func finish() {
        outbound.finish()
    }
}

/// Challenge-response authentication with Ed25519 signatures: a client proves it holds its
/// secret (a private key) by signing the coordinator's fresh nonce; the coordinator keeps only
/// the public key, so its database or configuration holds nothing that would let anyone log in.
///
/// A secret is written `fedsk1:` + 64 hex digits (the 32-byte private key), a public key
/// `fedpk1:` + 64 hex digits.
public enum Authentication {
    public static let signatureLength = 64
    static let context = Array("FEDL-AUTH-v1".utf8)

    /// A fresh secret and its public key.
    public static func generate() -> (secret: String, publicKey: String) {
        let key = Curve25519.Signing.PrivateKey()
        return ("fedsk1:" + hex(key.rawRepresentation), "fedpk1:" + hex(key.publicKey.rawRepresentation))
    }

    /// A secret made from 32 given bytes (fedsim derives its clients' keys from the run's seed).
    public static func secret(fromSeed bytes: [UInt8]) throws -> String {
        let key = try Curve25519.Signing.PrivateKey(rawRepresentation: bytes)
        return "fedsk1:" + hex(key.rawRepresentation)
    }

    /// The public key of a secret.
    public static func publicKey(ofSecret secret: String) throws -> String {
        "fedpk1:" + hex(try privateKey(secret).publicKey.rawRepresentation)
    }

    /// Checks that a public key is well formed.
    public static func validate(publicKey: String) throws {
        _ = try self.publicKey(publicKey)
    }

    /// The signature a client sends: Ed25519 over "FEDL-AUTH-v1" ‖ nonce ‖ client id as UTF-8.
    public static func sign(secret: String, nonce: [UInt8], clientID: String) throws -> [UInt8] {
        Array(try privateKey(secret).signature(for: context + nonce + Array(clientID.utf8)))
    }

    public static func verify(signature: [UInt8], publicKey: String, nonce: [UInt8], clientID: String) -> Bool {
        guard signature.count == signatureLength, let key = try? self.publicKey(publicKey) else { return false }
        return key.isValidSignature(signature, for: context + nonce + Array(clientID.utf8))
    }

    /// A fresh random 32-byte nonce.
    public static func nonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    static func privateKey(_ secret: String) throws -> Curve25519.Signing.PrivateKey {
        guard secret.hasPrefix("fedsk1:"), let bytes = unhex(secret.dropFirst(7)), bytes.count == 32,
              let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: bytes) else {
            throw ProtocolError(.authenticationFailed, "a client secret is \"fedsk1:\" and 64 hex digits (from `fedcoord clients add`)")
        }
        return key
    }

    static func publicKey(_ text: String) throws -> Curve25519.Signing.PublicKey {
        guard text.hasPrefix("fedpk1:"), let bytes = unhex(text.dropFirst(7)), bytes.count == 32,
              let key = try? Curve25519.Signing.PublicKey(rawRepresentation: bytes) else {
            throw ProtocolError(.authenticationFailed, "a public key is \"fedpk1:\" and 64 hex digits")
        }
        return key
    }

    static func hex<D: DataProtocol>(_ bytes: D) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    static func unhex(_ text: Substring) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        for i in stride(from: 0, to: digits.count, by: 2) {
            guard let byte = UInt8(String(decoding: digits[i..<(i + 2)], as: UTF8.self), radix: 16) else { return nil }
            bytes.append(byte)
        }
        return bytes
    }
}
