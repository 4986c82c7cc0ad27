import NIOCore

/// Turns messages into frames (splitting payloads above the frame limit) and frames back into
/// messages (joining "continued" frames up to a message limit).
public struct MessageFramer: Sendable {
    public let maximumFramePayload: Int
    public let maximumMessage: Int
    private var pending: (type: UInt8, payload: ByteBuffer)?

    public init(maximumFramePayload: Int = Frame.defaultMaximumPayload, maximumMessage: Int = 64 << 20) {
        self.maximumFramePayload = maximumFramePayload
        self.maximumMessage = maximumMessage
    }

    /// The frames that carry `message`.
    public func frames(for message: Message, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> [Frame] {
        var payload = allocator.buffer(capacity: 64)
        message.encodePayload(into: &payload)
        var frames: [Frame] = []
        repeat {
            let chunk = payload.readSlice(length: min(maximumFramePayload, payload.readableBytes))!
            let flags = payload.readableBytes > 0 ? Frame.flagContinued : 0
            frames.append(Frame(type: message.type.rawValue, flags: flags, payload: chunk))
        } while payload.readableBytes > 0
        return frames
    }

    /// Feeds one frame; returns the message when its last frame has arrived.
    public mutating func receive(_ frame: Frame) throws -> Message? {
        var payload: ByteBuffer
        if var partial = pending {
            guard partial.type == frame.type else {
                throw ProtocolError(.malformedMessage, "frame of type \(frame.type) inside a continued message of type \(partial.type)")
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
        return try Message.decode(type: frame.type, payload: payload)
    }
}
