/// Finds non-finite float32 values at memory speed: every decoded shard and every update the
/// coordinator accepts is scanned once, so a value-by-value `isFinite` loop cost as much as the
/// decoding itself.
public enum FiniteScan {
    /// The index of the first NaN or infinity in `values`, or nil when every value is finite.
    public static func firstNonFinite(_ values: UnsafeBufferPointer<Float>) -> Int? {
        guard let base = values.baseAddress else { return nil }
        let raw = UnsafeRawPointer(base)
        let count = values.count
        // A value is finite when its bits without the sign are below the infinity's. Blocks
        // keep the largest such bits lane by lane; only a block that holds a hit is searched.
        let block = 4096
        var start = 0
        while start < count {
            let end = min(count, start + block)
            var top = SIMD16<UInt32>(repeating: 0)
            let magnitude = SIMD16<UInt32>(repeating: 0x7FFF_FFFF)
            var i = start
            while i + 16 <= end {
                top = pointwiseMax(top, raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<UInt32>.self) & magnitude)
                i += 16
            }
            var largest = top.max()
            while i < end {
                largest = max(largest, raw.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self) & 0x7FFF_FFFF)
                i += 1
            }
            if largest >= 0x7F80_0000 {
                return (start..<end).first { !values[$0].isFinite }
            }
            start = end
        }
        return nil
    }

    /// Whether every value of `values` is finite.
    public static func allFinite(_ values: UnsafeBufferPointer<Float>) -> Bool {
        firstNonFinite(values) == nil
    }

    /// Whether every value of `values` in `ranges` is finite.
    public static func allFinite(_ values: [Float], in ranges: some Sequence<Range<Int>>) -> Bool {
        values.withUnsafeBufferPointer { all in ranges.allSatisfy { allFinite(UnsafeBufferPointer(rebasing: all[$0])) } }
    }
}
