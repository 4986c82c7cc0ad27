import FedCodec
import FedCoordinator
import FedModel
import FedStore
import Foundation
import Testing
@testable import FedSim

/// `fedsim search`: candidates within a budget, successive halving, the front, and the command.
@Suite struct ModelSearchTests {
    @Test func candidatesFitTheBudgetAndComeFromTheSeed() throws {
        var search = ModelSearch(budget: .exportBytes(50_000, try CodecSpec(parsing: "q8")))
        search.candidates = 16
        let drawn = try search.draw(for: .mnist2NN)
        #expect(drawn.count == 16 && Set(drawn.map(\.description)).count == 16)
        #expect(drawn.allSatisfy { $0.exportBytes <= 50_000 && $0.layers.last == .dense(outputs: 10) })
        #expect(try search.draw(for: .mnist2NN).map(\.description) == drawn.map(\.description), "the same seed draws the same candidates")
        search.seed = 2
        #expect(try search.draw(for: .mnist2NN).map(\.description) != drawn.map(\.description))
        // An exported candidate really has the size the budget counted.
        let network = try Network(ModelSpec(input: .vector(784), classes: 10, layers: drawn[0].layers))
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("candidate-\(UUID().uuidString).fedmodel")
        defer { try? FileManager.default.removeItem(at: file) }
        search.seed = 1
        let written = try ModelExport.write(model: network.initialParameters(seed: 1), network: network, codec: try CodecSpec(parsing: "q8"), to: file, test: nil)
        #expect(written.fileBytes == drawn[0].exportBytes)

        var images = ModelSearch(budget: .parameters(30_000))
        images.candidates = 8
        let convolutional = try images.draw(for: .mnistCNN)
        #expect(convolutional.allSatisfy { $0.parameters <= 30_000 && $0.layers.contains { if case .conv = $0 { true } else { false } } })
        var tiny = ModelSearch(budget: .parameters(100))
        tiny.candidates = 4
        #expect { try tiny.draw(for: .mnist2NN) } throws: { "\($0)".contains("fit 100 parameters") }
    }

    /// Training FLOPs per example: 6 × the forward pass's multiply-adds, the CNN's 74 MFLOP; a
    /// FLOPs budget draws candidates within it and measures the front in FLOPs.
    @Test func aTrainingFlopsBudget() throws {
        #expect(try Network(.mnistCNN).trainingFlopsPerExample == 6 * (28 * 28 * 25 * 32 + 14 * 14 * 25 * 32 * 64 + 3136 * 512 + 512 * 10))
        #expect(try Network(.mnistCNN).trainingFlopsPerExample == 73_638_912)
        #expect(try Network(.mnist2NN).trainingFlopsPerExample == 6 * 198_800)
        // Depthwise, strided and recurrent layers, and an adapter (its base's cost).
        let separable = try Network(ModelSpec(wireDescription: "28x28x1|10|dwconv3x3:s2,conv1x1:8,relu,flatten,dense:10:lora2"))
        #expect(separable.forwardMultiplyAdds == 14 * 14 * 9 * 1 + 14 * 14 * 1 * 8 + 14 * 14 * 8 * 10)
        let recurrent = try Network(ModelSpec(wireDescription: "5x1x3|2|gru:4,dense:2"))
        #expect(recurrent.forwardMultiplyAdds == 5 * 3 * 4 * (3 + 4) + 4 * 2)
        var search = ModelSearch(budget: .trainingFlops(5_000_000))
        search.candidates = 8
        let drawn = try search.draw(for: .mnistCNN)
        #expect(drawn.allSatisfy { $0.flops <= 5_000_000 && $0.flops == (try! Network(ModelSpec(input: ModelSpec.mnistCNN.input, classes: 10, layers: $0.layers))).trainingFlopsPerExample })
        #expect(search.budget.measure(drawn[0]) == drawn[0].flops)
        var sized = drawn
        for i in sized.indices { sized[i].results = [(3, 0.5 + Double(i % 3) * 0.1)] }
        let front = ModelSearch.front(sized, metric: .accuracy, measure: search.budget.measure)
        #expect(zip(front, front.dropFirst()).allSatisfy { $0.flops < $1.flops && $0.metric! < $1.metric! })
    }

    /// Six candidates, two finalists: six train 1 round, the best three 2 rounds, the best two
    /// to the end; the front holds finalists only.
    @Test func successiveHalvingKeepsTheBetterHalf() throws {
        var search = ModelSearch(budget: .parameters(60_000))
        (search.candidates, search.shortRounds, search.finalists, search.finalRounds) = (6, 1, 2, 3)
        var base = SimulationConfiguration()
        (base.clients, base.fraction, base.learningRate, base.seed) = (10, 0.5, 0.1, 3)
        let results = try search.run(try search.draw(for: .mnist2NN), base: base, train: SmallMNIST.train, test: SmallMNIST.test)
        #expect(results.map(\.rounds).sorted() == [1, 1, 1, 2, 4, 4], "\(results.map(\.results))")
        for rung in [1, 2] {
            let trained = results.filter { $0.results.contains { $0.rounds == rung } }
            let kept = trained.filter { $0.rounds > rung }, dropped = trained.filter { $0.rounds == rung }
            let worstKept = kept.map { $0.results.first { $0.rounds == rung }!.metric }.min()!
            #expect(dropped.allSatisfy { $0.metric! <= worstKept }, "rung \(rung)")
        }
        let front = ModelSearch.front(results, metric: .accuracy)
        #expect(!front.isEmpty && front.allSatisfy { $0.rounds == 4 })
        #expect(Set(ModelSearch.finalists(results).map(\.description)) == Set(results.filter { $0.rounds == 4 }.map(\.description)))
        #expect(zip(front, front.dropFirst()).allSatisfy { $0.exportBytes < $1.exportBytes && $0.metric! < $1.metric! })
    }

    @Test func theCommandPrintsTheFrontAndRecordsIt() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("search-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let db = directory.appendingPathComponent("search.sqlite"), plot = directory.appendingPathComponent("front.svg")
        let result = try FedSimProcess.run([
            "search", "--config", "Simulations/mnist-2nn-iid.toml", "--budget-bytes", "30000", "--budget-codec", "q8",
            "--candidates", "4", "--short-rounds", "1", "--finalists", "2", "--final-rounds", "2", "--db", db.path, "--plot", plot.path,
        ])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.contains("fedsim search: 4 candidates within 30000 bytes exported as q8"))
        #expect(result.stdout.contains("fedsim search: best within the budget: "), "\(result.stdout)")
        #expect(try RunStore(path: db.path).events(kind: "search").count == 4)
        #expect(try String(contentsOf: plot, encoding: .utf8).contains("<polyline"))
        let bad = try FedSimProcess.run(["search", "--config", "Simulations/mnist-2nn-iid.toml"])
        #expect(bad.status != 0 && bad.stderr.contains("--budget-params, --budget-bytes or --budget-flops"), "\(bad.stderr)")
    }
}
