import Crypto
import NIOCore

/// Installs the frame decoder and encoder on a new connection and wraps it for async use.
/// Call inside the bootstrap's channel initializer.
public func makeFramedChannel(_ channel: any Channel, maximumFramePayload: Int = Frame.defaultMaximumPayload) throws -> NIOAsyncChannel<Frame, Frame> {
    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maximumPayload: maximumFramePayload)))
    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
    return try NIOAsyncChannel(wrappingChannelSynchronously: channel)
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
    private let framer: MessageFramer

    public init(_ outbound: NIOAsyncChannelOutboundWriter<Frame>, framer: MessageFramer = MessageFramer()) {
        self.outbound = outbound
        self.framer = framer
    }

    public func send(_ message: Message) async throws {
        try await outbound.write(contentsOf: framer.frames(for: message))
    }
}

/// Challenge-response authentication: the client proves it holds its secret without sending it.
public enum Authentication {
    /// HMAC-SHA256(key: secret as UTF-8, message: nonce ‖ client id as UTF-8).
    public static func mac(secret: String, nonce: [UInt8], clientID: String) -> [UInt8] {
        let key = SymmetricKey(data: Array(secret.utf8))
        return Array(HMAC<SHA256>.authenticationCode(for: nonce + Array(clientID.utf8), using: key))
    }

    /// Constant-time comparison of a received MAC with the expected one.
    public static func verify(mac: [UInt8], secret: String, nonce: [UInt8], clientID: String) -> Bool {
        let key = SymmetricKey(data: Array(secret.utf8))
        return HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: nonce + Array(clientID.utf8), using: key)
    }

    /// A fresh random 32-byte nonce.
    public static func nonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }
}
