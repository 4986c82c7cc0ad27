import Foundation
import TOMLKit

/// A TOML configuration file, read the same way by every tool: unknown keys are errors, each
/// value is read with its type, paths are resolved against the file's directory, and every
/// error names the file, the key and the value.
public struct ConfigurationTable {
    /// The file (or other source) the table came from, for error messages.
    public let source: String
    /// Relative paths are resolved against this directory.
    public let directory: URL
    private let table: TOMLTable

    /// Parses `text`; `knownKeys` are the only top-level keys allowed.
    public init(parsing text: String, source: String, directory: URL? = nil, knownKeys: Set<String>) throws {
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigurationError("\(source): invalid TOML at line \(error.source.begin.line), column \(error.source.begin.column): \(error.description)")
        }
        self.source = source
        self.directory = directory ?? URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
        for key in table.keys.sorted() where !knownKeys.contains(key) {
            throw ConfigurationError("\(source): unknown key \"\(key)\" (known keys: \(knownKeys.sorted().joined(separator: ", ")))")
        }
    }

    /// Reads and parses the file at `url`.
    public init(contentsOf url: URL, knownKeys: Set<String>) throws {
        let text: String
        do { text = try String(contentsOf: url, encoding: .utf8) } catch {
            throw ConfigurationError("\(url.path): \(FileManager.default.fileExists(atPath: url.path) ? "cannot read file" : "no such file")")
        }
        try self.init(parsing: text, source: url.path, directory: url.deletingLastPathComponent(), knownKeys: knownKeys)
    }

    public func contains(_ key: String) -> Bool { table[key] != nil }

    /// The top-level keys present.
    public var keys: Set<String> { Set(table.keys) }

    private func wrongType(_ key: String, _ type: String) -> ConfigurationError {
        ConfigurationError(file: source, key: "\"\(key)\"", value: table[key].map { $0.string ?? "\($0)" }, "must be \(type)")
    }

    public func string(_ key: String) throws -> String? {
        guard let value = table[key] else { return nil }
        guard let text = value.string else { throw wrongType(key, "a string") }
        return text
    }

    public func int(_ key: String) throws -> Int? {
        guard let value = table[key] else { return nil }
        guard let number = value.int else { throw wrongType(key, "an integer") }
        return number
    }

    /// A non-negative integer (sizes, seeds, byte counts).
    public func count(_ key: String) throws -> UInt64? {
        guard let number = try int(key) else { return nil }
        guard number >= 0 else { throw ConfigurationError(file: source, key: "\"\(key)\"", value: "\(number)", "must be non-negative") }
        return UInt64(number)
    }

    /// A number: a TOML float or integer.
    public func number(_ key: String) throws -> Double? {
        guard let value = table[key] else { return nil }
        if let number = value.double { return number }
        if let number = value.int { return Double(number) }
        throw wrongType(key, "a number")
    }

    public func bool(_ key: String) throws -> Bool? {
        guard let value = table[key] else { return nil }
        guard let flag = value.bool else { throw wrongType(key, "true or false") }
        return flag
    }

    public func strings(_ key: String) throws -> [String]? {
        guard let value = table[key] else { return nil }
        guard let array = value.array else { throw wrongType(key, "an array of strings") }
        return try array.map {
            guard let text = $0.string else { throw wrongType(key, "an array of strings") }
            return text
        }
    }

    public func ints(_ key: String) throws -> [Int]? {
        guard let value = table[key] else { return nil }
        guard let array = value.array else { throw wrongType(key, "an array of integers") }
        return try array.map {
            guard let number = $0.int else { throw wrongType(key, "an array of integers") }
            return number
        }
    }

    /// An array of numbers (TOML floats or integers).
    public func numbers(_ key: String) throws -> [Double]? {
        guard let value = table[key] else { return nil }
        guard let array = value.array else { throw wrongType(key, "an array of numbers") }
        return try array.map {
            if let number = $0.double { return number }
            if let number = $0.int { return Double(number) }
            throw wrongType(key, "an array of numbers")
        }
    }

    /// A number, or a string such as a distribution (`"lognormal:2,1.0"`), as text.
    public func numberOrString(_ key: String) throws -> String? {
        guard let value = table[key] else { return nil }
        if let text = value.string { return text }
        if let number = value.double { return "\(number)" }
        if let number = value.int { return "\(number)" }
        throw wrongType(key, "a number or a string")
    }

    /// A path, made absolute against the file's directory.
    public func path(_ key: String) throws -> String? {
        try string(key).map { $0.hasPrefix("/") ? $0 : directory.appendingPathComponent($0).standardizedFileURL.path }
    }

    /// One of a closed set of names.
    public func choice<Choice: ConfigurationChoice>(_ key: String, as type: Choice.Type = Choice.self) throws -> Choice? {
        try string(key).map { try Choice.parse($0, key: key, file: source) }
    }

    /// A sub-table of string values (`[clients]`).
    public func stringTable(_ key: String) throws -> [String: String]? {
        guard let value = table[key] else { return nil }
        guard let sub = value.table else { throw wrongType(key, "a table") }
        var result: [String: String] = [:]
        for name in sub.keys {
            guard let text = sub[name]?.string else { throw wrongType("\(key).\(name)", "a string") }
            result[name] = text
        }
        return result
    }
}
