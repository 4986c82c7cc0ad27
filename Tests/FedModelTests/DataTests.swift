import Foundation
import Testing
@testable import FedModel

/// The bundled MNIST copy, found from this file's location (the tests do not depend on
/// the working directory).
let mnistDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Simulations/data/mnist")

func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("fedtests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

func idx(magic: [UInt8], dimensions: [Int], payload: [UInt8]) -> [UInt8] {
    var bytes = magic
    for d in dimensions { bytes += [UInt8(d >> 24 & 0xFF), UInt8(d >> 16 & 0xFF), UInt8(d >> 8 & 0xFF), UInt8(d & 0xFF)] }
    return bytes + payload
}

@Suite struct IDXTests {
    @Test func parsesAValidFile() throws {
        let data = idx(magic: [0, 0, 8, 3], dimensions: [2, 2, 3], payload: Array(0..<12))
        let (dims, bytes) = try IDX.parse(data, expectedDimensions: 3, source: "x")
        #expect(dims == [2, 2, 3])
        #expect(Array(bytes) == Array(0..<12))
    }

    @Test func rejectsBadMagic() {
        let data = idx(magic: [0, 0, 9, 1], dimensions: [3], payload: [1, 2, 3])
        #expect { try IDX.parse(data, expectedDimensions: 1, source: "labels.idx") } throws: { error in
            "\(error)".contains("labels.idx") && "\(error)".contains("magic")
        }
    }

    @Test func rejectsWrongDimensionCount() {
        let data = idx(magic: [0, 0, 8, 1], dimensions: [3], payload: [1, 2, 3])
        #expect { try IDX.parse(data, expectedDimensions: 3, source: "f") } throws: { "\($0)".contains("dimensions") }
    }

    @Test func rejectsTruncatedAndTrailingData() {
        let short = idx(magic: [0, 0, 8, 1], dimensions: [10], payload: [1, 2, 3])
        #expect { try IDX.parse(short, expectedDimensions: 1, source: "f") } throws: { "\($0)".contains("truncated") }
        let long = idx(magic: [0, 0, 8, 1], dimensions: [2], payload: [1, 2, 3])
        #expect { try IDX.parse(long, expectedDimensions: 1, source: "f") } throws: { "\($0)".contains("trailing") }
        #expect { try IDX.parse([0, 0], expectedDimensions: 1, source: "f") } throws: { "\($0)".contains("too short") }
    }

    @Test func rejectsCorruptAndTruncatedGzip() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let original = try Data(contentsOf: mnistDirectory.appendingPathComponent(MNIST.testLabels))
        let truncated = dir.appendingPathComponent("truncated-idx1-ubyte.gz")
        try original.prefix(original.count / 2).write(to: truncated)
        #expect { try IDX.read(contentsOf: truncated, expectedDimensions: 1) } throws: { error in
            "\(error)".contains("truncated-idx1-ubyte.gz") && "\(error)".contains("truncated")
        }
        var garbled = [UInt8](original)
        for i in 20..<60 { garbled[i] ^= 0x5A }
        let corrupt = dir.appendingPathComponent("corrupt.gz")
        try Data(garbled).write(to: corrupt)
        #expect(throws: DataError.self) { try IDX.read(contentsOf: corrupt, expectedDimensions: 1) }
    }

    @Test func missingFileIsNamed() {
        let url = URL(fileURLWithPath: "/nonexistent/dir/t10k-labels-idx1-ubyte.gz")
        #expect { try IDX.read(contentsOf: url, expectedDimensions: 1) } throws: { "\($0)".contains("no such file") }
    }
}

@Suite struct MNISTTests {
    @Test func loadsTheBundledTestSetWithChecksums() throws {
        let test = try MNIST.load(directory: mnistDirectory, train: false)
        #expect(test.count == 10_000)
        #expect(test.sampleShape == TensorShape(height: 28, width: 28, channels: 1))
        #expect(test.features.allSatisfy { $0 >= 0 && $0 <= 1 })
        #expect(test.classCounts().allSatisfy { $0 > 800 })
    }

    @Test func aRangeKeepsOnlyThoseExamples() throws {
        let all = try MNIST.load(directory: mnistDirectory, train: false)
        let part = try MNIST.load(directory: mnistDirectory, train: false, examples: 100..<150)
        #expect(part.count == 50)
        #expect(part.labels == Array(all.labels[100..<150]))
        #expect(part.features == Array(all.features[(100 * 784)..<(150 * 784)]))
        #expect(throws: DataError.self) { try MNIST.load(directory: mnistDirectory, train: false, examples: 9990..<10_010) }
    }

    /// Fashion-MNIST ships in MNIST's layout under the same file names (Debian's
    /// dataset-fashion-mnist, which .ci/run installs): it loads as a user's data, unpinned.
    @Test func fashionMNISTLoadsUnderTheStandardNames() throws {
        let directory = URL(fileURLWithPath: "/usr/share/datasets/fashion-mnist")
        let test = try MNIST.load(directory: directory, train: false)
        #expect(test.count == 10_000 && test.classes == 10 && test.sampleShape == TensorShape(height: 28, width: 28, channels: 1))
        // Its test split holds exactly 1,000 examples of each of the ten garment classes.
        var perClass = [Int](repeating: 0, count: 10)
        for label in test.labels { perClass[Int(label)] += 1 }
        #expect(perClass == [Int](repeating: 1000, count: 10))
        let mnist = try MNIST.load(directory: mnistDirectory, train: false)
        #expect(test.features != mnist.features)
    }

    /// Images of any size and channel count: IDX [N, H, W, C] loads as H×W×C, and labels above 9
    /// widen the class count.
    @Test func idxImagesOfAnyShape() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let images = idx(magic: [0, 0, 8, 4], dimensions: [3, 4, 5, 3], payload: (0..<180).map { UInt8($0) })
        let labels = idx(magic: [0, 0, 8, 1], dimensions: [3], payload: [0, 11, 4])
        try Data(images).write(to: dir.appendingPathComponent(MNIST.testImages))
        try Data(labels).write(to: dir.appendingPathComponent(MNIST.testLabels))
        let data = try MNIST.load(directory: dir, train: false)
        #expect(data.sampleShape == TensorShape(height: 4, width: 5, channels: 3) && data.count == 3 && data.classes == 12)
        #expect(data.features[60] == Float(60) * (1 / 255 as Float) && data.labels == [0, 11, 4])
    }

    @Test func alteredFileFailsItsChecksum() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        // A valid IDX file with the right name but different content.
        let labels = idx(magic: [0, 0, 8, 1], dimensions: [10_000], payload: [UInt8](repeating: 3, count: 10_000))
        try Data(labels).write(to: dir.appendingPathComponent("t10k-labels-idx1-ubyte.gz"))
        try FileManager.default.copyItem(at: mnistDirectory.appendingPathComponent(MNIST.testImages), to: dir.appendingPathComponent(MNIST.testImages))
        // Without a manifest the directory is a user's data: nothing is pinned.
        #expect(try MNIST.load(directory: dir, train: false).count == 10_000)
        try FileManager.default.copyItem(at: mnistDirectory.appendingPathComponent(MNIST.manifest), to: dir.appendingPathComponent(MNIST.manifest))
        #expect { try MNIST.load(directory: dir, train: false) } throws: { "\($0)".contains("checksum mismatch") }
        // Without verification the same file loads (it is well-formed).
        #expect(try MNIST.load(directory: dir, train: false, verifyChecksums: false).count == 10_000)
    }
}

@Suite struct CSVTests {
    let shape = TensorShape.vector(3)

    @Test func parsesLabelsAndFeatures() throws {
        let data = try CSVDataset.parse("# comment\n2,0.5,1,0\n\n0, 0.25 ,0,1\n", source: "d.csv", targets: .classes(10), sampleShape: shape)
        #expect(data.labels == [2, 0])
        #expect(data.features == [0.5, 1, 0, 0.25, 0, 1])
    }

    /// Any width, a header row, the label in any column by name or position (−1: the last),
    /// and the class count from the labels.
    @Test func headerAndLabelColumnByNameOrPosition() throws {
        let text = "temperature,humidity,activity,pressure\n21.5,0.4,2,1013\n19,0.6,0,1009\n"
        let byName = try CSVDataset.parse(text, source: "s.csv", labelColumn: .name("activity"))
        #expect(byName.labels == [2, 0] && byName.features == [21.5, 0.4, 1013, 19, 0.6, 1009])
        #expect(byName.sampleShape == .vector(3) && byName.classes == 3)
        let byIndex = try CSVDataset.parse(text, source: "s.csv", labelColumn: .index(2))
        #expect(byIndex.features == byName.features && byIndex.labels == byName.labels)
        let last = try CSVDataset.parse("0.5,0.25,1\n1,0,4\n", source: "l.csv", labelColumn: CSVLabelColumn(parsing: "-1"))
        #expect(last.labels == [1, 4] && last.features == [0.5, 0.25, 1, 0] && last.classes == 5)
        #expect { try CSVDataset.parse(text, source: "s.csv", labelColumn: .name("label")) } throws: { "\($0)".contains("no column named \"label\"") }
        #expect { try CSVDataset.parse("1,2\n3,4\n", source: "n.csv", labelColumn: .name("label")) } throws: { "\($0)".contains("needs a header row") }
        #expect { try CSVDataset.parse(text, source: "s.csv", labelColumn: .index(4)) } throws: { "\($0)".contains("outside the 4 columns") }
        #expect { try CSVDataset.parse(text + "1,2,3\n", source: "s.csv", labelColumn: .index(2)) } throws: { "\($0)".contains("line 4: 3 columns, expected 4") }
        #expect { try CSVDataset.parse("a,b\n1,x\n", source: "h.csv") } throws: { "\($0)".contains("line 2, column \"b\"") }
    }

    @Test(arguments: [
        ("1,0.5,1\n", "feature"),
        ("10,0,0,0\n", "label"),
        ("1,0,0,0\nx,0,0,0\n", "label"),
        ("1,0,nan,0\n", "finite"),
        ("1,0,0,0\n1,0,abc,0\n", "finite"),
        ("\n# only comments\n", "no examples"),
    ])
    func rejectsBadLines(text: String, expected: String) {
        #expect { try CSVDataset.parse(text, source: "d.csv", targets: .classes(10), sampleShape: shape) } throws: { error in
            "\(error)".contains("d.csv") && "\(error)".contains(expected)
        }
    }
}

@Suite struct PartitionTests {
    let labels: [Int32] = (0..<6000).map { Int32($0 % 10) }

    func checkDisjointCover(_ parts: [[Int32]], total: Int) {
        let all = parts.flatMap { $0 }
        #expect(all.count == total)
        #expect(Set(all).count == total, "a client's slice overlaps another's")
    }

    @Test func iidGivesEqualShares() throws {
        let parts = try Partition.iid.split(labels: labels, classes: 10, clients: 7, seed: 1)
        checkDisjointCover(parts, total: 6000)
        #expect(Set(parts.map(\.count)).isSubset(of: [857, 858]))
    }

    @Test func shardsGiveEachClientTwoLabelsMostly() throws {
        let parts = try Partition.shards(perClient: 2).split(labels: labels, classes: 10, clients: 20, seed: 1)
        checkDisjointCover(parts, total: 6000)
        #expect(parts.allSatisfy { $0.count == 300 })
        let labelCounts = parts.map { Set($0.map { labels[Int($0)] }).count }
        #expect(labelCounts.allSatisfy { $0 <= 2 }, "label counts per client: \(labelCounts)")
    }

    @Test func tooManyShardsIsAnError() {
        #expect { try Partition.shards(perClient: 2).split(labels: Array(labels.prefix(30)), classes: 10, clients: 20, seed: 1) } throws: {
            "\($0)".contains("shards")
        }
    }

    @Test func dirichletSkewsLabels() throws {
        let skewed = try Partition.dirichlet(alpha: 0.1).split(labels: labels, classes: 10, clients: 10, seed: 2)
        let even = try Partition.dirichlet(alpha: 1000).split(labels: labels, classes: 10, clients: 10, seed: 2)
        checkDisjointCover(skewed, total: 6000)
        checkDisjointCover(even, total: 6000)
        func dominantShare(_ parts: [[Int32]]) -> Double {
            let shares = parts.map { part -> Double in
                var counts = [Int](repeating: 0, count: 10)
                for i in part { counts[Int(labels[Int(i)])] += 1 }
                return Double(counts.max()!) / Double(max(1, part.count))
            }
            return shares.reduce(0, +) / Double(shares.count)
        }
        #expect(dominantShare(skewed) > 0.35)
        #expect(dominantShare(even) < 0.2)
    }

    @Test func partitionsAreSeeded() throws {
        let a = try Partition.iid.split(labels: labels, classes: 10, clients: 5, seed: 9)
        let b = try Partition.iid.split(labels: labels, classes: 10, clients: 5, seed: 9)
        let c = try Partition.iid.split(labels: labels, classes: 10, clients: 5, seed: 10)
        #expect(a == b)
        #expect(a != c)
    }

    @Test func csvFeaturesBeyondAMagnitudeAreRefused() {
        #expect(throws: DataError.self) { try CSVDataset.parse("1,0.5,1e30\n", source: "big.csv", targets: .classes(10), sampleShape: .vector(2)) }
        #expect(throws: Never.self) { try CSVDataset.parse("1,0.5,1e6\n", source: "ok.csv", targets: .classes(10), sampleShape: .vector(2)) }
    }
}
