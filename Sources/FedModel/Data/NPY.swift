import Foundation

/// Reader for NumPy's `.npy` arrays (format versions 1.0 to 3.0), the usual way to hand arrays
/// between tools: `np.save("x.npy", features)`, `np.save("y.npy", labels)`.
///
/// Accepted: little-endian or single-byte types (`<f4`, `<f8`, `|u1`, `|i1`, `<i2`, `<u2`,
/// `<i4`, `<u4`, `<i8`, `<u8`), C order. Refused with an error naming the file: a bad magic or
/// header, big-endian or other types (objects, strings, complex), Fortran order (save with
/// `np.ascontiguousarray`), and data shorter or longer than the shape says.
public enum NPY {
    /// Largest file accepted.
    public static let maximumBytes = 1 << 31

    /// An array's shape and values (as Double, exact for every accepted type but 64-bit
    /// integers beyond 2^53, which no label or feature reaches).
    public struct Array {
        public var shape: [Int]
        public var kind: Kind
        public var values: [Double]

        public enum Kind: Equatable { case float, unsignedByte, integer }
    }

    public static func read(contentsOf url: URL) throws -> Array {
        let source = url.path
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw DataError(source, FileManager.default.fileExists(atPath: source) ? "cannot read file" : "no such file")
        }
        guard data.count <= maximumBytes else { throw DataError(source, "larger than \(maximumBytes) bytes") }
        return try parse([UInt8](data), source: source)
    }

    /// `values` as a little-endian float32 `.npy` file (format 1.0) of `shape`.
    public static func float32File(_ values: UnsafeBufferPointer<Float>, shape: [Int]) -> Data {
        precondition(shape.reduce(1, *) == values.count, "shape \(shape) does not hold \(values.count) values")
        let dims = shape.count == 1 ? "\(shape[0])," : shape.map(String.init).joined(separator: ", ")
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (\(dims)), }"
        // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
        let unpadded = 10 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - unpadded % 64) % 64) + "\n"
        var data = Data([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0, UInt8(header.utf8.count & 0xFF), UInt8(header.utf8.count >> 8)])
        data.append(contentsOf: Swift.Array(header.utf8))
        data.append(UnsafeBufferPointer(start: UnsafeRawPointer(values.baseAddress!).assumingMemoryBound(to: UInt8.self), count: values.count * 4))
        return data
    }

    public static func parse(_ bytes: [UInt8], source: String) throws -> Array {
        let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]  // \x93NUMPY
        guard bytes.count >= 10, Swift.Array(bytes[0..<6]) == magic else { throw DataError(source, "not a .npy file (no \\x93NUMPY magic)") }
        let major = bytes[6]
        let headerLength: Int, headerStart: Int
        switch major {
        case 1:
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
            headerStart = 10
        case 2, 3:
            guard bytes.count >= 12 else { throw DataError(source, "truncated .npy header") }
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
            headerStart = 12
        default:
            throw DataError(source, ".npy format version \(major) is not supported (1 to 3 are)")
        }
        guard headerStart + headerLength <= bytes.count else { throw DataError(source, "truncated .npy header") }
        guard let header = String(bytes: bytes[headerStart..<(headerStart + headerLength)], encoding: major == 3 ? .utf8 : .isoLatin1) else {
            throw DataError(source, "unreadable .npy header")
        }
        let descr = try field("descr", in: header, source: source)
        let fortran = try field("fortran_order", in: header, source: source)
        let shapeText = try field("shape", in: header, source: source)
        guard fortran == "False" else { throw DataError(source, "array is in Fortran order; save it with np.ascontiguousarray") }
        let shape = try parseShape(shapeText, source: source)
        let (width, kind, decode) = try decoder(for: descr, source: source)
        var count = 1
        for d in shape {
            let (product, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow, product <= maximumBytes else { throw DataError(source, "shape \(shape) is too large") }
            count = product
        }
        let start = headerStart + headerLength
        let expected = count * width
        guard bytes.count - start == expected else {
            let what = bytes.count - start < expected ? "truncated" : "has trailing bytes"
            throw DataError(source, "\(what): shape \(shape) of \(descr) needs \(expected) data bytes, file has \(bytes.count - start)")
        }
        let values = bytes.withUnsafeBytes { raw in
            (0..<count).map { decode(raw.baseAddress! + start + $0 * width) }
        }
        return Array(shape: shape, kind: kind, values: values)
    }

    /// The value of `key` in the header's Python dict literal, as written.
    private static func field(_ key: String, in header: String, source: String) throws -> String {
        guard let keyRange = header.range(of: "'\(key)'") ?? header.range(of: "\"\(key)\"") else {
            throw DataError(source, ".npy header has no \(key)")
        }
        var rest = header[keyRange.upperBound...].drop { $0 == " " || $0 == ":" }
        if rest.first == "(" {
            guard let close = rest.firstIndex(of: ")") else { throw DataError(source, ".npy header: unterminated \(key)") }
            return String(rest[rest.startIndex...close])
        }
        if rest.first == "'" || rest.first == "\"" {
            let quote = rest.removeFirst()
            guard let end = rest.firstIndex(of: quote) else { throw DataError(source, ".npy header: unterminated \(key)") }
            return String(rest[..<end])
        }
        return String(rest.prefix { $0 != "," && $0 != "}" }).trimmingCharacters(in: .whitespaces)
    }

    private static func parseShape(_ text: String, source: String) throws -> [Int] {
        let inner = text.trimmingCharacters(in: CharacterSet(charactersIn: "() "))
        let parts = inner.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return try parts.map { part in
            guard let value = Int(part.hasSuffix("L") ? String(part.dropLast()) : part), value >= 0 else {
                throw DataError(source, ".npy shape \(text) is not a tuple of sizes")
            }
            return value
        }
    }

    private static func decoder(for descr: String, source: String) throws -> (Int, Array.Kind, (UnsafeRawPointer) -> Double) {
        switch descr {
        case "<f4", "=f4": return (4, .float, { Double($0.loadUnaligned(as: Float.self)) })
        case "<f8", "=f8": return (8, .float, { $0.loadUnaligned(as: Double.self) })
        case "|u1", "<u1", "=u1": return (1, .unsignedByte, { Double($0.load(as: UInt8.self)) })
        case "|i1", "<i1", "=i1": return (1, .integer, { Double($0.load(as: Int8.self)) })
        case "<i2": return (2, .integer, { Double(Int16(littleEndian: $0.loadUnaligned(as: Int16.self))) })
        case "<u2": return (2, .integer, { Double(UInt16(littleEndian: $0.loadUnaligned(as: UInt16.self))) })
        case "<i4": return (4, .integer, { Double(Int32(littleEndian: $0.loadUnaligned(as: Int32.self))) })
        case "<u4": return (4, .integer, { Double(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) })
        case "<i8": return (8, .integer, { Double(Int64(littleEndian: $0.loadUnaligned(as: Int64.self))) })
        case "<u8": return (8, .integer, { Double(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) })
        default:
            throw DataError(source, "array type \(descr) is not supported (little-endian float32/64, or integers)")
        }
    }
}

/// A dataset from two `.npy` files: features of shape [N, D] (a vector per example),
/// [N, H, W] (one channel) or [N, H, W, C], and targets: integer class labels of shape [N], or
/// (for value targets) floats of shape [N] or [N, K]. Unsigned-byte features are images and are
/// scaled to [0, 1]; float features are taken as they are and must be finite. Errors name the
/// file and the first bad example.
public enum NPYDataset {
    /// `ids`: an optional file of integer user or device ids `[N]` (for the natural partition).
    /// `targets` nil reads integer targets of shape [N] as class labels and any others as values
    /// (a device that reads its data before it learns the task).
    public static func load(features featureURL: URL, labels labelURL: URL, ids idURL: URL? = nil, targets: TargetFormat? = .classes(nil)) throws -> Dataset {
        try make(
            x: NPY.read(contentsOf: featureURL), y: NPY.read(contentsOf: labelURL), ids: idURL.map { try NPY.read(contentsOf: $0) },
            names: (featureURL.path, labelURL.path, idURL?.path ?? ""), targets: targets)
    }

    /// The same from one `.npz` archive holding `x`, `y` and optionally `ids`.
    public static func load(archive url: URL, targets: TargetFormat? = .classes(nil)) throws -> Dataset {
        let members = try NPZ.read(contentsOf: url)
        guard let x = members["x"], let y = members["y"] else {
            throw DataError(url.path, "a data archive holds arrays x and y (np.savez(file, x=..., y=...)), this one \(members.keys.sorted())")
        }
        return try make(x: x, y: y, ids: members["ids"], names: ("\(url.path): x", "\(url.path): y", "\(url.path): ids"), targets: targets)
    }

    static func make(x: NPY.Array, y: NPY.Array, ids: NPY.Array?, names: (features: String, labels: String, ids: String), targets: TargetFormat?) throws -> Dataset {
        let targets = targets ?? (y.kind != .float && y.shape.count == 1 ? .classes(nil) : .values(width: nil, unitInterval: false))
        var groups: [Int32]?
        if let ids {
            guard ids.shape == [y.shape.first ?? 0], ids.kind != .float else {
                throw DataError(names.ids, "user ids must be integers of shape [\(y.shape.first ?? 0)] to match the labels, got \(ids.kind == .float ? "floats" : "shape \(ids.shape)")")
            }
            groups = try ids.values.enumerated().map { i, value in
                guard value >= Double(Int32.min), value <= Double(Int32.max) else {
                    throw DataError(names.ids, "example \(i): user id \(Int64(value)) does not fit 32 bits")
                }
                return Int32(value)
            }
        }
        let source = names.features
        let featureName = URL(fileURLWithPath: names.features).lastPathComponent
        let labelPath = names.labels
        guard (2...4).contains(x.shape.count), x.shape[0] > 0 else {
            throw DataError(source, "features must have shape [N, D], [N, H, W] or [N, H, W, C] with N > 0, got \(x.shape)")
        }
        let targetWidth: Int
        switch targets {
        case .classes:
            guard y.shape == [x.shape[0]] else {
                throw DataError(labelPath, "labels must have shape [\(x.shape[0])] to match \(featureName), got \(y.shape)")
            }
            guard y.kind != .float else { throw DataError(labelPath, "labels must be integers (class indices), got floats") }
            targetWidth = 1
        case .values:
            guard y.shape.first == x.shape[0], y.shape.count <= 2 else {
                throw DataError(labelPath, "targets must have shape [\(x.shape[0])] or [\(x.shape[0]), K] to match \(featureName), got \(y.shape)")
            }
            targetWidth = y.shape.count == 2 ? y.shape[1] : 1
        }
        let shape: TensorShape = switch x.shape.count {
        case 2: .vector(x.shape[1])
        case 3: TensorShape(height: x.shape[1], width: x.shape[2], channels: 1)
        default: TensorShape(height: x.shape[1], width: x.shape[2], channels: x.shape[3])
        }
        var features = [Float](repeating: 0, count: x.values.count)
        let scale = x.kind == .unsignedByte ? 1.0 / 255 : 1.0
        for (i, value) in x.values.enumerated() {
            let scaled = Float(value * scale)
            guard scaled.isFinite, abs(scaled) <= CSVDataset.maximumMagnitude else {
                throw DataError(source, "example \(i / shape.count), value \(i % shape.count): \(value) is not a finite number of at most 1e9")
            }
            features[i] = scaled
        }
        return try targets.dataset(
            name: featureName, source: labelPath, sampleShape: shape, features: features,
            targets: y.values, width: targetWidth, groups: groups)
    }
}

/// Where fedsim and fedclient find data in a directory: NumPy files, a NumPy archive, CIFAR's
/// binary batches, LEAF's JSON, or else MNIST's four IDX files.
public enum DataDirectory {
    /// A simulation's split: `train_x.npy` and `train_y.npy` (or `test_…`), with the users in
    /// `train_ids.npy` when it is there; or `train.npz` (arrays x, y, ids); or CIFAR-10/100
    /// binary batches; or LEAF's `train/` and `test/` JSON (users as groups); or `train.csv` and
    /// `test.csv` (`columns` says which is the target and which the user); else the IDX files.
    public static func load(_ directory: URL, train: Bool, targets: TargetFormat = .classes(nil), columns: CSVColumns = CSVColumns()) throws -> Dataset {
        let prefix = train ? "train" : "test"
        let x = directory.appendingPathComponent("\(prefix)_x.npy"), y = directory.appendingPathComponent("\(prefix)_y.npy")
        let ids = directory.appendingPathComponent("\(prefix)_ids.npy")
        let archive = directory.appendingPathComponent("\(prefix).npz")
        if FileManager.default.fileExists(atPath: x.path) {
            return try NPYDataset.load(features: x, labels: y, ids: FileManager.default.fileExists(atPath: ids.path) ? ids : nil, targets: targets)
        }
        if FileManager.default.fileExists(atPath: archive.path) { return try NPYDataset.load(archive: archive, targets: targets) }
        if LEAF.isPresent(in: directory) { return try LEAF.load(directory: directory, train: train, targets: targets) }
        let csv = directory.appendingPathComponent("\(prefix).csv")
        if FileManager.default.fileExists(atPath: csv.path) {
            return try CSVDataset.load(contentsOf: csv, labelColumn: columns.label, userColumn: columns.user, targets: targets)
        }
        guard case .classes = targets else {
            throw DataError(directory.path, "no \(prefix)_x.npy and \(prefix)_y.npy (or \(prefix).npz); CIFAR and IDX files hold class labels, the model needs \(targets)")
        }
        if CIFAR.isPresent(in: directory) { return try CIFAR.load(directory: directory, train: train) }
        return try MNIST.load(directory: directory, train: train)
    }

    /// A device's data: `x.npy` and `y.npy`, or `data.npz`, else the training split as in
    /// ``load(_:train:targets:)``. `targets` nil infers them (see ``NPYDataset``).
    public static func loadDevice(_ directory: URL, targets: TargetFormat? = nil) throws -> Dataset {
        let x = directory.appendingPathComponent("x.npy"), y = directory.appendingPathComponent("y.npy")
        if FileManager.default.fileExists(atPath: x.path) { return try NPYDataset.load(features: x, labels: y, targets: targets) }
        let archive = directory.appendingPathComponent("data.npz")
        if FileManager.default.fileExists(atPath: archive.path) { return try NPYDataset.load(archive: archive, targets: targets) }
        let prefixed = directory.appendingPathComponent("train_x.npy")
        if FileManager.default.fileExists(atPath: prefixed.path) {
            return try NPYDataset.load(features: prefixed, labels: directory.appendingPathComponent("train_y.npy"), targets: targets)
        }
        return try load(directory, train: true, targets: targets ?? .classes(nil))
    }
}
