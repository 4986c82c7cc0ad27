import Foundation

/// A device's own data as CSV: one example per line, the class label (an integer in
/// 0..<classes) first, then the feature values as decimal numbers, comma-separated.
/// Every line must have the same number of features (for MNIST-shaped models, 784
/// pixel values in [0, 1], row-major). Empty lines and lines starting with `#` are ignored;
/// there is no header row.
///
///     # label, f0, f1, ...
///     7,0,0,0.5,0.99,...
public enum CSVDataset {
    /// The largest feature magnitude accepted.
    public static let maximumMagnitude: Float = 1e9

    public static func load(contentsOf url: URL, sampleShape: TensorShape, classes: Int) throws -> Dataset {
        let text: String
        do {
            text = try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw DataError(url.path, FileManager.default.fileExists(atPath: url.path) ? "cannot read file as UTF-8 text" : "no such file")
        }
        return try parse(text, source: url.path, sampleShape: sampleShape, classes: classes)
    }

    public static func parse(_ text: String, source: String, sampleShape: TensorShape, classes: Int) throws -> Dataset {
        var features: [Float] = []
        var labels: [UInt8] = []
        let width = sampleShape.count
        var lineNumber = 0
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            let fields = trimmed.split(separator: ",", omittingEmptySubsequences: false)
            guard fields.count == width + 1 else {
                throw DataError(source, "line \(lineNumber): \(fields.count - 1) features, expected \(width)")
            }
            let labelText = fields[0].trimmingCharacters(in: .whitespaces)
            guard let label = Int(labelText), label >= 0, label < classes else {
                throw DataError(source, "line \(lineNumber): label \"\(labelText)\" is not an integer in 0..<\(classes)")
            }
            labels.append(UInt8(label))
            for (column, field) in fields.dropFirst().enumerated() {
                guard let value = Float(field.trimmingCharacters(in: .whitespaces)), value.isFinite else {
                    throw DataError(source, "line \(lineNumber), feature \(column): \"\(field)\" is not a finite number")
                }
                // Squares and products of such values overflow float32 in the first step of
                // training; the data must be scaled first.
                guard abs(value) <= maximumMagnitude else {
                    throw DataError(source, "line \(lineNumber), feature \(column): \(field) is beyond ±1e9; scale the features (for example to [0, 1])")
                }
                features.append(value)
            }
        }
        guard !labels.isEmpty else { throw DataError(source, "no examples") }
        return try Dataset(name: source, sampleShape: sampleShape, classes: classes, features: features, labels: labels)
    }
}
