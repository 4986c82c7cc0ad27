import Foundation

/// Reader for the IDX files MNIST ships in: a big-endian magic (0x0000 08 NN, 08 = unsigned
/// bytes, NN = number of dimensions), one big-endian UInt32 per dimension, then the bytes,
/// of any shape.
/// Gzipped or raw files are both accepted.
public enum IDX {
    /// Largest file accepted once decompressed.
    public static let maximumBytes = 1 << 30

    /// The dimensions and payload of an unsigned-byte IDX file, validated.
    public static func read(contentsOf url: URL, expectedDimensions: ClosedRange<Int>) throws -> (dimensions: [Int], bytes: ArraySlice<UInt8>) {
        try parse(readDecompressed(url), expectedDimensions: expectedDimensions, source: url.path)
    }

    /// ``read(contentsOf:expectedDimensions:)`` for exactly `expectedDimensions` dimensions.
    public static func read(contentsOf url: URL, expectedDimensions: Int) throws -> (dimensions: [Int], bytes: ArraySlice<UInt8>) {
        try read(contentsOf: url, expectedDimensions: expectedDimensions...expectedDimensions)
    }

    /// ``parse(_:expectedDimensions:source:)`` for exactly `expectedDimensions` dimensions.
    public static func parse(_ data: [UInt8], expectedDimensions: Int, source: String) throws -> (dimensions: [Int], bytes: ArraySlice<UInt8>) {
        try parse(data, expectedDimensions: expectedDimensions...expectedDimensions, source: source)
    }

    /// The file's bytes, inflated when it is gzipped (at most ``maximumBytes``).
    static func readDecompressed(_ url: URL) throws -> [UInt8] {
        let source = url.path
        let raw: [UInt8]
        do {
            raw = [UInt8](try Data(contentsOf: url))
        } catch {
            throw DataError(source, FileManager.default.fileExists(atPath: source) ? "cannot read file" : "no such file")
        }
        return try gunzipIfNeeded(raw, limit: maximumBytes, source: source)
    }

    /// Validates an already decompressed IDX buffer.
    /// The payload is returned as a slice of `data` (no copy); its indices start after the header.
    public static func parse(_ data: [UInt8], expectedDimensions: ClosedRange<Int>, source: String) throws -> (dimensions: [Int], bytes: ArraySlice<UInt8>) {
        guard data.count >= 4 else { throw DataError(source, "too short for an IDX header (\(data.count) bytes)") }
        guard data[0] == 0, data[1] == 0 else { throw DataError(source, "bad IDX magic \(hex(data[0..<4])): first two bytes must be zero") }
        guard data[2] == 0x08 else { throw DataError(source, "bad IDX magic \(hex(data[0..<4])): element type 0x\(String(data[2], radix: 16)) is not unsigned byte (0x08)") }
        let dimensionCount = Int(data[3])
        guard expectedDimensions.contains(dimensionCount) else {
            let expected = expectedDimensions.count == 1 ? "\(expectedDimensions.lowerBound)" : "\(expectedDimensions.lowerBound) to \(expectedDimensions.upperBound)"
            throw DataError(source, "IDX file has \(dimensionCount) dimensions, expected \(expected)")
        }
        let headerBytes = 4 + 4 * dimensionCount
        guard data.count >= headerBytes else { throw DataError(source, "truncated IDX header") }
        var dimensions: [Int] = []
        var total = 1
        for d in 0..<dimensionCount {
            let o = 4 + 4 * d
            let value = Int(data[o]) << 24 | Int(data[o + 1]) << 16 | Int(data[o + 2]) << 8 | Int(data[o + 3])
            guard value > 0 else { throw DataError(source, "IDX dimension \(d) is zero") }
            dimensions.append(value)
            total = total.multipliedReportingOverflow(by: value).partialValue
            guard total <= maximumBytes else { throw DataError(source, "IDX dimensions \(dimensions) are too large") }
        }
        let payload = data.count - headerBytes
        guard payload == total else {
            let what = payload < total ? "truncated" : "has trailing bytes"
            throw DataError(source, "\(what): header \(dimensions) promises \(total) data bytes, file has \(payload)")
        }
        return (dimensions, data[headerBytes...])
    }

    private static func hex(_ bytes: ArraySlice<UInt8>) -> String {
        "0x" + bytes.map { String(format: "%02x", $0) }.joined()
    }
}
