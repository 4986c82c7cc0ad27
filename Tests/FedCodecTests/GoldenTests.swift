import Testing
@testable import FedCodec

/// The worked examples in Protocol.md, byte for byte: a change to the format breaks these.
@Suite struct GoldenTests {
    func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined(separator: " ") }

    @Test func denseQ8Example() throws {
        let bytes = try encode([0.5, -0.25, 0.25, -1], "q8+raw")
        #expect(hex(bytes) == "46 43 01 02 00 00 00 00 00 01 00 00 04 00 00 00 04 00 00 00 0c 00 00 00 0c 00 00 00 a4 a6 f9 d3 00 00 80 bf c1 c0 c0 3b ff 7f d4 00")
        let decoded = try ShardCodec.decode(bytes, expectedCount: 4)
        #expect(decoded.map { ($0 * 1000).rounded() } == [500, -253, 247, -1000])
    }

    @Test func sparseFP16Example() throws {
        let bytes = try encode([0, 0.5, 0, 0, -2, 0, 0, 0.25], "topk:0.25+fp16+raw")
        #expect(hex(bytes) == "46 43 01 01 02 02 00 00 00 01 00 00 08 00 00 00 02 00 00 00 05 00 00 00 05 00 00 00 67 45 1e 6d 12 00 38 00 c0")
        #expect(try ShardCodec.decode(bytes, expectedCount: 8) == [0, 0.5, 0, 0, -2, 0, 0, 0])
    }
}

