/// A frame or message that breaks the wire protocol. Each case maps to the error code sent
/// in an ERROR message before the connection is closed (Protocol.md, "Error codes").
public struct ProtocolError: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Code: UInt16, Sendable {
        case badMagic = 1
        case unsupportedVersion = 2
        case frameTooLarge = 3
        case badChecksum = 4
        case unknownMessageType = 5
        case malformedMessage = 6
        case messageTooLarge = 7
        case unexpectedMessage = 8
        case authenticationFailed = 9
        case staleRound = 10
        case lateUpdate = 11
        case badUpdate = 12
        case timeout = 13
        case shuttingDown = 14
        /// The coordinator has as many connections as it accepts; try again later.
        case overloaded = 15
        /// A frame header with flag bits this version does not define (version 2).
        case unknownFlags = 16
        /// A frame of another type inside a continued message (version 2).
        case interleavedFrame = 17
        /// HELLO lists no codec the coordinator's task needs (version 2).
        case unsupportedCodec = 18

        /// The code sent on a connection speaking `version`: version 1 has no codes above 15,
        /// and its peers get malformedMessage for those, as version-1 coordinators sent.
        public func wireCode(version: UInt8) -> UInt16 {
            version < 2 && rawValue > 15 ? Code.malformedMessage.rawValue : rawValue
        }
    }

    public let code: Code
    /// What the peer is told.
    public let message: String
    /// What only the log and the store are told (e.g. why an authentication failed).
    public let detail: String?
    /// The client the error concerns, when it is known (for logs and events).
    public let clientID: String?

    public init(_ code: Code, _ message: String, detail: String? = nil, clientID: String? = nil) {
        self.code = code
        self.message = message
        self.detail = detail
        self.clientID = clientID
    }

    public var description: String { "\(code) (\(code.rawValue)): \(message)" + (detail.map { " [\($0)]" } ?? "") }
}
