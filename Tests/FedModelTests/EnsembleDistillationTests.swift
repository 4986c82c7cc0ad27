import Foundation
import Testing
@testable import FedModel

/// FedDF's server step: the teachers' outputs are summed as they come, and the student is
/// pulled toward their mean.
struct EnsembleDistillationTests {
    static let network = try! Network(.mnist2NN)
    static let transfer = try! DistillationTests.mnist.subset(Array(4000..<5000)).all

    /// A 2NN trained for an epoch on `examples` of the MNIST test file (not the transfer ones).
    static func trained(_ examples: Range<Int>, seed: UInt64) -> [Float] {
        var model = network.initialParameters(seed: seed)
        var generator = SeededGenerator(seed: seed)
        _ = LocalTrainer(network: network, batchCapacity: 10).train(
            parameters: &model, anchor: nil, data: try! DistillationTests.mnist.subset(Array(examples)).all,
            epochs: 1, batchSize: 10, sgd: SGD(learningRate: 0.1), generator: &generator)
        return model
    }

    static func agreement(_ a: [Float], _ b: [Float]) -> Double {
        func predictions(_ model: [Float]) -> [Int] {
            var sum = [Float](repeating: 0, count: transfer.count * 10)
            model.withUnsafeBufferPointer { Distillation.addLogits(of: $0.baseAddress!, on: transfer, workspace: Workspace(network: network, capacity: 100), into: &sum) }
            return (0..<transfer.count).map { row in (0..<10).max { sum[row * 10 + $0] < sum[row * 10 + $1] }! }
        }
        return Double(zip(predictions(a), predictions(b)).filter { $0 == $1 }.count) / Double(transfer.count)
    }

    @Test func theTeachersLogitsAreSummedOverTheirOwnShards() throws {
        let fusion = try EnsembleDistillation(network: Self.network, transfer: Self.transfer, settings: Distillation(), threads: 2)
        let global = Self.network.initialParameters(seed: 1)
        let a = Self.trained(0..<1000, seed: 2), b = Self.trained(1000..<2000, seed: 3)
        let all = Self.network.layout.tensors.map(\.range)
        let delta = { (model: [Float]) in zip(model, global).map { $0 - $1 } }
        var teachers = fusion.startRound()
        fusion.addTeacher(global: global, delta: delta(a), ranges: all, to: &teachers)
        fusion.addTeacher(global: global, delta: delta(b), ranges: all, to: &teachers)
        #expect(teachers.count == 2)
        var expected = [Float](repeating: 0, count: Self.transfer.count * 10)
        let workspace = Workspace(network: Self.network, capacity: 64)
        for model in [a, b] {
            model.withUnsafeBufferPointer { Distillation.addLogits(of: $0.baseAddress!, on: Self.transfer, workspace: workspace, into: &expected) }
        }
        let largest = zip(teachers.logitSum, expected).map { abs($0 - $1) }.max()!
        #expect(largest < 1e-3, "largest difference \(largest)")

        // A delta counts only on the shards the client trained: the rest of the teacher is the
        // global model, whatever the delta holds there.
        let last = all.count - 1
        var partial = fusion.startRound()
        var garbage = delta(a)
        for i in all[last] { garbage[i] = 1e6 }
        fusion.addTeacher(global: global, delta: garbage, ranges: Array(all[..<last]), to: &partial)
        var trusted = fusion.startRound()
        var mixed = a
        for i in all[last] { mixed[i] = global[i] }
        fusion.addTeacher(global: global, delta: zip(mixed, global).map { $0 - $1 }, ranges: all, to: &trusted)
        #expect(zip(partial.logitSum, trusted.logitSum).allSatisfy { abs($0 - $1) < 1e-3 })
    }

    @Test func theStudentMovesTowardTheEnsemble() throws {
        let settings = Distillation(temperature: 1, epochs: 3, batchSize: 32, learningRate: 0.05, momentum: 0.9)
        let fusion = try EnsembleDistillation(network: Self.network, transfer: Self.transfer, settings: settings)
        let global = Self.network.initialParameters(seed: 1)
        let all = Self.network.layout.tensors.map(\.range)
        let teacher = Self.trained(0..<3000, seed: 2)
        var teachers = fusion.startRound()
        fusion.addTeacher(global: global, delta: zip(teacher, global).map { $0 - $1 }, ranges: all, to: &teachers)
        let before = Self.agreement(global, teacher)
        let fused = fusion.fuse(initial: global, teachers: teachers, seed: 1, round: 1)
        let after = Self.agreement(fused.model, teacher)
        #expect(before < 0.3 && after > 0.85, "agreement with the teacher: \(before) before, \(after) after")
        #expect(fused.loss != nil)
        // The same seed and round give the same student; another round shuffles differently.
        let sameRound = fusion.fuse(initial: global, teachers: teachers, seed: 1, round: 1).model == fused.model
        let otherRound = fusion.fuse(initial: global, teachers: teachers, seed: 1, round: 2).model == fused.model
        #expect(sameRound && !otherRound)
        // No teachers: nothing to learn from, the model is kept.
        let none = fusion.fuse(initial: global, teachers: fusion.startRound(), seed: 1, round: 1)
        let kept = none.model == global
        #expect(kept && none.loss == nil)
    }

    @Test func aStudentThatIsItsOwnTeacherStaysPut() throws {
        let fusion = try EnsembleDistillation(network: Self.network, transfer: Self.transfer, settings: Distillation(temperature: 2, epochs: 2))
        let model = Self.trained(0..<2000, seed: 4)
        var teachers = fusion.startRound()
        let all = Self.network.layout.tensors.map(\.range)
        for _ in 0..<3 { fusion.addTeacher(global: model, delta: [Float](repeating: 0, count: model.count), ranges: all, to: &teachers) }
        let fused = fusion.fuse(initial: model, teachers: teachers, seed: 1, round: 1).model
        let moved = zip(fused, model).map { abs($0 - $1) }.max()!
        #expect(moved < 1e-4, "moved by \(moved)")
    }

    @Test func onlyClassifiersWithServerExamples() throws {
        let regression = try Network(ModelSpec(input: .vector(784), classes: 1, layers: [.dense(outputs: 1)], loss: .meanSquaredError))
        #expect { try EnsembleDistillation(network: regression, transfer: Self.transfer, settings: Distillation()) } throws: { "\($0)".contains("classifiers") }
        #expect { try EnsembleDistillation(network: Self.network, transfer: Self.transfer, settings: Distillation(epochs: 0)) } throws: { "\($0)".contains("epochs") }
        let empty = DatasetSlice(dataset: Self.transfer.dataset, indices: [])
        #expect { try EnsembleDistillation(network: Self.network, transfer: empty, settings: Distillation()) } throws: { "\($0)".contains("server examples") }
    }
}
