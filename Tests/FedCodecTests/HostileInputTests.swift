import Foundation
import PropertyBased
import Testing
@testable import FedCodec

/// Decoders face bytes from the network: every malformed shard is refused with a typed
/// error, never a crash, and never more memory than the expected shard size.
@Suite struct HostileInputTests {
    func code(_ bytes: [UInt8], expectedCount: Int) -> CodecError.Code? {
        do {
            _ = try ShardCodec.decode(bytes, expectedCount: expectedCount)
            return nil
        } catch let error as CodecError {
            return error.code
        } catch {
            Issue.record("untyped error \(error)")
            return nil
        }
    }

    /// Rewrites a header field and, for uncompressed bodies, keeps the checksum honest so the
    /// intended check is the one that fires.
    func patched(_ bytes: [UInt8], at offset: Int, _ value: UInt32) -> [UInt8] {
        var b = bytes
        for i in 0..<4 { b[offset + i] = UInt8(value >> (8 * UInt32(i)) & 0xFF) }
        return b
    }

    func rechecksummed(_ bytes: [UInt8]) -> [UInt8] {
        let crc = bytes[32...].withUnsafeBytes { crc32Checksum($0) }
        return patched(bytes, at: 28, crc)
    }

    let values = gaussianLike(1000, seed: 1)

    @Test func wrongElementCount() throws {
        #expect(code(try encode(values, "q8"), expectedCount: 999) == .wrongElementCount)
    }

    @Test func badMagicVersionCodecAndFlags() throws {
        var b = try encode(values, "q8")
        b[0] = 0x47
        #expect(code(b, expectedCount: 1000) == .badMagic)
        b = try encode(values, "q8"); b[2] = 9
        #expect(code(b, expectedCount: 1000) == .unsupportedVersion)
        b = try encode(values, "q8"); b[3] = 42
        #expect(code(b, expectedCount: 1000) == .unknownCodec)
        b = try encode(values, "q8"); b[4] |= 0x80
        #expect(code(b, expectedCount: 1000) == .badHeader)
    }

    @Test func truncatedAndTrailingBytes() throws {
        for spec in ["q8", "q8+raw"] {
            let b = try encode(values, spec)
            #expect(code(Array(b.prefix(20)), expectedCount: 1000) == .truncated)
            #expect(code(Array(b.dropLast(5)), expectedCount: 1000) == .truncated, "\(spec)")
            #expect(code(b + [0, 0], expectedCount: 1000) == .trailingBytes, "\(spec)")
        }
    }

    @Test func badChecksum() throws {
        var b = try encode(values, "q8+raw")
        b[40] ^= 0x01
        #expect(code(b, expectedCount: 1000) == .badChecksum)
        var z = try encode(values, "q8")
        z[28] ^= 0xFF
        #expect(code(z, expectedCount: 1000) == .badChecksum)
    }

    @Test func zlibBombIsRefusedWithoutInflatingIt() throws {
        // 64 MB of zeros compress to about 64 KB; the header claims a small q8 body.
        let bomb = zlibCompress([UInt8](repeating: 0, count: 64 << 20), level: 9)
        let good = try encode(values, "q8")
        var b = Array(good.prefix(32))
        b[4] |= 1  // compressed body
        b = patched(b, at: 24, UInt32(bomb.count))
        b += bomb
        #expect(code(b, expectedCount: 1000) == .bodyTooLarge)
        // A header that declares a huge body is refused before any inflation.
        let huge = patched(good, at: 20, UInt32.max)
        #expect(code(huge, expectedCount: 1000) == .bodyTooLarge)
    }

    @Test func corruptCompressedStream() throws {
        var b = try encode(values, "fp32")
        #expect(b[4] & 1 == 1, "fp32 deltas compress")
        for i in 40..<60 { b[i] ^= 0xA5 }
        let c = code(b, expectedCount: 1000)
        #expect(c == .decompressionFailed || c == .truncated || c == .badChecksum || c == .bodyTooLarge, "got \(String(describing: c))")
    }

    @Test func repeatedAndOutOfRangeIndices() throws {
        var b = try encode(values, "topk:0.01+fp32+raw")
        #expect(b[5] == 1)
        // The index section starts the body: 10 varints. A zero delta repeats the previous index.
        b[33] = 0
        #expect(code(rechecksummed(b), expectedCount: 1000) == .repeatedIndex)
        b = try encode(values, "topk:0.01+fp32+raw")
        b[32] = 0xE7; b[33] = 0x07  // first index 999 + delta: the next delta now points past the end
        let c = code(rechecksummed(b), expectedCount: 1000)
        #expect(c == .badIndex || c == .truncated || c == .trailingBytes, "got \(String(describing: c))")
    }

    @Test func bitmapWithWrongPopulation() throws {
        var b = try encode(values, "topk:0.6+fp32+raw")
        #expect(b[5] == 2)
        b[32] ^= 0x01
        #expect(code(rechecksummed(b), expectedCount: 1000) == .badIndex)
    }

    @Test func nonFiniteValuesInTheBody() throws {
        var b = try encode([1, 2, 3], "fp32+raw")
        let nan = Float.nan.bitPattern
        for i in 0..<4 { b[36 + i] = UInt8(nan >> (8 * UInt32(i)) & 0xFF) }
        #expect(code(rechecksummed(b), expectedCount: 3) == .nonFinite)
        var q = try encode([1, 2, 3], "q8+raw")
        let inf = Float.infinity.bitPattern
        for i in 0..<4 { q[36 + i] = UInt8(inf >> (8 * UInt32(i)) & 0xFF) }  // the group's step
        #expect(code(rechecksummed(q), expectedCount: 3) == .nonFinite)
    }

    @Test func randomBytesNeverCrash() async {
        await propertyCheck(count: 3000, input: Gen.uint8(in: 0...255).array(of: 0...200), Gen.int(in: 0...2000)) { bytes, count in
            _ = try? ShardCodec.decode(bytes, expectedCount: count)
        }
    }

    @Test func mutatedEncodingsAreRefusedOrDecodeToFiniteValues() async throws {
        let seeds = try ["q8", "q4+raw", "sign", "topk:0.05+q8", "topk:0.05+fp16+raw", "fp32", "topk:0.7+q2"].map { try encode(gaussianLike(300, seed: 3), $0) }
        await propertyCheck(count: 3000, input: Gen.int(in: 0...6), Gen.int(in: 0...10_000), Gen.uint8(in: 0...255)) { which, position, byte in
            var b = seeds[which]
            b[position % b.count] = byte
            if let decoded = try? ShardCodec.decode(b, expectedCount: 300) {
                #expect(decoded.count == 300 && decoded.allSatisfy { $0.isFinite })
            }
        }
    }
}
