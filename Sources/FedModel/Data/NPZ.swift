import Foundation

/// NumPy's `.npz` archives (`np.savez`, `np.savez_compressed`): a zip file of `.npy` members,
/// stored or deflated. Only what those write is read: no zip64, no encryption, no multi-disk.
public enum NPZ {
    /// The members by name without `.npy` (`x`, `y`).
    public static func read(contentsOf url: URL) throws -> [String: NPY.Array] {
        let source = url.path
        let data: [UInt8]
        do { data = [UInt8](try Data(contentsOf: url)) } catch {
            throw DataError(source, FileManager.default.fileExists(atPath: source) ? "cannot read file" : "no such file")
        }
        guard data.count <= NPY.maximumBytes else { throw DataError(source, "larger than \(NPY.maximumBytes) bytes") }
        func u16(_ at: Int) -> Int { Int(data[at]) | Int(data[at + 1]) << 8 }
        func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
        // The end-of-central-directory record: within the last 64 KiB + 22 bytes.
        guard data.count >= 22, let end = stride(from: data.count - 22, through: max(0, data.count - 65_557), by: -1).first(where: {
            data[$0] == 0x50 && data[$0 + 1] == 0x4B && data[$0 + 2] == 5 && data[$0 + 3] == 6
        }) else { throw DataError(source, "not a .npz (zip) file: no end of central directory") }
        let entries = u16(end + 10), directoryOffset = u32(end + 16)
        var members: [String: NPY.Array] = [:]
        var at = directoryOffset
        for _ in 0..<entries {
            guard at + 46 <= data.count, u32(at) == 0x0201_4B50 else { throw DataError(source, "corrupt zip central directory") }
            let method = u16(at + 10), compressed = u32(at + 20), size = u32(at + 24)
            let nameLength = u16(at + 28), extraLength = u16(at + 30), commentLength = u16(at + 32), local = u32(at + 42)
            guard at + 46 + nameLength <= data.count else { throw DataError(source, "corrupt zip central directory") }
            let name = String(decoding: data[(at + 46)..<(at + 46 + nameLength)], as: UTF8.self)
            at += 46 + nameLength + extraLength + commentLength
            guard local + 30 <= data.count, u32(local) == 0x0403_4B50 else { throw DataError(source, "\(name): corrupt zip entry") }
            let start = local + 30 + u16(local + 26) + u16(local + 28)
            guard compressed != 0xFFFF_FFFF, start + compressed <= data.count else { throw DataError(source, "\(name): truncated or zip64 entry") }
            let stored = Array(data[start..<(start + compressed)])
            let bytes: [UInt8]
            switch method {
            case 0: bytes = stored
            case 8: bytes = try inflate(stored, windowBits: -15, limit: NPY.maximumBytes, source: "\(source): \(name)")
            default: throw DataError(source, "\(name): zip compression method \(method) is not supported (stored or deflated)")
            }
            guard bytes.count == size else { throw DataError(source, "\(name): \(bytes.count) bytes, the archive says \(size)") }
            let key = name.hasSuffix(".npy") ? String(name.dropLast(4)) : name
            members[key] = try NPY.parse(bytes, source: "\(source): \(name)")
        }
        return members
    }
}
