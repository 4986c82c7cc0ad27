import FedProtocol
import Foundation
import NIOCore
import Testing
@testable import FedCodec

/// The frames in `vectors.json`: each valid one decodes to a message that encodes back to the
/// same bytes; each invalid one is refused with its code; MODEL_SHARD hashes match the decoded
/// shards bit for bit.
@Suite struct FrameVectorTests {
    /// Decodes frames the way a receiver speaking `version` does; the code of the first error.
    static func receive(_ bytes: [UInt8], version: UInt8) -> (messages: [Message], error: ProtocolError.Code?) {
        var decoder = FrameDecoder()
        var framer = MessageFramer(version: version)
        var buffer = ByteBuffer(bytes: bytes)
        var messages: [Message] = []
        do {
            while let frame = try decoder.decodeFrame(&buffer) {
                if let message = try framer.receive(frame) { messages.append(message) }
            }
        } catch let error as ProtocolError {
            return (messages, error.code)
        } catch {
            return (messages, nil)
        }
        return (messages, nil)
    }

    @Test func everyValidFrameDecodesAndEncodesBackToItsBytes() throws {
        let vectors = try Vectors.load()
        #expect(vectors.frames.count >= 15)
        for type in MessageType.allCases {
            #expect(vectors.frames.contains { unhex($0.bytes)[5] == type.rawValue }, "a vector for \(type)")
        }
        for vector in vectors.frames {
            let bytes = unhex(vector.bytes)
            let version = UInt8(vector.version)
            #expect(bytes[4] == version, "\(vector.name)")
            let (messages, error) = Self.receive(bytes, version: version)
            #expect(error == nil && messages.count == 1, "\(vector.name)")
            guard let message = messages.first else { continue }
            #expect("\(message)" == vector.message, "\(vector.name)")
            #expect(hex(FrameVectorCases.frames(message, version: version, frameLimit: vector.frameLimit ?? Frame.defaultMaximumPayload)) == vector.bytes, "\(vector.name)")
            if case .modelShard(let shard) = message {
                let decoded = try ShardCodec.decode(shard.encoded, expectedCount: shard.encoded.withUnsafeBytes { Int($0.loadLittleEndianUInt32(at: 12)) })
                #expect(sha256Hex(decoded) == hex(shard.sha256), "\(vector.name): the MODEL_SHARD's hash is its decoded values'")
            }
        }
    }

    @Test func everyInvalidFrameIsRefusedWithItsCode() throws {
        let vectors = try Vectors.load()
        #expect(vectors.invalidFrames.count >= 15)
        for vector in vectors.invalidFrames {
            let (_, error) = Self.receive(unhex(vector.bytes), version: UInt8(vector.version))
            #expect(error?.wireCode(version: UInt8(vector.version)) == UInt16(vector.code), "\(vector.name)")
        }
    }

    /// Protocol.md's worked examples are the vectors' first HELLO and its UPDATE.
    @Test func theWorkedExamplesAreInTheVectors() throws {
        let text = try String(contentsOf: Vectors.url.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Protocol.md"), encoding: .utf8)
        let vectors = try Vectors.load()
        for name in ["HELLO offering versions 1 and 2 (so in a version-1 frame)", "UPDATE (Protocol.md §9's example, in version 2)"] {
            let bytes = try #require(vectors.frames.first { $0.name == name }).bytes
            // The document shows the bytes 8 to a line, each line followed by a comment.
            let shown = text.components(separatedBy: "\n")
                .filter { $0.hasPrefix("    ") && $0.dropFirst(4).prefix(2).allSatisfy(\.isHexDigit) }
                .map { line in
                    // The bytes end where the comment's run of spaces begins.
                    let bytes = line.dropFirst(4).components(separatedBy: "  ")[0]
                    return bytes.split(separator: " ").prefix { $0.count == 2 && $0.allSatisfy(\.isHexDigit) }.joined()
                }
                .joined()
            #expect(shown.contains(bytes), "\(name) is shown byte for byte in Protocol.md")
        }
    }
}
