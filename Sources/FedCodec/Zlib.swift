import CChecksum
import CZlib

/// zlib (RFC 1950) compression of a whole buffer.
func zlibCompress(_ input: [UInt8], level: Int) -> [UInt8] {
    var outputLength = compressBound(uLong(input.count))
    var output = [UInt8](repeating: 0, count: Int(outputLength))
    let status = output.withUnsafeMutableBufferPointer { out in
        input.withUnsafeBufferPointer { source in
            compress2(out.baseAddress!, &outputLength, source.baseAddress, uLong(source.count), Int32(level))
        }
    }
    precondition(status == Z_OK, "compress2 failed with \(status) on a buffer of \(input.count) bytes")
    output.removeSubrange(Int(outputLength)...)
    return output
}

/// Inflates a zlib stream that must decompress to exactly `expectedLength` bytes. The output
/// buffer is that size and never grows: a stream that would produce more (a zlib bomb), less
/// (truncated), or that has bytes after its end is refused.
func zlibDecompress(_ input: UnsafeRawBufferPointer, expectedLength: Int) throws -> [UInt8] {
    var stream = z_stream()
    guard inflateInit_(&stream, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
        throw CodecError(.decompressionFailed, "zlib could not start")
    }
    defer { inflateEnd(&stream) }
    var output = [UInt8](repeating: 0, count: expectedLength)
    // One extra byte of room tells "exactly full" apart from "wants to write more".
    var spare: UInt8 = 0
    let status: Int32 = output.withUnsafeMutableBufferPointer { out in
        stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: UInt8.self).baseAddress)
        stream.avail_in = UInt32(input.count)
        stream.next_out = out.baseAddress
        stream.avail_out = UInt32(out.count)
        var status = inflate(&stream, Z_FINISH)
        if status != Z_STREAM_END && stream.avail_out == 0 && status != Z_DATA_ERROR {
            withUnsafeMutablePointer(to: &spare) { extra in
                stream.next_out = extra
                stream.avail_out = 1
                status = inflate(&stream, Z_FINISH)
                if stream.avail_out == 0 { status = Z_MEM_ERROR }  // it produced more than declared
            }
        }
        return status
    }
    switch status {
    case Z_STREAM_END:
        guard Int(stream.total_out) == expectedLength else {
            throw CodecError(.truncated, "compressed body inflates to \(stream.total_out) bytes, header declares \(expectedLength)")
        }
        guard stream.avail_in == 0 else {
            throw CodecError(.trailingBytes, "\(stream.avail_in) bytes after the end of the compressed body")
        }
        return output
    case Z_MEM_ERROR:
        throw CodecError(.bodyTooLarge, "compressed body inflates to more than the declared \(expectedLength) bytes")
    case Z_BUF_ERROR, Z_OK:
        throw CodecError(.truncated, "compressed body ends early (after \(stream.total_out) of \(expectedLength) bytes)")
    default:
        let message = stream.msg.map { String(cString: $0) } ?? "zlib error \(status)"
        throw CodecError(.decompressionFailed, "corrupt compressed body: \(message)")
    }
}

/// CRC-32 (the zlib/PNG polynomial) of a buffer.
func crc32Checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
    fed_crc32(0, bytes.bindMemory(to: UInt8.self).baseAddress, bytes.count)
}

/// CRC-32 as the wire uses it (frames and shard bodies), and zlib's own for comparison.
public enum Checksum {
    /// Folded with carry-less multiplication where the CPU has it (Sources/CChecksum).
    public static func crc32(_ bytes: UnsafeRawBufferPointer) -> UInt32 { crc32Checksum(bytes) }

    /// zlib's `crc32`, the reference the folded one is tested and benchmarked against.
    public static func zlibCRC32(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        UInt32(CZlib.crc32(0, bytes.bindMemory(to: UInt8.self).baseAddress, uInt(bytes.count)))
    }
}

/// Plain zlib over a byte buffer, for callers outside the shard format (benchmarks, files).
public enum Zlib {
    public static func compress(_ bytes: [UInt8], level: Int = 6) -> [UInt8] {
        zlibCompress(bytes, level: level)
    }

    /// Inflates `bytes`, which must decompress to exactly `expectedLength` bytes.
    public static func decompress(_ bytes: [UInt8], expectedLength: Int) throws -> [UInt8] {
        try bytes.withUnsafeBytes { try zlibDecompress($0, expectedLength: expectedLength) }
    }
}
