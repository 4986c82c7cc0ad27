import NIOCore

/// Turns messages into frames (splitting payloads above the frame limit) and frames back into
/// messages (joining "continued" frames up to a message limit).
///
/// A framer speaks one protocol version: it writes frames with that version byte and payload
/// layouts, and refuses frames of another version. A coordinator's reader starts with no
/// version (HELLO may come in any supported version's frame; the messages before CHALLENGE
/// have the same layout in every version) and is set to the chosen one after HELLO.
public struct MessageFramer: Sendable {
    public static let defaultMaximumMessage = 64 << 20
    public var maximumFramePayload: Int
    public var maximumMessage: Int
    /// The connection's protocol version, or nil before it is chosen.
    public var version: UInt8?
    private var pending: (type: UInt8, payload: ByteBuffer)?

    public init(version: UInt8? = Frame.currentVersion, maximumFramePayload: Int = Frame.defaultMaximumPayload, maximumMessage: Int = defaultMaximumMessage) {
        self.version = version
        self.maximumFramePayload = maximumFramePayload
        self.maximumMessage = maximumMessage
    }

    /// The frames that carry `message` (version 1 before a version is chosen).
    public func frames(for message: Message, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> [Frame] {
        let version = version ?? 1
        var payload = allocator.buffer(capacity: 64)
        message.encodePayload(into: &payload, version: version)
        var frames: [Frame] = []
        repeat {
            let chunk = payload.readSlice(length: min(maximumFramePayload, payload.readableBytes))!
            let flags = payload.readableBytes > 0 ? Frame.flagContinued : 0
            frames.append(Frame(version: version, type: message.type.rawValue, flags: flags, payload: chunk))
        } while payload.readableBytes > 0
        return frames
    }

    /// Feeds one frame; returns the message when its last frame has arrived.
    public mutating func receive(_ frame: Frame) throws -> Message? {
        if let version, frame.version != version {
            throw ProtocolError(.unsupportedVersion, "a frame of protocol version \(frame.version) on a connection speaking version \(version)")
        }
        var payload: ByteBuffer
        if var partial = pending {
            guard partial.type == frame.type else {
                throw ProtocolError(.interleavedFrame, "frame of type \(frame.type) inside a continued message of type \(partial.type)")
            }
            guard partial.payload.readableBytes + frame.payload.readableBytes <= maximumMessage else {
                throw ProtocolError(.messageTooLarge, "message exceeds \(maximumMessage) bytes")
            }
            var chunk = frame.payload
            partial.payload.writeBuffer(&chunk)
            payload = partial.payload
            pending = nil
        } else {
            payload = frame.payload
        }
        if frame.isContinued {
            pending = (frame.type, payload)
            return nil
        }
        return try Message.decode(type: frame.type, payload: payload, version: version ?? frame.version)
    }
}
