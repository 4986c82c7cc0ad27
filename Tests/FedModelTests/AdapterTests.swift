import Testing
@testable import FedModel

/// Low-rank adapters in model descriptions: how they are written, laid out and trained.
@Suite struct AdapterTests {
    static let adapted2NN = "784|10|dense:200:lora4,relu,dense:200:lora4,relu,dense:10:lora2"

    @Test func descriptionsRoundTrip() throws {
        let spec = try ModelSpec(wireDescription: Self.adapted2NN)
        #expect(spec.wireDescription == Self.adapted2NN)
        #expect(spec.hasAdapters)
        #expect(try LayerSpec(parsing: "conv3x3:16:s2:lora8") == .adapted(.conv(kernelSize: 3, channels: 16, stride: 2), rank: 8))
        #expect(try LayerSpec(parsing: "CONV5x5:32:LoRA1").description == "conv5x5:32:lora1")
        for bad in ["relu:lora2", "dense:10:lora0", "dense:10:lora", "dense:10:lorax", "gru:4:lora2", "dense:10:lora2:lora2"] {
            #expect(throws: ModelError.self, "\(bad)") { try LayerSpec(parsing: bad) }
        }
    }

    /// The base tensors keep the plain model's names, so a model trained without adapters loads
    /// into them by name; only the adapters are trainable.
    @Test func layoutNamesAndTrainableTensors() throws {
        let network = try Network(ModelSpec(wireDescription: Self.adapted2NN))
        let plain = try Network(.mnist2NN)
        #expect(network.layout.tensors.map(\.name) == [
            "dense1.weight", "dense1.bias", "dense1.lora_a", "dense1.lora_b",
            "dense2.weight", "dense2.bias", "dense2.lora_a", "dense2.lora_b",
            "dense3.weight", "dense3.bias", "dense3.lora_a", "dense3.lora_b",
        ])
        for tensor in plain.layout.tensors {
            #expect(network.layout.tensor(named: tensor.name)?.shape == tensor.shape)
        }
        #expect(network.layout.trainableIndices == [2, 3, 6, 7, 10, 11])
        #expect(network.layout.tensor(named: "dense1.lora_a")?.shape == [784, 4])
        #expect(network.layout.tensor(named: "dense3.lora_b")?.shape == [2, 10])
        let adapterCount = network.layout.tensors.filter(\.trainable).reduce(0) { $0 + $1.count }
        #expect(adapterCount == 784 * 4 + 4 * 200 + 200 * 4 + 4 * 200 + 200 * 2 + 2 * 10)
        #expect(plain.layout.trainableIndices == Array(0..<6))
    }

    /// FFA-LoRA (`:ffaR`): A is frozen under its own name, so only B trains and travels.
    @Test func frozenAAdaptersTrainOnlyB() throws {
        #expect(try LayerSpec(parsing: "dense:200:FFA4") == .adapted(.dense(outputs: 200), rank: 4, freezesA: true))
        #expect(try LayerSpec(parsing: "conv3x3:8:ffa2").description == "conv3x3:8:ffa2")
        for bad in ["dense:10:ffa0", "dense:10:ffa", "relu:ffa2"] {
            #expect(throws: ModelError.self, "\(bad)") { try LayerSpec(parsing: bad) }
        }
        let network = try Network(ModelSpec(wireDescription: "784|10|dense:200:ffa4,relu,dense:200:ffa4,relu,dense:10:lora2"))
        #expect(network.layout.tensors.filter(\.trainable).map(\.name) == ["dense1.lora_b", "dense2.lora_b", "dense3.lora_a", "dense3.lora_b"])
        #expect(network.layout.tensor(named: "dense1.ffa_a")?.shape == [784, 4] && network.layout.tensor(named: "dense1.ffa_a")?.trainable == false)
        // A starts random (B at zero), as LoRA's.
        let parameters = network.initialParameters(seed: 2)
        #expect(parameters[network.layout.tensor(named: "dense1.ffa_a")!.range].contains { $0 != 0 })
        #expect(parameters[network.layout.tensor(named: "dense1.lora_b")!.range].allSatisfy { $0 == 0 })
    }

    /// B starts at zero, so the adapted model computes exactly what its base does.
    @Test func startsAsItsBase() throws {
        let network = try Network(ModelSpec(wireDescription: Self.adapted2NN))
        let plain = try Network(.mnist2NN)
        let base = plain.initialParameters(seed: 3)
        var parameters = network.initialParameters(seed: 9)
        for tensor in plain.layout.tensors {
            let target = network.layout.tensor(named: tensor.name)!
            parameters.replaceSubrange(target.range, with: base[tensor.range])
        }
        #expect(network.layout.tensors.filter { $0.name.hasSuffix("lora_a") }.allSatisfy { t in parameters[t.range].contains { $0 != 0 } })
        var generator = SeededGenerator(seed: 5)
        let data = try Dataset(name: "noise", sampleShape: .vector(784), classes: 10,
                               features: (0..<(7 * 784)).map { _ in generator.nextUniform(0, 1) }, labels: (0..<7).map { Int32($0) })
        let adapted = Evaluator(network: network, threads: 1).evaluate(parameters, on: data.all)
        let reference = Evaluator(network: plain, threads: 1).evaluate(base, on: data.all)
        #expect(adapted.loss == reference.loss)
    }

    /// Training a model with adapters and `frozen` set to the non-adapter tensors changes only the
    /// adapters, and lowers the loss.
    @Test func trainingMovesOnlyTheAdapters() throws {
        let network = try Network(ModelSpec(input: .vector(12), classes: 3, layers: [.adapted(.dense(outputs: 16), rank: 2), .relu, .adapted(.dense(outputs: 3), rank: 2)]))
        var generator = SeededGenerator(seed: 11)
        let features = (0..<(60 * 12)).map { _ in generator.nextUniform(-1, 1) }
        // Learnable labels: which of three sums of features is largest.
        let labels = (0..<60).map { e -> Int32 in
            let sums = (0..<3).map { k in (0..<4).reduce(Float(0)) { $0 + features[e * 12 + k * 4 + $1] } }
            return Int32(sums.firstIndex(of: sums.max()!)!)
        }
        let data = try Dataset(name: "toy", sampleShape: .vector(12), classes: 3, features: features, labels: labels)
        let start = network.initialParameters(seed: 2)
        var trained = start
        let frozen = Set(network.layout.tensors.filter { !$0.trainable }.map(\.index))
        let trainer = LocalTrainer(network: network, batchCapacity: 10)
        let before = Evaluator(network: network, threads: 1).evaluate(start, on: data.all).loss
        _ = trainer.train(parameters: &trained, anchor: nil, data: data.all, epochs: 100, batchSize: 10,
                          sgd: SGD(learningRate: 0.2), generator: &generator, frozen: frozen)
        for tensor in network.layout.tensors {
            let moved = trained[tensor.range] != start[tensor.range]
            #expect(moved == tensor.trainable, "\(tensor.name)")
        }
        #expect(Evaluator(network: network, threads: 1).evaluate(trained, on: data.all).loss < before * 0.8)
    }
}
