import Foundation

/// Which column of a CSV file holds the class label.
public enum CSVLabelColumn: Sendable, Equatable, CustomStringConvertible {
    /// By position, from 0; −1 is the last column.
    case index(Int)
    /// By the header row's name.
    case name(String)

    /// `"label"` is a name, `"0"` or `"-1"` an index.
    public init(parsing text: String) {
        if let index = Int(text.trimmingCharacters(in: .whitespaces)) { self = .index(index) } else { self = .name(text) }
    }

    public var description: String {
        switch self {
        case .index(let i): "\(i)"
        case .name(let name): "\"\(name)\""
        }
    }
}

/// A device's own data as CSV: one example per line, comma-separated; one column is the class
/// label (an integer from 0; the first column unless told otherwise, by position or by name),
/// every other column a feature value. An optional header row names the columns (a first row
/// with any field that is not a number is the header). Every row must have the same number of
/// columns. Empty lines and lines starting with `#` are ignored.
///
///     label,temperature,humidity,...
///     2,21.5,0.43,...
public enum CSVDataset {
    /// The largest feature magnitude accepted.
    public static let maximumMagnitude: Float = 1e9

    /// Reads `url`; see ``parse(_:source:labelColumn:classes:sampleShape:)``.
    public static func load(contentsOf url: URL, labelColumn: CSVLabelColumn = .index(0), classes: Int? = nil, sampleShape: TensorShape? = nil) throws -> Dataset {
        let text: String
        do {
            text = try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw DataError(url.path, FileManager.default.fileExists(atPath: url.path) ? "cannot read file as UTF-8 text" : "no such file")
        }
        return try parse(text, source: url.path, labelColumn: labelColumn, classes: classes, sampleShape: sampleShape)
    }

    /// Features become a vector of the other columns (or `sampleShape`, when given, which must
    /// have as many values); the class count is `classes`, or one more than the largest label.
    /// Errors name the line and column.
    public static func parse(_ text: String, source: String, labelColumn: CSVLabelColumn = .index(0), classes: Int? = nil, sampleShape: TensorShape? = nil) throws -> Dataset {
        var features: [Float] = []
        var labels: [UInt8] = []
        var columns: Int?
        var label = 0
        var names: [String]?
        var lineNumber = 0
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            let fields = trimmed.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            if columns == nil {
                guard fields.count >= 2 else { throw DataError(source, "line \(lineNumber): one column; a label and at least one feature are needed") }
                columns = fields.count
                let isHeader = fields.contains { Float($0) == nil }
                if isHeader { names = fields }
                switch labelColumn {
                case .index(let i):
                    let resolved = i < 0 ? fields.count + i : i
                    guard resolved >= 0, resolved < fields.count else {
                        throw DataError(source, "label column \(i) is outside the \(fields.count) columns")
                    }
                    label = resolved
                case .name(let name):
                    guard let names else { throw DataError(source, "label column \"\(name)\" needs a header row naming the columns") }
                    guard let found = names.firstIndex(of: name) else {
                        throw DataError(source, "no column named \"\(name)\" (the header has \(names.joined(separator: ", ")))")
                    }
                    label = found
                }
                if let sampleShape, sampleShape.count != fields.count - 1 {
                    throw DataError(source, "\(fields.count - 1) feature columns, the model expects \(sampleShape.count) values")
                }
                if isHeader { continue }
            }
            guard fields.count == columns else {
                throw DataError(source, "line \(lineNumber): \(fields.count) columns, expected \(columns!)")
            }
            guard let value = Int(fields[label]), value >= 0, value < (classes ?? 256) else {
                throw DataError(source, "line \(lineNumber): label \"\(fields[label])\" is not an integer in 0..<\(classes ?? 256)")
            }
            labels.append(UInt8(value))
            for (column, field) in fields.enumerated() where column != label {
                let name = names.map { "\"\($0[column])\"" } ?? "\(column)"
                guard let value = Float(field), value.isFinite else {
                    throw DataError(source, "line \(lineNumber), column \(name): \"\(field)\" is not a finite number")
                }
                // Squares and products of such values overflow float32 in the first step of
                // training; the data must be scaled first.
                guard abs(value) <= maximumMagnitude else {
                    throw DataError(source, "line \(lineNumber), column \(name): \(field) is beyond ±1e9; scale the features (for example to [0, 1])")
                }
                features.append(value)
            }
        }
        guard !labels.isEmpty, let columns else { throw DataError(source, "no examples") }
        let shape = sampleShape ?? .vector(columns - 1)
        return try Dataset(name: source, sampleShape: shape, classes: classes ?? max(2, Int(labels.max()!) + 1), features: features, labels: labels)
    }
}
