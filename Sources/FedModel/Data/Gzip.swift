import CZlib

/// Inflates a gzip (or zlib) stream, refusing to produce more than `limit` bytes.
/// Data that is not compressed at all (no gzip magic) is returned unchanged, so raw and
/// gzipped IDX files load the same way.
func gunzipIfNeeded(_ data: [UInt8], limit: Int, source: String) throws -> [UInt8] {
    guard data.count >= 2, data[0] == 0x1F, data[1] == 0x8B else { return data }
    return try inflate(data, windowBits: 15 + 16, limit: limit, source: source)
}

/// Inflates `data`: a gzip stream (`windowBits` 31), a zlib stream (15) or raw deflate (−15,
/// as inside a zip archive), refusing to produce more than `limit` bytes.
func inflate(_ data: [UInt8], windowBits: Int32, limit: Int, source: String) throws -> [UInt8] {
    guard !data.isEmpty else { throw DataError(source, "empty compressed data") }
    var stream = z_stream()
    guard fed_inflateInit2(&stream, windowBits) == Z_OK else { throw DataError(source, "zlib could not start") }
    defer { inflateEnd(&stream) }
    var output = [UInt8]()
    // The gzip trailer's ISIZE (uncompressed size mod 2^32) sizes the buffer exactly, so it is
    // not regrown (and briefly doubled) while inflating; it is only a hint, the limit still rules.
    let n = data.count
    let declared = windowBits > 15 && n >= 4 ? Int(data[n - 4]) | Int(data[n - 3]) << 8 | Int(data[n - 2]) << 16 | Int(data[n - 1]) << 24 : 0
    output.reserveCapacity(min(limit, declared > 0 ? declared : n * 4))
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    var status: Int32 = Z_OK
    try data.withUnsafeBufferPointer { input in
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress!)
        stream.avail_in = UInt32(input.count)
        repeat {
            status = chunk.withUnsafeMutableBufferPointer { out in
                stream.next_out = out.baseAddress!
                stream.avail_out = UInt32(out.count)
                return inflate(&stream, Z_NO_FLUSH)
            }
            let produced = chunk.count - Int(stream.avail_out)
            if output.count + produced > limit {
                throw DataError(source, "decompresses to more than \(limit) bytes")
            }
            output.append(contentsOf: chunk[0..<produced])
            if status == Z_BUF_ERROR && stream.avail_in == 0 {
                throw DataError(source, "truncated compressed stream after \(output.count) bytes")
            }
            if status != Z_OK && status != Z_STREAM_END && status != Z_BUF_ERROR {
                let message = stream.msg.map { String(cString: $0) } ?? "code \(status)"
                throw DataError(source, "corrupt compressed data (\(message))")
            }
        } while status != Z_STREAM_END
    }
    return output
}
