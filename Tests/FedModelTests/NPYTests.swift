import Foundation
import Testing
@testable import FedModel

/// A `.npy` file written the way NumPy writes one (format 1.0, header padded to 64 bytes).
func npy(descr: String, shape: [Int], payload: [UInt8], fortran: Bool = false) -> [UInt8] {
    let tuple = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
    var header = "{'descr': '\(descr)', 'fortran_order': \(fortran ? "True" : "False"), 'shape': \(tuple), }"
    while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
    header += "\n"
    let length = header.utf8.count
    return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(length & 0xFF), UInt8(length >> 8)] + Array(header.utf8) + payload
}

func littleEndianBytes<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
    values.flatMap { value in withUnsafeBytes(of: value.littleEndian) { Array($0) } }
}

@Suite struct NPYTests {
    @Test func readsFloatAndIntegerArrays() throws {
        let floats: [Float] = [0.5, -2, 3.25, 1e-3, 7, 8]
        let a = try NPY.parse(npy(descr: "<f4", shape: [2, 3], payload: littleEndianBytes(floats.map(\.bitPattern))), source: "x.npy")
        #expect(a.shape == [2, 3] && a.kind == .float && a.values == floats.map(Double.init))
        let b = try NPY.parse(npy(descr: "<i8", shape: [4], payload: littleEndianBytes([Int64(0), 9, 300, 2])), source: "y.npy")
        #expect(b.shape == [4] && b.kind == .integer && b.values == [0, 9, 300, 2])
        let c = try NPY.parse(npy(descr: "|u1", shape: [3], payload: [0, 128, 255]), source: "u.npy")
        #expect(c.kind == .unsignedByte && c.values == [0, 128, 255])
    }

    @Test func refusesWhatItCannotRead() {
        func refusal(_ bytes: [UInt8]) -> String {
            do { _ = try NPY.parse(bytes, source: "bad.npy"); return "accepted" } catch { return "\(error)" }
        }
        #expect(refusal([1, 2, 3]).contains("magic"))
        #expect(refusal(npy(descr: ">f4", shape: [1], payload: [0, 0, 0, 0])).contains("not supported"))
        #expect(refusal(npy(descr: "<c8", shape: [1], payload: [UInt8](repeating: 0, count: 8))).contains("not supported"))
        #expect(refusal(npy(descr: "<f4", shape: [2, 2], payload: [UInt8](repeating: 0, count: 16), fortran: true)).contains("Fortran"))
        #expect(refusal(npy(descr: "<f4", shape: [3], payload: [UInt8](repeating: 0, count: 8))).contains("truncated"))
        #expect(refusal(npy(descr: "<f4", shape: [1], payload: [UInt8](repeating: 0, count: 8))).contains("trailing"))
        #expect(refusal(Array(npy(descr: "<f4", shape: [1], payload: []).prefix(30))).contains("truncated"))
    }

    @Test func datasetFromFeaturesAndLabels() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        // Three 2×2 single-channel uint8 images (scaled to [0, 1]) and their labels.
        try Data(npy(descr: "|u1", shape: [3, 2, 2], payload: (0..<12).map { UInt8($0 * 20) })).write(to: dir.appendingPathComponent("x.npy"))
        try Data(npy(descr: "<i4", shape: [3], payload: littleEndianBytes([Int32(2), 0, 1]))).write(to: dir.appendingPathComponent("y.npy"))
        let data = try DataDirectory.loadDevice(dir)
        #expect(data.sampleShape == TensorShape(height: 2, width: 2, channels: 1) && data.count == 3 && data.labels == [2, 0, 1])
        #expect(data.features[5] == Float(100.0 / 255))
        // A label the model cannot have, and labels that do not match the features.
        #expect { try NPYDataset.load(features: dir.appendingPathComponent("x.npy"), labels: dir.appendingPathComponent("y.npy"), targets: .classes(2)) }
            throws: { "\($0)".contains("label 2 is outside 0..<2") }
        try Data(npy(descr: "<i4", shape: [2], payload: littleEndianBytes([Int32(0), 1]))).write(to: dir.appendingPathComponent("y.npy"))
        #expect { try DataDirectory.loadDevice(dir) } throws: { "\($0)".contains("must have shape [3]") }
        // Non-finite features name the example.
        let nan = littleEndianBytes([Float(1), .nan].map(\.bitPattern))
        try Data(npy(descr: "<f4", shape: [2, 1], payload: nan)).write(to: dir.appendingPathComponent("x.npy"))
        #expect { try DataDirectory.loadDevice(dir) } throws: { "\($0)".contains("example 1") }
    }

    /// Files written by NumPy itself (`np.save`), for a simulation's train and test splits.
    @Test func filesWrittenByNumPyTrainASimulationSplit() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let script = """
            import numpy as np, sys
            d = sys.argv[1]
            rng = np.random.default_rng(1)
            for split, n in (("train", 40), ("test", 10)):
                np.save(f"{d}/{split}_x.npy", rng.random((n, 6), dtype=np.float32))
                np.save(f"{d}/{split}_y.npy", rng.integers(0, 3, n))
            """
        try runPython(script, in: dir)
        let train = try DataDirectory.load(dir, train: true), test = try DataDirectory.load(dir, train: false)
        #expect(train.count == 40 && test.count == 10 && train.sampleShape == .vector(6) && train.classes == 3)
        #expect(train.features.allSatisfy { $0 >= 0 && $0 < 1 })
    }
}

/// Runs a Python script (with NumPy) that writes files into `directory` (its one argument).
func runPython(_ script: String, in directory: URL) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", "-c", script, directory.path]
    try process.run()
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "python3 with NumPy writes the files")
}
