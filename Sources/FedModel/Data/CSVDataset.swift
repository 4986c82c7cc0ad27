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

/// Which columns of a CSV file are the target and, optionally, the user or device id.
public struct CSVColumns: Sendable, Equatable {
    public var label: CSVLabelColumn
    public var user: CSVLabelColumn?
    public init(label: CSVLabelColumn = .index(0), user: CSVLabelColumn? = nil) {
        self.label = label
        self.user = user
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
    public static func load(contentsOf url: URL, labelColumn: CSVLabelColumn = .index(0), userColumn: CSVLabelColumn? = nil, targets: TargetFormat? = .classes(nil), sampleShape: TensorShape? = nil) throws -> Dataset {
        let text: String
        do {
            text = try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw DataError(url.path, FileManager.default.fileExists(atPath: url.path) ? "cannot read file as UTF-8 text" : "no such file")
        }
        return try parse(text, source: url.path, labelColumn: labelColumn, userColumn: userColumn, targets: targets, sampleShape: sampleShape)
    }

    /// Features become a vector of the other columns (or `sampleShape`, when given, which must
    /// have as many values). The label column holds a class index (the class count is the
    /// model's, or one more than the largest label) or, for value targets, the one target value
    /// (a model with several outputs reads its targets from `.npy`). `targets` nil reads a label
    /// column of whole numbers from 0 as class labels and any other as values. Errors name the
    /// line and column.
    ///
    /// `userColumn`, when given, names the column of the user or device each row came from
    /// (any text; users are numbered in order of first appearance): it is not a feature, and it
    /// becomes the example's group, for the natural partition.
    public static func parse(_ text: String, source: String, labelColumn: CSVLabelColumn = .index(0), userColumn: CSVLabelColumn? = nil,
                             targets: TargetFormat? = .classes(nil), sampleShape: TensorShape? = nil) throws -> Dataset {
        let format = targets ?? .values(width: nil, unitInterval: false)
        if case .values(let width?, _) = format, width != 1 {
            throw DataError(source, "a CSV file has one target column, the model has \(width) outputs; give the targets as y.npy of shape [N, \(width)]")
        }
        var features: [Float] = []
        var labels: [Double] = []
        var columns: Int?
        var label = 0
        var user: Int?
        var groups: [Int32] = []
        var userIndex: [String: Int32] = [:]
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
                func resolve(_ column: CSVLabelColumn, _ what: String) throws -> Int {
                    switch column {
                    case .index(let i):
                        let resolved = i < 0 ? fields.count + i : i
                        guard resolved >= 0, resolved < fields.count else {
                            throw DataError(source, "\(what) column \(i) is outside the \(fields.count) columns")
                        }
                        return resolved
                    case .name(let name):
                        guard let names else { throw DataError(source, "\(what) column \"\(name)\" needs a header row naming the columns") }
                        guard let found = names.firstIndex(of: name) else {
                            throw DataError(source, "no column named \"\(name)\" (the header has \(names.joined(separator: ", ")))")
                        }
                        return found
                    }
                }
                label = try resolve(labelColumn, "label")
                user = try userColumn.map { try resolve($0, "user") }
                if user == label { throw DataError(source, "the user column is the label column") }
                let featureCount = fields.count - 1 - (user == nil ? 0 : 1)
                guard featureCount >= 1 else { throw DataError(source, "no feature columns besides the label and the user") }
                if let sampleShape, sampleShape.count != featureCount {
                    throw DataError(source, "\(featureCount) feature columns, the model expects \(sampleShape.count) values")
                }
                if isHeader { continue }
            }
            guard fields.count == columns else {
                throw DataError(source, "line \(lineNumber): \(fields.count) columns, expected \(columns!)")
            }
            switch format {
            case .classes(let classes):
                let limit = classes ?? Dataset.maximumClasses
                guard let value = Int(fields[label]), value >= 0, value < limit else {
                    throw DataError(source, "line \(lineNumber): label \"\(fields[label])\" is not an integer in 0..<\(limit)")
                }
                labels.append(Double(value))
            case .values(_, let unitInterval):
                guard let value = Double(fields[label]), value.isFinite, abs(value) <= 1e9, !unitInterval || (0...1).contains(value) else {
                    throw DataError(source, "line \(lineNumber): target \"\(fields[label])\" is not \(unitInterval ? "in [0, 1]" : "a finite number of at most 1e9")")
                }
                labels.append(value)
            }
            if let user {
                let id = userIndex[fields[user]] ?? Int32(userIndex.count)
                userIndex[fields[user]] = id
                groups.append(id)
            }
            for (column, field) in fields.enumerated() where column != label && column != user {
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
        let shape = sampleShape ?? .vector(columns - 1 - (user == nil ? 0 : 1))
        let groupIDs = user == nil ? nil : groups
        if targets == nil, labels.allSatisfy({ $0 >= 0 && $0.rounded() == $0 && $0 < Double(Dataset.maximumClasses) }) {
            return try TargetFormat.classes(nil).dataset(name: source, source: source, sampleShape: shape, features: features, targets: labels, width: 1, groups: groupIDs)
        }
        return try format.dataset(name: source, source: source, sampleShape: shape, features: features, targets: labels, width: 1, groups: groupIDs)
    }
}
