/// Why an encoded shard was refused. Decoders face bytes from the network, so every way a
/// shard can be malformed or hostile has its own case; none of them crashes or allocates
/// more than the expected shard size allows.
public struct CodecError: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case badSpec, badMagic, unsupportedVersion, unknownCodec, badHeader
        case wrongElementCount, bodyTooLarge, truncated, decompressionFailed, trailingBytes
        case badChecksum, badIndex, repeatedIndex, nonFinite
    }

    public let code: Code
    public let message: String

    init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }

    static func spec(_ message: String) -> CodecError { CodecError(.badSpec, message) }
}
