import Foundation
import Testing
@testable import FedModel

/// The losses beyond softmax cross-entropy: mean squared error (regression) and sigmoid binary
/// cross-entropy (multi-label), their gradients, their metrics, and value targets through
/// datasets, readers and partitions.
@Suite struct LossTests {
    /// ∂(mean loss)/∂outputs against central differences, for both value losses.
    @Test(arguments: [Loss.meanSquaredError, .binaryCrossEntropy])
    func outputGradientMatchesFiniteDifferences(loss: Loss) {
        let batch = 4, width = 3
        var g = SeededGenerator(seed: 5)
        var outputs = (0..<(batch * width)).map { _ in g.nextUniform(-3, 3) }
        let targets: [Float] = loss == .binaryCrossEntropy
            ? (0..<(batch * width)).map { Float($0 % 2) }
            : (0..<(batch * width)).map { _ in g.nextUniform(-2, 2) }
        let labels: [Int32] = [0]
        func meanLoss(gradient: UnsafeMutablePointer<Float>? = nil) -> Double {
            outputs.withUnsafeBufferPointer { z in targets.withUnsafeBufferPointer { t in labels.withUnsafeBufferPointer { y in
                loss.evaluate(outputs: z.baseAddress!, labels: y.baseAddress!, values: t.baseAddress!, batch: batch, width: width, gradient: gradient).lossSum / Double(batch)
            }}}
        }
        var gradient = [Float](repeating: 0, count: outputs.count)
        _ = gradient.withUnsafeMutableBufferPointer { meanLoss(gradient: $0.baseAddress!) }
        for i in outputs.indices {
            let saved = outputs[i]
            outputs[i] = saved + 1e-2
            let plus = meanLoss()
            outputs[i] = saved - 1e-2
            let minus = meanLoss()
            outputs[i] = saved
            let numeric = (plus - minus) / 2e-2
            #expect(abs(numeric - Double(gradient[i])) < 2e-3, "\(loss) ∂y[\(i)]: analytic \(gradient[i]) numeric \(numeric)")
        }
    }

    /// The whole chain with a value loss: a small network's parameter gradient against finite
    /// differences, targets loaded into the workspace's target buffer.
    @Test(arguments: [Loss.meanSquaredError, .binaryCrossEntropy])
    func wholeNetworkGradient(loss: Loss) throws {
        let network = try Network(ModelSpec(input: .vector(5), classes: 3, layers: [.dense(outputs: 6), .relu, .dense(outputs: 3)], loss: loss))
        var g = SeededGenerator(seed: 13)
        let inputs = (0..<20).map { _ in g.nextUniform(-1, 1) }
        let targets: [Float] = (0..<12).map { loss == .binaryCrossEntropy ? Float($0 % 3 == 0 ? 1 : 0) : g.nextUniform(-1, 1) }
        checkNetworkGradient(network, batch: 4, seed: 2) { workspace in
            workspace.input.update(from: inputs, count: inputs.count)
            workspace.targets.update(from: targets, count: targets.count)
        }
    }

    /// RMSE and MAE from a model whose output is a known constant: a network of one dense
    /// layer with zero weights and bias b predicts b for every example.
    @Test func regressionMetricsAreExact() throws {
        let network = try Network(ModelSpec(input: .vector(2), classes: 1, layers: [.dense(outputs: 1)], loss: .meanSquaredError))
        let data = try Dataset(name: "four", sampleShape: .vector(2), features: [Float](repeating: 1, count: 8), values: [1, 3, 5, 7], width: 1)
        var parameters = [Float](repeating: 0, count: network.parameterCount)
        parameters[parameters.count - 1] = 4  // the bias
        let result = Evaluator(network: network, threads: 2, batchSize: 3).evaluate(parameters, on: data.all)
        // Errors 3, 1, 1, 3: MSE 5, RMSE √5, MAE 2.
        #expect(abs(result.rmse - 5.0.squareRoot()) < 1e-9 && abs(result.mae - 2) < 1e-9 && abs(result.loss - 5) < 1e-9)
        #expect(result.metric == .rmse && result.value == result.rmse && result.perClassAccuracy.isEmpty)
        #expect(Metric.rmse.reaches(2.0, 2.5) && !Metric.rmse.reaches(3.0, 2.5) && Metric.accuracy.reaches(0.9, 0.8))
    }

    /// Label accuracy counts (example, label) decisions; accuracy per class counts each class.
    @Test func multiLabelAndPerClassAccuracy() throws {
        let network = try Network(ModelSpec(input: .vector(1), classes: 2, layers: [.dense(outputs: 2)], loss: .binaryCrossEntropy))
        // Outputs are the biases: +1 (label on) and −1 (off) for every example.
        var parameters = [Float](repeating: 0, count: network.parameterCount)
        parameters[parameters.count - 2] = 1
        parameters[parameters.count - 1] = -1
        let data = try Dataset(name: "tags", sampleShape: .vector(1), features: [0, 0, 0], values: [1, 0, 1, 1, 0, 0], width: 2, unitInterval: true)
        let result = Evaluator(network: network, threads: 1).evaluate(parameters, on: data.all)
        #expect(abs(result.accuracy - 4.0 / 6) < 1e-9 && result.metric == .labelAccuracy)
        // Label 0 (always on) is right for the two examples whose target is 1; label 1 (always off) for all three.
        let perLabel: [Double] = result.perClassAccuracy.compactMap { $0 }
        #expect(perLabel.count == 2 && perLabel.allSatisfy { abs($0 - 2.0 / 3) < 1e-9 })

        let classifier = try Network(ModelSpec(input: .vector(1), classes: 3, layers: [.dense(outputs: 3)]))
        var biased = [Float](repeating: 0, count: classifier.parameterCount)
        biased[biased.count - 2] = 5  // always predicts class 1
        let labelled = try Dataset(name: "three", sampleShape: .vector(1), classes: 3, features: [0, 0, 0, 0], labels: [1, 1, 0, 1])
        let scored = Evaluator(network: classifier, threads: 2, batchSize: 1).evaluate(biased, on: labelled.all)
        #expect(scored.accuracy == 0.75 && scored.perClassAccuracy == [0.0, 1.0, nil])
    }

    /// Value targets are validated, read from NumPy and CSV, converted for a model known
    /// later, and refused by partitions that split by label.
    @Test func valueTargetsThroughReadersAndPartitions() throws {
        #expect { try Dataset(name: "d", sampleShape: .vector(1), features: [0, 0], values: [1, .nan], width: 1) }
            throws: { "\($0)".contains("example 1, target 0") }
        #expect { try Dataset(name: "d", sampleShape: .vector(1), features: [0, 0], values: [1, 2], width: 1, unitInterval: true) }
            throws: { "\($0)".contains("in [0, 1]") }
        let csv = "temperature,humidity,energy\n21.5,0.4,3.25\n19,0.6,2.5\n"
        let data = try CSVDataset.parse(csv, source: "e.csv", labelColumn: .name("energy"), targets: .values(width: 1, unitInterval: false))
        #expect(!data.hasClassLabels && data.values == [3.25, 2.5] && data.features == [21.5, 0.4, 19, 0.6])
        // Inferred: whole numbers are class labels, anything else values.
        #expect(try CSVDataset.parse(csv, source: "e.csv", labelColumn: .index(-1), targets: nil).values == [3.25, 2.5])
        #expect(try CSVDataset.parse("1,0.5\n0,0.25\n", source: "c.csv", targets: nil).labels == [1, 0])
        #expect { try CSVDataset.parse(csv, source: "e.csv", labelColumn: .index(-1), targets: .values(width: 2, unitInterval: false)) }
            throws: { "\($0)".contains("y.npy of shape [N, 2]") }
        // Class labels read as one value each for a regression model, and back.
        let labelled = try Dataset(name: "l", sampleShape: .vector(1), classes: 4, features: [0, 1, 2], labels: [3, 0, 2])
        let asValues = try labelled.converted(to: .values(width: 1, unitInterval: false))
        #expect(asValues.values == [3, 0, 2] && asValues.classes == 1)
        #expect(try asValues.converted(to: .classes(4)).labels == [3, 0, 2])
        #expect { try data.converted(to: .classes(nil)) } throws: { "\($0)".contains("not a whole number") }
        #expect { try Partition.shards(perClient: 2).split(data, clients: 1, seed: 1) } throws: { "\($0)".contains("use iid or natural") }
        #expect(try Partition.iid.split(data, clients: 2, seed: 1).map(\.count) == [1, 1])
    }

    @Test func numPyValueTargets() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fedloss-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let script = """
            import numpy as np, sys
            d = sys.argv[1]
            np.save(f"{d}/x.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
            np.save(f"{d}/y.npy", np.array([[0.5, 1], [1.5, 2], [2.5, 3]], dtype=np.float64))
            np.save(f"{d}/tags.npy", np.array([[0, 1], [1, 1], [1, 2]], dtype=np.int64))
            """
        try runPython(script, in: dir)
        let inferred = try DataDirectory.loadDevice(dir)
        #expect(!inferred.hasClassLabels && inferred.classes == 2 && inferred.values == [0.5, 1, 1.5, 2, 2.5, 3])
        #expect { try NPYDataset.load(features: dir.appendingPathComponent("x.npy"), labels: dir.appendingPathComponent("y.npy"), targets: .values(width: 3, unitInterval: false)) }
            throws: { "\($0)".contains("2 target values per example, the model has 3 outputs") }
        // Multi-hot labels must be 0 or 1 (here a 2 in example 2).
        #expect { try NPYDataset.load(features: dir.appendingPathComponent("x.npy"), labels: dir.appendingPathComponent("tags.npy"), targets: .values(width: 2, unitInterval: true)) }
            throws: { "\($0)".contains("example 2, target 1") && "\($0)".contains("tags.npy") }
        #expect { try NPYDataset.load(features: dir.appendingPathComponent("x.npy"), labels: dir.appendingPathComponent("y.npy")) }
            throws: { "\($0)".contains("must have shape [3]") }
    }

    /// The model description on the wire names a loss other than softmax in a fourth field;
    /// softmax descriptions keep the three fields of version 1.
    @Test func wireDescriptionCarriesTheLoss() throws {
        let regression = ModelSpec(input: .vector(10), classes: 1, layers: [.dense(outputs: 16), .relu, .dense(outputs: 1)], loss: .meanSquaredError)
        #expect(regression.wireDescription == "10|1|dense:16,relu,dense:1|mse")
        #expect(try ModelSpec(wireDescription: regression.wireDescription) == regression)
        #expect(ModelSpec.mnist2NN.wireDescription == "784|10|dense:200,relu,dense:200,relu,dense:10")
        #expect(try ModelSpec(wireDescription: "5|3|dense:3|bce").loss == .binaryCrossEntropy)
        #expect { try ModelSpec(wireDescription: "5|3|dense:3|hinge") } throws: { "\($0)".contains("unknown loss \"hinge\"") }
        #expect { try ModelSpec(wireDescription: "5|3|dense:3|softmax") } throws: { "\($0)".contains("leaving the field out") }
        #expect { try ModelSpec(wireDescription: "5|1|dense:1") } throws: { "\($0)".contains("bad output count") }
    }
}
