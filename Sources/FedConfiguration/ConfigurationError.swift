/// A configuration that cannot be used (a file, a key, a value, a command-line option), with a
/// one-line explanation naming the file, the key and the bad value. The one error type of
/// fedsim's scenarios, fedcoord's and fedclient's configuration files.
public struct ConfigurationError: Error, CustomStringConvertible, Equatable, Sendable {
    public var description: String

    public init(_ description: String) { self.description = description }

    /// `FILE: KEY PROBLEM, got "VALUE"` (the file and the value when known).
    public init(file: String?, key: String, value: String? = nil, _ problem: String) {
        description = (file.map { "\($0): " } ?? "") + "\(key) \(problem)" + (value.map { ", got \"\($0)\"" } ?? "")
    }
}

/// A closed set of names a configuration key takes (`aggregator`, `transport`, `attack`, ...).
/// Every tool reads them the same way: case-insensitive, with `-` and `_` interchangeable.
public protocol ConfigurationChoice: RawRepresentable, CaseIterable where RawValue == String {
    /// Other names accepted for a value (normalised: lowercase, `_` for `-`).
    static var aliases: [String: Self] { get }
}

extension ConfigurationChoice {
    public static var aliases: [String: Self] { [:] }

    /// The value named by `text` (`Multi-Krum`, `multi_krum` and `multi-krum` alike).
    public init?(configurationName text: String) {
        let normalised = text.lowercased().replacingOccurrences(of: "-", with: "_")
        guard let value = Self.allCases.first(where: { $0.rawValue.lowercased() == normalised }) ?? Self.aliases[normalised] else { return nil }
        self = value
    }

    /// The names, for error messages: `a, b or c`.
    public static var choices: String {
        let names = allCases.map(\.rawValue)
        return names.count <= 1 ? names.joined() : names.dropLast().joined(separator: ", ") + " or " + names.last!
    }

    /// Parses `text` for `key`, or throws an error naming the key, the value and the choices.
    public static func parse(_ text: String, key: String, file: String? = nil) throws -> Self {
        guard let value = Self(configurationName: text) else {
            throw ConfigurationError(file: file, key: key, value: text, "must be one of \(choices)")
        }
        return value
    }
}
