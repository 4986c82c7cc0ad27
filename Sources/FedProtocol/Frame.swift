import CChecksum
import NIOCore

/// One frame on the wire (little-endian):
///
///     offset size field
///      0     4   magic "FEDL" (46 45 44 4c)
///      4     1   protocol version (1 or 2; HELLO's frame carries the lowest version the client
///                  lists, every frame from CHALLENGE on the version the coordinator chose)
///      5     1   message type
///      6     2   flags: bit 0 "continued" (more frames of this message follow); others 0
///      8     4   payload length
///     12     4   CRC-32 of the payload
///     16     …   payload
public struct Frame: Equatable, Sendable {
    public static let headerSize = 16
    public static let magic: [UInt8] = [0x46, 0x45, 0x44, 0x4C]
    /// The newest wire version this build speaks, and every version it still serves.
    public static let currentVersion: UInt8 = 4
    public static let supportedVersions: ClosedRange<UInt8> = 1...4
    public static let flagContinued: UInt16 = 1
    /// Default largest payload of one frame; larger messages are split.
    public static let defaultMaximumPayload = 1 << 20

    public var version: UInt8
    public var type: UInt8
    public var flags: UInt16
    public var payload: ByteBuffer {
        didSet { knownCRC = nil }
    }
    /// The payload's CRC-32 when already computed (``withChecksum()``), so a frame written to
    /// many connections (a model download) is summed once.
    private var knownCRC: UInt32?

    public init(version: UInt8 = Frame.currentVersion, type: UInt8, flags: UInt16 = 0, payload: ByteBuffer) {
        self.version = version
        self.type = type
        self.flags = flags
        self.payload = payload
    }

    /// The same frame with its payload's CRC-32 computed now and kept for every write.
    public func withChecksum() -> Frame {
        var frame = self
        frame.knownCRC = crc32Of(payload)
        return frame
    }

    public static func == (a: Frame, b: Frame) -> Bool {
        a.version == b.version && a.type == b.type && a.flags == b.flags && a.payload == b.payload
    }

    public var isContinued: Bool { flags & Self.flagContinued != 0 }

    /// CRC-32 of the payload, as the header carries it.
    public var crc: UInt32 { knownCRC ?? crc32Of(payload) }

    /// Appends the frame's bytes to `buffer`.
    public func write(to buffer: inout ByteBuffer) {
        writeHeader(to: &buffer)
        buffer.writeImmutableBuffer(payload)
    }

    /// Appends the 16-byte header (magic, version, type, flags, length, CRC-32 of the payload).
    public func writeHeader(to buffer: inout ByteBuffer) {
        buffer.writeBytes(Self.magic)
        buffer.writeInteger(version)
        buffer.writeInteger(type)
        buffer.writeInteger(flags, endianness: .little)
        buffer.writeInteger(UInt32(payload.readableBytes), endianness: .little)
        buffer.writeInteger(crc, endianness: .little)
    }
}

/// CRC-32 (zlib polynomial) of a buffer's readable bytes.
func crc32Of(_ buffer: ByteBuffer) -> UInt32 {
    buffer.withUnsafeReadableBytes { bytes in
        fed_crc32(0, bytes.bindMemory(to: UInt8.self).baseAddress, bytes.count)
    }
}

/// Cuts a stream of bytes into frames, checking magic, version, size limit and checksum
/// before anything else is read, so a hostile peer can make it buffer at most one frame of
/// `maximumPayload` bytes.
public struct FrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = Frame

    private enum State {
        case waitingForHeader
        case waitingForPayload(version: UInt8, type: UInt8, flags: UInt16, length: Int, checksum: UInt32)
    }

    public let maximumPayload: Int
    /// How long a frame may take to arrive once its first byte has (nil = no limit): a peer
    /// dribbling bytes to hold a connection open (slow loris) is cut off when its next byte
    /// comes in too late, and a peer that stops in the middle of a frame is cut off by a timer
    /// when the time is up. Silence between frames is the idle timeout's business.
    public let readTimeout: TimeAmount?
    private var state = State.waitingForHeader
    private var frameStartedAt: NIODeadline?
    private let timer = FrameTimer()

    public init(maximumPayload: Int = Frame.defaultMaximumPayload, readTimeout: TimeAmount? = nil) {
        self.maximumPayload = maximumPayload
        self.readTimeout = readTimeout
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if let readTimeout {
            let now = NIODeadline.now()
            if let started = frameStartedAt, now - started > readTimeout {
                throw Self.tooSlow(readTimeout)
            }
            if frameStartedAt == nil, buffer.readableBytes > 0 {
                frameStartedAt = now
                timer.start(readTimeout, context: context)
            }
        }
        guard let frame = try decodeFrame(&buffer) else { return .needMoreData }
        if let readTimeout {
            timer.stop()
            frameStartedAt = nil
            if buffer.readableBytes > 0 {
                frameStartedAt = .now()
                timer.start(readTimeout, context: context)
            }
        }
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    static func tooSlow(_ readTimeout: TimeAmount) -> ProtocolError {
        ProtocolError(.timeout, "a frame took longer than \(readTimeout.nanoseconds / 1_000_000_000) s to arrive")
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }

    /// Reads one frame from `buffer` if it is all there; throws ``ProtocolError`` on bad bytes.
    public mutating func decodeFrame(_ buffer: inout ByteBuffer) throws -> Frame? {
        switch state {
        case .waitingForHeader:
            guard buffer.readableBytes >= Frame.headerSize else {
                // Fail fast on a wrong magic even before the whole header has arrived.
                if let partial = buffer.getBytes(at: buffer.readerIndex, length: min(4, buffer.readableBytes)),
                   partial != Array(Frame.magic.prefix(partial.count)) {
                    throw ProtocolError(.badMagic, "stream does not start with the FEDL magic")
                }
                return nil
            }
            let start = buffer.readerIndex
            guard buffer.getBytes(at: start, length: 4) == Frame.magic else {
                throw ProtocolError(.badMagic, "stream does not start with the FEDL magic")
            }
            let version = buffer.getInteger(at: start + 4, as: UInt8.self)!
            guard Frame.supportedVersions.contains(version) else {
                throw ProtocolError(.unsupportedVersion, "protocol version \(version), this peer speaks \(Frame.supportedVersions.map(String.init).joined(separator: " and "))")
            }
            let type = buffer.getInteger(at: start + 5, as: UInt8.self)!
            let flags = buffer.getInteger(at: start + 6, endianness: .little, as: UInt16.self)!
            let length = Int(buffer.getInteger(at: start + 8, endianness: .little, as: UInt32.self)!)
            let checksum = buffer.getInteger(at: start + 12, endianness: .little, as: UInt32.self)!
            guard flags & ~Frame.flagContinued == 0 else {
                throw ProtocolError(.unknownFlags, "unknown frame flags 0x\(String(flags, radix: 16))")
            }
            guard length <= maximumPayload else {
                throw ProtocolError(.frameTooLarge, "frame payload of \(length) bytes exceeds the limit of \(maximumPayload)")
            }
            buffer.moveReaderIndex(forwardBy: Frame.headerSize)
            state = .waitingForPayload(version: version, type: type, flags: flags, length: length, checksum: checksum)
            return try decodeFrame(&buffer)
        case .waitingForPayload(let version, let type, let flags, let length, let checksum):
            guard let payload = buffer.readSlice(length: length) else {
                // Room for the rest of the payload at once (at most `maximumPayload`, checked
                // above), rather than growing by doubling and copying what has arrived each time.
                if buffer.writableBytes < length - buffer.readableBytes {
                    buffer.reserveCapacity(minimumWritableBytes: length - buffer.readableBytes)
                }
                return nil
            }
            state = .waitingForHeader
            guard crc32Of(payload) == checksum else {
                throw ProtocolError(.badChecksum, "payload CRC-32 does not match the frame header")
            }
            return Frame(version: version, type: type, flags: flags, payload: payload)
        }
    }
}

/// The read timeout's timer for the frame in progress: if the frame is not whole when it fires,
/// the connection gets a timeout error (which closes it after an ERROR). Lives on the
/// channel's event loop only.
final class FrameTimer: @unchecked Sendable {
    private var scheduled: Scheduled<Void>?
    private var generation = 0

    func start(_ timeout: TimeAmount, context: ChannelHandlerContext) {
        scheduled?.cancel()
        generation += 1
        let expected = generation
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        scheduled = context.eventLoop.scheduleTask(in: timeout) { [self] in
            guard generation == expected, bound.value.channel.isActive else { return }
            bound.value.fireErrorCaught(FrameDecoder.tooSlow(timeout))
        }
    }

    func stop() {
        scheduled?.cancel()
        scheduled = nil
        generation += 1
    }
}

/// Writes frames to a connection: the header in a buffer of its own, then the payload buffer
/// itself (the socket gathers both), so a payload is never copied, and no buffer as large as
/// the largest frame stays allocated per connection between messages (as NIO's
/// `MessageToByteHandler` keeps its output buffer: a megabyte per client that ever downloaded
/// a model).
public final class FrameWriter: ChannelOutboundHandler {
    public typealias OutboundIn = Frame
    public typealias OutboundOut = ByteBuffer

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = unwrapOutboundIn(data)
        var header = context.channel.allocator.buffer(capacity: Frame.headerSize)
        frame.writeHeader(to: &header)
        context.write(wrapOutboundOut(header), promise: nil)
        context.write(wrapOutboundOut(frame.payload), promise: promise)
    }
}

@available(*, unavailable)
extension FrameWriter: Sendable {}

/// Writes frames into one buffer (for tests and tools that build byte streams).
public struct FrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Frame
    public init() {}
    public func encode(data: Frame, out: inout ByteBuffer) throws {
        data.write(to: &out)
    }
}
