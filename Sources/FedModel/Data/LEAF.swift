import Foundation

/// LEAF's JSON files (Caldas et al. 2018: FEMNIST, Shakespeare, Sent140, ...), as its scripts
/// write them: `train/*.json` and `test/*.json`, each `{"users": [...], "num_samples": [...],
/// "user_data": {user: {"x": [...], "y": [...]}}}`. Every user's examples carry that user as
/// their group, so the `natural` partition gives each user its own client (users numbered in
/// the order the files list them, files in name order). Numeric examples load (FEMNIST: 784
/// values in [0, 1], 62 classes); text ones (Shakespeare, Sent140) need a token model, which
/// this version does not have, and are refused with a clear error.
public enum LEAF {
    public static func isPresent(in directory: URL) -> Bool {
        !files(in: directory.appendingPathComponent("train")).isEmpty
    }

    static func files(in directory: URL) -> [URL] {
        ((try? FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)) ?? [])
            .filter { $0.pathExtension == "json" }.sorted { $0.lastPathComponent < $1.lastPathComponent }
    }

    /// `users` numbers users across the training and test splits alike (pass the same dictionary).
    public static func load(directory: URL, train: Bool, targets: TargetFormat = .classes(nil)) throws -> Dataset {
        let split = directory.appendingPathComponent(train ? "train" : "test")
        let urls = files(in: split)
        guard !urls.isEmpty else { throw DataError(split.path, "no LEAF .json files") }
        var features: [Float] = []
        var values: [Double] = []
        var groups: [Int32] = []
        var width: Int?
        var userIndex: [String: Int32] = [:]
        for url in urls {
            guard let data = try? Data(contentsOf: url),
                  let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let users = object["users"] as? [String], let userData = object["user_data"] as? [String: Any] else {
                throw DataError(url.path, "not a LEAF file (users and user_data)")
            }
            for user in users {
                guard let entry = userData[user] as? [String: Any], let xs = entry["x"] as? [Any], let ys = entry["y"] as? [Any], xs.count == ys.count else {
                    throw DataError(url.path, "user \(user): x and y missing or of different lengths")
                }
                let group = userIndex[user] ?? Int32(userIndex.count)
                userIndex[user] = group
                for (i, (x, y)) in zip(xs, ys).enumerated() {
                    guard let row = x as? [Any] else {
                        throw DataError(url.path, "user \(user), example \(i): text or nested examples (Shakespeare, Sent140) need a token model, which this version cannot train; numeric ones (FEMNIST) load")
                    }
                    let numbers = try row.map { value -> Float in
                        guard let number = value as? NSNumber, number.floatValue.isFinite else { throw DataError(url.path, "user \(user), example \(i): \(value) is not a finite number") }
                        return number.floatValue
                    }
                    if width == nil { width = numbers.count }
                    guard numbers.count == width else { throw DataError(url.path, "user \(user), example \(i): \(numbers.count) values, earlier examples have \(width!)") }
                    features.append(contentsOf: numbers)
                    guard let target = y as? NSNumber else { throw DataError(url.path, "user \(user), example \(i): label \(y) is not a number") }
                    values.append(target.doubleValue)
                    groups.append(group)
                }
            }
        }
        guard let width, !values.isEmpty else { throw DataError(split.path, "no examples") }
        return try targets.dataset(name: "LEAF " + directory.lastPathComponent + (train ? " (train)" : " (test)"), source: split.path,
                                   sampleShape: .vector(width), features: features, targets: values, width: 1, groups: groups)
    }
}
