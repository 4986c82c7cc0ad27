import Crypto
import Foundation
@testable import FedCodec

/// The conformance vectors file (`vectors.json`, described in Protocol.md §10): what an
/// implementation in another language checks itself against.
struct Vectors: Codable {
    var format = "fedl-conformance-1"
    var about = ""
    var shards: [ShardVector] = []
    var invalidShards: [InvalidShardVector] = []
    var frames: [FrameVector] = []
    var invalidFrames: [InvalidFrameVector] = []

    static let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("vectors.json")

    static func load() throws -> Vectors {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(Vectors.self, from: Data(contentsOf: url))
    }

    func write() throws {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try (encoder.encode(self) + Data("\n".utf8)).write(to: Self.url)
    }
}

/// A valid encoded shard: the spec it was encoded with, the input values, the encoded bytes,
/// and the values every decoder must produce, bit for bit.
struct ShardVector: Codable {
    var name: String
    var spec: String
    /// The element count n (the decoder's expected count).
    var count: Int
    /// Input values as little-endian binary32, in hex.
    var input: String
    var encoded: String
    /// True when the text alone defines these bytes, so an encoder must reproduce them
    /// (false for zlib, whose output depends on the library, and for stochastic rounding).
    var encodingPinned: Bool
    /// Decoded values as little-endian binary32, in hex.
    var decoded: String
    /// SHA-256 of the decoded bytes: what a MODEL_SHARD of this shard carries.
    var sha256: String
    /// A pruning mask (ascending kept positions) the encoder was given: the shard is sparse
    /// over exactly these positions.
    var mask: [Int]? = nil
    /// True when the receiver holds `mask` too (an update for a pruned model): the positions
    /// are not written (index encoding 3) and a decoder must be given the mask.
    var receiverHoldsMask: Bool? = nil
    /// A shard sent as low-rank factors (index encoding 4, Protocol.md §8.6): the columns of its
    /// matrix, which the decoder must be given; `input` then holds the factors P then Q.
    var columns: Int? = nil
}

/// Bytes a decoder must refuse, and the error it must refuse them with.
struct InvalidShardVector: Codable {
    var name: String
    var count: Int
    var encoded: String
    var error: String
    /// The pruning mask the decoder holds, when it holds one.
    var mask: [Int]? = nil
    /// The columns the decoder expects factors with, when it expects them.
    var columns: Int? = nil
}

/// A whole frame (or several, for a split message) and the message it carries.
struct FrameVector: Codable {
    var name: String
    /// The protocol version the connection speaks when the frame is sent.
    var version: Int
    var bytes: String
    var message: String
    /// The frame payload limit the message was split at, when not the 1 MiB default.
    var frameLimit: Int?
}

/// Bytes a receiver must refuse, with the ERROR code it answers.
struct InvalidFrameVector: Codable {
    var name: String
    var version: Int
    var bytes: String
    var error: String
    var code: Int
}

func hex(_ bytes: some Sequence<UInt8>) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

func unhex(_ text: String) -> [UInt8] {
    let digits = Array(text.utf8)
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(decoding: digits[$0..<$0 + 2], as: UTF8.self), radix: 16)! }
}

func littleEndian(_ values: [Float]) -> [UInt8] {
    values.flatMap { value in (0..<4).map { UInt8(truncatingIfNeeded: value.bitPattern >> (8 * $0)) } }
}

func floats(_ bytes: [UInt8]) -> [Float] {
    stride(from: 0, to: bytes.count, by: 4).map { i in
        Float(bitPattern: UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24)
    }
}

/// Encodes with the seed every vector uses (it matters only for `sr`).
func encodeShard(_ values: [Float], _ spec: String, keeping mask: [Int]? = nil, receiverHoldsMask: Bool = false) throws -> [UInt8] {
    var generator = SplitMix64(seed: 1)
    return try values.withUnsafeBufferPointer {
        try ShardCodec.encode($0, spec: CodecSpec(parsing: spec), keeping: mask?.map(UInt32.init), receiverHoldsMask: receiverHoldsMask, generator: &generator)
    }
}

/// Encodes the factors P then Q (`factors`) of a shard of `count` values and `columns` columns.
func encodeFactorShard(_ factors: [Float], count: Int, columns: Int, _ spec: String) throws -> [UInt8] {
    var generator = SplitMix64(seed: 1)
    let parsed = try CodecSpec(parsing: spec)
    let rows = count / columns
    let rank = parsed.factorRank(count: count, columns: columns)!
    precondition(factors.count == rank * (rows + columns), "factors do not match the shape")
    return try ShardCodec.encodeFactors(p: Array(factors.prefix(rows * rank)), q: Array(factors.suffix(columns * rank)),
                                        rows: rows, columns: columns, rank: rank, spec: parsed, generator: &generator)
}

/// Decodes as a receiver holding `mask` (if any), and expecting factors of `columns` columns
/// (if given), does.
func decodeShard(_ bytes: [UInt8], count: Int, mask: [Int]?, columns: Int? = nil) throws -> [Float] {
    var output = [Float](repeating: 0, count: count)
    try bytes.withUnsafeBytes { raw in
        try output.withUnsafeMutableBufferPointer { try ShardCodec.decode(raw, into: $0, mask: mask?.map(UInt32.init), columns: columns) }
    }
    return output
}

func sha256Hex(_ values: [Float]) -> String { hex(SHA256.hash(data: littleEndian(values))) }
