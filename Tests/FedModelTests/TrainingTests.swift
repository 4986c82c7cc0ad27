import Testing
@testable import FedModel

@Suite struct TrainingTests {
    static let test = try! MNIST.load(directory: mnistDirectory, train: false)

    func slice(_ range: Range<Int>) -> DatasetSlice {
        DatasetSlice(dataset: Self.test, indices: range.map { Int32($0) })
    }

    @Test func sgdLearnsMNIST() throws {
        let network = try Network(.mnist2NN)
        let trainer = LocalTrainer(network: network, batchCapacity: 10)
        var parameters = network.initialParameters(seed: 1)
        let evaluator = Evaluator(network: network, threads: 2)
        let before = evaluator.evaluate(parameters, on: slice(8000..<10_000))
        var g = SeededGenerator(seed: 2)
        let summary = trainer.train(parameters: &parameters, anchor: nil, data: slice(0..<6000), epochs: 1, batchSize: 10, sgd: SGD(learningRate: 0.1), generator: &g)
        let after = evaluator.evaluate(parameters, on: slice(8000..<10_000))
        #expect(summary.examplesSeen == 6000 && summary.steps == 600)
        #expect(before.accuracy < 0.3)
        #expect(after.accuracy > 0.85, "accuracy after one epoch: \(after.accuracy)")
        #expect(after.loss < before.loss)
    }

    @Test func sameSeedSameRunBitForBit() throws {
        let network = try Network(.mnist2NN)
        func run(seed: UInt64, threads: Int) -> [Float] {
            let trainer = LocalTrainer(network: network, batchCapacity: 10, threads: threads)
            var parameters = network.initialParameters(seed: 3)
            var g = SeededGenerator(seed: seed)
            _ = trainer.train(parameters: &parameters, anchor: nil, data: slice(0..<300), epochs: 2, batchSize: 10, sgd: SGD(learningRate: 0.05, momentum: 0.9), generator: &g)
            return parameters
        }
        #expect(run(seed: 1, threads: 1) == run(seed: 1, threads: 1))
        #expect(run(seed: 1, threads: 1) != run(seed: 2, threads: 1))
    }

    /// Work is shared between cores in ways that never change a sum's order (Winograd tiles,
    /// the two halves of a batch for ∂W, column panels, weight row blocks), so a client trains
    /// to the same bits on any number of cores.
    @Test func cnnTrainsToTheSameBitsOnOneCoreAndTwo() throws {
        let network = try Network(.mnistCNN)
        func run(threads: Int) -> [Float] {
            let trainer = LocalTrainer(network: network, batchCapacity: 10, threads: threads)
            var parameters = network.initialParameters(seed: 3)
            var g = SeededGenerator(seed: 1)
            _ = trainer.train(parameters: &parameters, anchor: nil, data: slice(0..<60), epochs: 1, batchSize: 10, sgd: SGD(learningRate: 0.05, momentum: 0.9), generator: &g)
            return parameters
        }
        let one = run(threads: 1), two = run(threads: 2)
        let difference = one.indices.first { one[$0].bitPattern != two[$0].bitPattern }
        #expect(difference == nil, "parameter \(difference ?? -1) differs between one core and two")
    }

    /// Dense layers apply the optimiser inside their backward pass, block by block, and a
    /// large weight's forward product streams it (``Layer/fusesUpdate``). Training must give
    /// the same bits as the plain sequence (whole gradient from ``Workspace/lossAndGradient``,
    /// then one SGD step per tensor), on one core and on two, with momentum, weight decay,
    /// FedProx and frozen tensors.
    @Test func fusedStepsEqualGradientThenStep() throws {
        // 1100·1024 weights: above the streaming threshold; 1100 rows: a partial last block.
        let network = try Network(ModelSpec(input: .vector(1100), classes: 10, layers: [.dense(outputs: 1024), .relu, .dense(outputs: 10)]))
        #expect(network.layers[0].fusesUpdate)
        var generator = SeededGenerator(seed: 5)
        let features = (0..<(36 * 1100)).map { _ in generator.nextUniform(0, 1) }
        let data = try Dataset(name: "wide", sampleShape: .vector(1100), classes: 10, features: features, labels: (0..<36).map { Int32($0 % 10) })
        let start = network.initialParameters(seed: 1)
        let anchor = start.map { $0 * 0.5 }
        let settings: [(SGD, Set<Int>)] = [
            (SGD(learningRate: 0.05), []),
            (SGD(learningRate: 0.05, momentum: 0.9, weightDecay: 0.001, proximalMu: 0.1), []),
            (SGD(learningRate: 0.05, momentum: 0.5), [0, 3]),
        ]
        for (sgd, frozen) in settings {
            // The reference: the trainer's loop written out with unfused gradients.
            var expected = start
            var velocity = [Float](repeating: 0, count: start.count)
            var order = data.all.indices
            var draws = SeededGenerator(seed: 2)
            let workspace = Workspace(network: network, capacity: 8)
            for _ in 0..<2 {
                order.withUnsafeMutableBufferPointer { draws.shuffle($0) }
                for first in stride(from: 0, to: order.count, by: 8) {
                    let batch = min(8, order.count - first)
                    order.withUnsafeBufferPointer { data.gather(UnsafeBufferPointer(rebasing: $0[first..<(first + batch)]), into: workspace) }
                    _ = expected.withUnsafeBufferPointer { workspace.lossAndGradient(parameters: $0.baseAddress!, batch: batch) }
                    for tensor in network.layout.tensors where !frozen.contains(tensor.index) {
                        expected.withUnsafeMutableBufferPointer { w in velocity.withUnsafeMutableBufferPointer { v in anchor.withUnsafeBufferPointer { a in
                            let at = tensor.range.lowerBound
                            sgd.step(parameters: w.baseAddress! + at, gradient: workspace.parameterGradient + at,
                                     anchor: a.baseAddress! + at, velocity: v.baseAddress! + at, count: tensor.range.count)
                        }}}
                    }
                }
            }
            for threads in [1, 2] {
                var parameters = start
                var draws = SeededGenerator(seed: 2)
                _ = LocalTrainer(network: network, batchCapacity: 8, threads: threads).train(
                    parameters: &parameters, anchor: anchor, data: data.all, epochs: 2, batchSize: 8, sgd: sgd, generator: &draws, frozen: frozen)
                // The first differing index, not an array comparison (whose failure message diffs a million values).
                let difference = parameters.indices.first { parameters[$0].bitPattern != expected[$0].bitPattern }
                #expect(difference == nil, "\(sgd), frozen \(frozen), \(threads) threads: parameter \(difference ?? -1) differs")
                #expect(parameters != start)
            }
        }
    }

    /// One step on one example checked against the update rule written out by hand.
    @Test func optimiserFollowsItsFormula() throws {
        let network = try Network(ModelSpec(input: .vector(4), classes: 2, layers: [.dense(outputs: 2)]))
        let data = try Dataset(name: "one", sampleShape: .vector(4), classes: 2, features: [1, 2, 3, 4], labels: [1])
        let start = network.initialParameters(seed: 1)
        let anchor = start.map { $0 + 0.5 }
        // Gradient of the loss at `start` from the workspace.
        let workspace = Workspace(network: network, capacity: 1)
        workspace.input.update(from: data.features, count: 4)
        workspace.labels[0] = 1
        _ = start.withUnsafeBufferPointer { workspace.lossAndGradient(parameters: $0.baseAddress!, batch: 1) }
        let gradient = Array(UnsafeBufferPointer(start: workspace.parameterGradient, count: start.count))
        let sgd = SGD(learningRate: 0.1, momentum: 0.9, weightDecay: 0.01, proximalMu: 0.2)
        var parameters = start
        var g = SeededGenerator(seed: 1)
        _ = LocalTrainer(network: network, batchCapacity: 1).train(
            parameters: &parameters, anchor: anchor, data: data.all, epochs: 1, batchSize: 1, sgd: sgd, generator: &g)
        for i in start.indices {
            // First step: v = d, w -= lr·v.
            let d = gradient[i] + 0.01 * start[i] + 0.2 * (start[i] - anchor[i])
            let expected = start[i] - 0.1 * d
            #expect(abs(parameters[i] - expected) < 1e-6, "parameter \(i): \(parameters[i]) vs \(expected)")
        }
    }

    @Test func frozenShardsKeepTheirValues() throws {
        let network = try Network(.mnist2NN)
        let start = network.initialParameters(seed: 1)
        var parameters = start
        var g = SeededGenerator(seed: 1)
        _ = LocalTrainer(network: network, batchCapacity: 10).train(
            parameters: &parameters, anchor: nil, data: slice(0..<200), epochs: 1, batchSize: 10,
            sgd: SGD(learningRate: 0.1), generator: &g, frozen: [0, 3, 5])
        for tensor in network.layout.tensors {
            let changed = parameters[tensor.range] != start[tensor.range]
            #expect(changed == ![0, 3, 5].contains(tensor.index), "\(tensor.name) changed: \(changed)")
        }
    }

    @Test func weightedDeltaSumIsTheExampleWeightedMean() {
        var sum = WeightedDeltaSum(parameterCount: 3)
        let global: [Float] = [1, 1, 1]
        sum.add(local: [2, 1, 1], global: global, weight: 100)
        sum.add(local: [1, 4, 1], global: global, weight: 300)
        var model = global
        #expect(sum.apply(to: &model))
        #expect(abs(model[0] - 1.25) < 1e-6)
        #expect(abs(model[1] - 3.25) < 1e-6)
        #expect(model[2] == 1)
        #expect(sum.contributions == 2)
        let empty = WeightedDeltaSum(parameterCount: 3)
        var untouched = global
        #expect(!empty.apply(to: &untouched))
        #expect(untouched == global)
    }
}
