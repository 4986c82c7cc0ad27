import Foundation

/// LEAF's JSON files (Caldas et al. 2018: FEMNIST, Shakespeare, Sent140, ...), as its scripts
/// write them: `train/*.json` and `test/*.json`, each `{"users": [...], "num_samples": [...],
/// "user_data": {user: {"x": [...], "y": [...]}}}`. Every user's examples carry that user as
/// their group, so the `natural` partition gives each user its own client (users numbered in
/// the order the files list them, files in name order). Numeric examples load as they are
/// (FEMNIST: 784 values in [0, 1], 62 classes). Character examples (Shakespeare: 80 characters
/// of a play, and the next character) load as token ids in LEAF's own 80-letter alphabet
/// (``letters``), for `embedding:80:D` models with 80 classes; a character outside it is an
/// error naming the example. Word-level text (Sent140: each x a list of strings whose last is
/// the tweet) loads as ``sentenceLength`` word ids from a vocabulary built on the training
/// split (``vocabulary(directory:)``), for `embedding:10000:D` models with 2 classes.
public enum LEAF {
    /// Words a sentence keeps (its last ones), left-padded with id 0 to this length.
    public static let sentenceLength = 25
    /// Vocabulary size: id 0 pads, id 1 stands for a word outside the vocabulary, and ids 2
    /// up to this bound are the training split's most frequent words.
    public static let vocabularySize = 10_000

    /// Lower-cased words: runs of letters, digits, `'`, `@`, `#` and `_`.
    public static func words(_ text: String) -> [String] {
        text.lowercased().split { !($0.isLetter || $0.isNumber || "'@#_".contains($0)) }.map(String.init)
    }

    /// The word ids of the training split of `directory`: its most frequent words (ties in
    /// first-seen order), from id 2 on.
    public static func vocabulary(directory: URL) throws -> [String: Int32] {
        var counts: [String: Int] = [:], firstSeen: [String: Int] = [:]
        for url in files(in: directory.appendingPathComponent("train")) {
            guard let data = try? Data(contentsOf: url), let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let users = object["users"] as? [String], let userData = object["user_data"] as? [String: Any] else { continue }
            for user in users {
                guard let xs = (userData[user] as? [String: Any])?["x"] as? [Any] else { continue }
                for x in xs {
                    guard let text = (x as? [Any])?.last as? String else { continue }
                    for word in words(text) {
                        counts[word, default: 0] += 1
                        if firstSeen[word] == nil { firstSeen[word] = firstSeen.count }
                    }
                }
            }
        }
        let ranked = counts.keys.sorted { counts[$0]! != counts[$1]! ? counts[$0]! > counts[$1]! : firstSeen[$0]! < firstSeen[$1]! }
        var ids: [String: Int32] = [:]
        for (i, word) in ranked.prefix(vocabularySize - 2).enumerated() { ids[word] = Int32(i + 2) }
        return ids
    }

    /// A sentence as ``sentenceLength`` word ids: its last words, left-padded with 0, unknown words 1.
    public static func wordIDs(_ text: String, vocabulary: [String: Int32]) -> [Float] {
        let ids = words(text).suffix(sentenceLength).map { Float(vocabulary[$0] ?? 1) }
        return [Float](repeating: 0, count: sentenceLength - ids.count) + ids
    }

    /// LEAF's `ALL_LETTERS` for Shakespeare: a character's id is its position here.
    public static let letters = Array("\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}")
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
        var vocabulary: [String: Int32]?
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
                    func token(_ character: Character) throws -> Float {
                        guard let id = letters.firstIndex(of: character) else {
                            throw DataError(url.path, "user \(user), example \(i): \"\(character)\" is not in LEAF's 80-letter alphabet")
                        }
                        return Float(id)
                    }
                    let numbers: [Float]
                    if let text = x as? String {
                        numbers = try text.map(token)
                    } else if let row = x as? [Any], !row.isEmpty, row.allSatisfy({ $0 is String }) {
                        // Sent140: [id, date, query, user, text]; the words of the text.
                        if vocabulary == nil { vocabulary = try Self.vocabulary(directory: directory) }
                        numbers = wordIDs(row.last as! String, vocabulary: vocabulary!)
                    } else if let row = x as? [Any], row.allSatisfy({ $0 is NSNumber }) {
                        numbers = try row.map { value -> Float in
                            let number = (value as! NSNumber).floatValue
                            guard number.isFinite else { throw DataError(url.path, "user \(user), example \(i): \(value) is not a finite number") }
                            return number
                        }
                    } else {
                        throw DataError(url.path, "user \(user), example \(i): neither numbers (FEMNIST), a string of characters (Shakespeare) nor a list of strings ending with a sentence (Sent140)")
                    }
                    if width == nil { width = numbers.count }
                    guard numbers.count == width else { throw DataError(url.path, "user \(user), example \(i): \(numbers.count) values, earlier examples have \(width!)") }
                    features.append(contentsOf: numbers)
                    if let character = (y as? String).flatMap({ $0.count == 1 ? $0.first : nil }) {
                        values.append(Double(try token(character)))
                    } else if let target = y as? NSNumber {
                        values.append(target.doubleValue)
                    } else {
                        throw DataError(url.path, "user \(user), example \(i): label \(y) is neither a number nor one character")
                    }
                    groups.append(group)
                }
            }
        }
        guard let width, !values.isEmpty else { throw DataError(split.path, "no examples") }
        return try targets.dataset(name: "LEAF " + directory.lastPathComponent + (train ? " (train)" : " (test)"), source: split.path,
                                   sampleShape: .vector(width), features: features, targets: values, width: 1, groups: groups)
    }
}
