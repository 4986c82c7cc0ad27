import CChecksum
import CZlib
import Testing
@testable import FedCodec

/// The folded CRC-32 (Sources/CChecksum) against zlib's, and its constants against their
/// definition.
@Suite struct ChecksumTests {
    static func zlibCRC(_ crc: UInt32, _ bytes: ArraySlice<UInt8>) -> UInt32 {
        bytes.withUnsafeBufferPointer { UInt32(crc32(uLong(crc), $0.baseAddress, uInt($0.count))) }
    }

    static func foldedCRC(_ crc: UInt32, _ bytes: ArraySlice<UInt8>) -> UInt32 {
        bytes.withUnsafeBufferPointer { fed_crc32(crc, $0.baseAddress, $0.count) }
    }

    @Test func everyLengthAndAlignmentMatchesZlib() {
        var generator = SplitMix64(seed: 9)
        let data = (0..<5000).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        for offset in 0..<16 {
            for length in stride(from: 0, through: 4000, by: offset == 0 ? 1 : 37) {
                let slice = data[offset..<(offset + length)]
                #expect(Self.foldedCRC(0, slice) == Self.zlibCRC(0, slice), "offset \(offset), length \(length)")
            }
        }
        // Continuing from an earlier CRC, as frames and shards do not but callers may.
        #expect(Self.foldedCRC(0x1234_5678, data[...]) == Self.zlibCRC(0x1234_5678, data[...]))
        // Lengths about the 512-byte start and the 256-byte steps of the 16-lane fold.
        for length in [511, 512, 513, 767, 768, 769, 1023, 1024, 1025, 1279, 1280, 1281, 4096 + 63, 4096 + 64, 4096 + 255] {
            let slice = data[3..<(3 + length)]
            #expect(Self.foldedCRC(0xDEAD_BEEF, slice) == Self.zlibCRC(0xDEAD_BEEF, slice), "length \(length)")
        }
        let large = (0..<(3 << 20)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        #expect(Self.foldedCRC(0, large[...]) == Self.zlibCRC(0, large[...]))
        #expect(Self.foldedCRC(0, [UInt8](repeating: 0xFF, count: 100_000)[...]) == Self.zlibCRC(0, [UInt8](repeating: 0xFF, count: 100_000)[...]))
    }

    /// The folding constants are x^e mod P (P the CRC-32 polynomial 0x104C11DB7), bit-reflected
    /// over 32 bits and shifted left by one.
    @Test func theFoldingConstantsAreTheirDefinition() {
        func xPowerMod(_ e: Int) -> UInt64 {
            var r: UInt64 = 1
            for _ in 0..<e {
                r <<= 1
                if r & (1 << 32) != 0 { r ^= 0x1_04C1_1DB7 }
            }
            return r
        }
        func constant(_ e: Int) -> UInt64 { UInt64(UInt32(xPowerMod(e)).bitReversed) << 1 }
        #expect(constant(2048 + 32) == 0x1_1542_778A)
        #expect(constant(2048 - 32) == 0x1_322D_1430)
        #expect(constant(512 + 32) == 0x1_5444_2BD4)
        #expect(constant(512 - 32) == 0x1_C6E4_1596)
        #expect(constant(128 + 32) == 0x1_7519_97D0)
        #expect(constant(128 - 32) == 0x0_CCAA_009E)
        #expect(fed_crc32_is_folded() == 1, "this machine has PCLMULQDQ; the build should use it")
    }
}

extension UInt32 {
    var bitReversed: UInt32 {
        var value = self, result: UInt32 = 0
        for _ in 0..<32 {
            result = result << 1 | value & 1
            value >>= 1
        }
        return result
    }
}

/// The block scan for NaN and infinity against a value-by-value search.
@Suite struct FiniteScanTests {
    @Test func findsTheFirstNonFiniteValueAnywhere() {
        var generator = SplitMix64(seed: 4)
        let finite = (0..<10_007).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: generator.next()) & 0x7F7F_FFFF | 0x8000_0000 * UInt32(generator.next() & 1)) }
        #expect(finite.allSatisfy { $0.isFinite })
        #expect(finite.withUnsafeBufferPointer { FiniteScan.firstNonFinite($0) } == nil)
        #expect(FiniteScan.allFinite(finite, in: [0..<5000, 6000..<10_007]))
        // Both blocks' edges, a vector's tail, the last value, with every kind of non-finite value.
        for position in [0, 15, 16, 4095, 4096, 4097, 8191, 10_000, 10_006] {
            for bad in [Float.nan, .infinity, -.infinity, Float(bitPattern: 0xFF80_0001)] {
                var values = finite
                values[position] = bad
                values[min(position + 3, values.count - 1)] = .nan
                #expect(values.withUnsafeBufferPointer { FiniteScan.firstNonFinite($0) } == position, "\(position) \(bad)")
                #expect(!FiniteScan.allFinite(values, in: [0..<values.count]))
                #expect(FiniteScan.allFinite(values, in: [0..<position]))
            }
        }
        #expect([Float]().withUnsafeBufferPointer { FiniteScan.firstNonFinite($0) } == nil)
    }
}
