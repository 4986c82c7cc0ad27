import Foundation
import Testing
@testable import FedModel

/// The formats users have beyond MNIST's IDX: NumPy archives, CIFAR's binary batches and LEAF's
/// JSON, tested on small files written in each official layout (the real data cannot be
/// downloaded here), and their errors.
@Suite struct FormatTests {
    func directory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("fedformat-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @Test func numPyArchivesStoredAndCompressed() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try runPython("""
            import numpy as np, sys
            d = sys.argv[1]
            x = np.arange(24, dtype=np.float32).reshape(6, 4) / 10
            np.savez(f"{d}/train.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]), ids=np.array([5, 5, 7, 7, 9, 9]))
            np.savez_compressed(f"{d}/test.npz", x=x[:3], y=np.array([2, 1, 0]))
            np.savez_compressed(f"{d}/data.npz", x=x, y=x[:, :2].astype(np.float64))
            np.savez(f"{d}/wrong.npz", features=x)
            """, in: dir)
        let train = try DataDirectory.load(dir, train: true)
        #expect(train.count == 6 && train.sampleShape == .vector(4) && train.labels == [0, 1, 2, 0, 1, 2] && train.groups == [5, 5, 7, 7, 9, 9])
        #expect(train.features[5] == Float(5) / 10)
        let test = try DataDirectory.load(dir, train: false)
        #expect(test.labels == [2, 1, 0] && test.features[11] == Float(11) / 10, "a deflated archive")
        let device = try DataDirectory.loadDevice(dir)
        #expect(!device.hasClassLabels && device.classes == 2 && device.values[3] == 0.5, "float targets [N, 2] from data.npz")
        #expect { try NPYDataset.load(archive: dir.appendingPathComponent("wrong.npz")) } throws: { "\($0)".contains("holds arrays x and y") && "\($0)".contains("features") }
        // A truncated archive and a corrupted deflate stream are errors naming the file.
        let whole = try Data(contentsOf: dir.appendingPathComponent("test.npz"))
        try whole.prefix(whole.count / 2).write(to: dir.appendingPathComponent("cut.npz"))
        #expect(throws: DataError.self) { try NPZ.read(contentsOf: dir.appendingPathComponent("cut.npz")) }
        var flipped = [UInt8](whole)
        for i in 60..<90 { flipped[i] ^= 0x5A }
        try Data(flipped).write(to: dir.appendingPathComponent("flipped.npz"))
        #expect { try NPZ.read(contentsOf: dir.appendingPathComponent("flipped.npz")) } throws: { "\($0)".contains("flipped.npz") }
    }

    @Test func cifarBinaryBatches() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(at: dir) }
        // CIFAR-10's layout: five training batches and a test batch of records <label><R><G><B>.
        try runPython("""
            import numpy as np, sys
            d = sys.argv[1]
            rng = np.random.default_rng(1)
            for name, n in [(f"data_batch_{i}.bin", 2) for i in range(1, 6)] + [("test_batch.bin", 3)]:
                records = []
                for r in range(n):
                    image = rng.integers(0, 256, size=(3, 32, 32), dtype=np.uint8)
                    records.append(bytes([r % 10]) + image.tobytes())
                open(f"{d}/{name}", "wb").write(b"".join(records))
            image = np.zeros((3, 32, 32), dtype=np.uint8); image[0, 0, 1] = 255; image[2, 31, 31] = 51
            open(f"{d}/test_batch.bin", "ab").write(bytes([7]) + image.tobytes())
            """, in: dir)
        let train = try DataDirectory.load(dir, train: true)
        #expect(train.count == 10 && train.sampleShape == TensorShape(height: 32, width: 32, channels: 3) && train.classes == 10)
        let test = try DataDirectory.load(dir, train: false)
        #expect(test.count == 4 && test.labels.last == 7)
        // The last image's red pixel at (0, 1) and blue at (31, 31), NHWC.
        let last = Array(test.features[(3 * 3072)...])
        #expect(last[(0 * 32 + 1) * 3 + 0] == 1 && last[(31 * 32 + 31) * 3 + 2] == 51 * (1 / 255 as Float) && last.filter { $0 != 0 }.count == 2)
        let batch = try Data(contentsOf: dir.appendingPathComponent("test_batch.bin"))
        try batch.dropLast(100).write(to: dir.appendingPathComponent("test_batch.bin"))
        #expect { try DataDirectory.load(dir, train: false) } throws: { "\($0)".contains("not a whole number of 3073-byte records") }
        // CIFAR-100's layout: <coarse><fine><image>; the fine label is the class.
        let hundred = dir.appendingPathComponent("cifar-100-binary")
        try FileManager.default.createDirectory(at: hundred, withIntermediateDirectories: true)
        try Data([3, 42] + [UInt8](repeating: 9, count: 3072)).write(to: hundred.appendingPathComponent("train.bin"))
        try Data([3, 99] + [UInt8](repeating: 9, count: 3072)).write(to: hundred.appendingPathComponent("test.bin"))
        let fine = try DataDirectory.load(hundred, train: true)
        #expect(fine.classes == 100 && fine.labels == [42])
    }

    @Test func leafJSONWithItsUsers() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("train"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("test"), withIntermediateDirectories: true)
        // FEMNIST-like: three writers, 4 values per example (784 in the real data), 62 classes.
        try """
            {"users": ["f0001_12", "f0002_33"], "num_samples": [2, 1],
             "user_data": {"f0001_12": {"x": [[0, 0.5, 1, 0], [1, 1, 0, 0]], "y": [61, 3]},
                           "f0002_33": {"x": [[0.25, 0, 0, 1]], "y": [10]}}}
            """.write(to: dir.appendingPathComponent("train/all_data_0_niid_0_keep_0_train_9.json"), atomically: true, encoding: .utf8)
        try """
            {"users": ["f0003_07"], "num_samples": [2],
             "user_data": {"f0003_07": {"x": [[0, 0, 0, 0], [1, 0, 1, 0]], "y": [0, 1]}}}
            """.write(to: dir.appendingPathComponent("train/all_data_1_niid_0_keep_0_train_9.json"), atomically: true, encoding: .utf8)
        try """
            {"users": ["f0001_12"], "num_samples": [1], "user_data": {"f0001_12": {"x": [[0, 1, 0, 1]], "y": [5]}}}
            """.write(to: dir.appendingPathComponent("test/all_data_0_niid_0_keep_0_test_9.json"), atomically: true, encoding: .utf8)
        let train = try DataDirectory.load(dir, train: true, targets: .classes(62))
        #expect(train.count == 5 && train.labels == [61, 3, 10, 0, 1] && train.groups == [0, 0, 1, 2, 2] && train.classes == 62)
        #expect(try Partition.natural.split(train, clients: 3, seed: 1) == [[0, 1], [2], [3, 4]])
        #expect(try DataDirectory.load(dir, train: false, targets: .classes(62)).labels == [5])
        // Something that is none of LEAF's example kinds is refused with the file and example.
        try """
            {"users": ["odd"], "num_samples": [1], "user_data": {"odd": {"x": [{"a": 1}], "y": [0]}}}
            """.write(to: dir.appendingPathComponent("train/all_data_2.json"), atomically: true, encoding: .utf8)
        #expect { try DataDirectory.load(dir, train: true) } throws: { "\($0)".contains("example 0") && "\($0)".contains("all_data_2.json") }
    }

    /// Sent140's layout: each x is [id, date, query, user, tweet], y the sentiment; the tweet
    /// becomes word ids from the training split's vocabulary, the same for the test split.
    @Test func leafSent140LoadsAsWordIDs() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(at: dir) }
        for split in ["train", "test"] {
            try FileManager.default.createDirectory(at: dir.appendingPathComponent(split), withIntermediateDirectories: true)
        }
        try """
            {"users": ["amy", "bob"], "num_samples": [2, 1],
             "user_data": {"amy": {"x": [["1", "Mon Apr 06", "NO_QUERY", "amy", "Good day, good coffee!"], ["2", "Mon", "NO_QUERY", "amy", "bad day"]], "y": [1, 0]},
                           "bob": {"x": [["3", "Tue", "NO_QUERY", "bob", "so BAD, so sad"]], "y": [0]}}}
            """.write(to: dir.appendingPathComponent("train/all_data_0.json"), atomically: true, encoding: .utf8)
        try """
            {"users": ["cat"], "num_samples": [1], "user_data": {"cat": {"x": [["4", "Wed", "NO_QUERY", "cat", "good tea"]], "y": [1]}}}
            """.write(to: dir.appendingPathComponent("test/all_data_0.json"), atomically: true, encoding: .utf8)
        let vocabulary = try LEAF.vocabulary(directory: dir)
        // good 2, day 2, bad 2, so 2 (by count, then first seen), then coffee, sad.
        #expect(vocabulary == ["good": 2, "day": 3, "bad": 4, "so": 5, "coffee": 6, "sad": 7])
        let train = try DataDirectory.load(dir, train: true, targets: .classes(2))
        #expect(train.sampleShape == .vector(LEAF.sentenceLength) && train.labels == [1, 0, 0] && train.groups == [0, 0, 1])
        let first = Array(train.features[0..<LEAF.sentenceLength])
        #expect(first.suffix(4) == [2, 3, 2, 6] && first.dropLast(4).allSatisfy { $0 == 0 }, "left-padded word ids: \(first)")
        let test = try DataDirectory.load(dir, train: false, targets: .classes(2))
        #expect(Array(test.features.suffix(2)) == [2, 1], "the training vocabulary, unknown words 1")
        #expect(LEAF.wordIDs(String(repeating: "good ", count: 40), vocabulary: vocabulary) == [Float](repeating: 2, count: LEAF.sentenceLength), "the last 25 words")
    }

    /// Shakespeare's layout: 80 characters of a role's lines and the next character, as token
    /// ids in LEAF's alphabet; each role a user.
    @Test func leafShakespeareLoadsAsTokenIDs() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(at: dir) }
        for split in ["train", "test"] {
            try FileManager.default.createDirectory(at: dir.appendingPathComponent(split), withIntermediateDirectories: true)
            try """
                {"users": ["THE_TEMPEST_ARIEL", "THE_TEMPEST_PROSPERO"], "num_samples": [1, 1],
                 "user_data": {"THE_TEMPEST_ARIEL": {"x": ["Full fathom five"], "y": [" "]},
                               "THE_TEMPEST_PROSPERO": {"x": ["We are such stuf"], "y": ["f"]}}}
                """.write(to: dir.appendingPathComponent("\(split)/all_data_\(split).json"), atomically: true, encoding: .utf8)
        }
        let data = try DataDirectory.load(dir, train: true, targets: .classes(80))
        let id = { (c: Character) in Float(LEAF.letters.firstIndex(of: c)!) }
        #expect(data.sampleShape == .vector(16) && data.groups == [0, 1] && data.classes == 80)
        #expect(Array(data.features[0..<4]) == "Full".map(id) && data.labels == [Int32(id(" ")), Int32(id("f"))])
        let network = try Network(ModelSpec(input: .vector(16), classes: 80, layers: [.embedding(vocabulary: 80, dimension: 8), .gru(hidden: 16), .dense(outputs: 80)]))
        #expect(network.accepts(data) == nil)
        try """
            {"users": ["u"], "num_samples": [1], "user_data": {"u": {"x": ["café"], "y": ["s"]}}}
            """.write(to: dir.appendingPathComponent("train/all_data_x.json"), atomically: true, encoding: .utf8)
        #expect { try DataDirectory.load(dir, train: true) } throws: { "\($0)".contains("\"é\" is not in LEAF's 80-letter alphabet") }
    }
}

@Suite struct LabelPartitionTests {
    /// NIID-Bench's "#C = k": each client holds exactly k labels (client i among them label
    /// i mod 10), every example goes to exactly one client, and a label's examples are shared
    /// equally by its holders.
    @Test func eachClientHoldsKLabels() throws {
        let labels: [Int32] = (0..<6000).map { Int32($0 % 10) }
        for k in [1, 2, 3] {
            let parts = try Partition.labels(perClient: k).split(labels: labels, classes: 10, clients: 10, seed: 4)
            let held = parts.map { Set($0.map { labels[Int($0)] }) }
            #expect(held.allSatisfy { $0.count == k } && held.enumerated().allSatisfy { $1.contains(Int32($0 % 10)) })
            let all = parts.flatMap { $0 }
            #expect(all.count == 6000 && Set(all).count == 6000)
        }
        #expect { try Partition.labels(perClient: 11).split(labels: labels, classes: 10, clients: 10, seed: 4) } throws: { "\($0)".contains("1...10") }
    }
}
