import Foundation
import Testing
@testable import FedModel

/// Knowledge distillation: the soft-target loss and its gradient, and a student taught on real
/// MNIST without its labels.
struct DistillationTests {
    static let mnist = try! MNIST.load(directory: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Simulations/data/mnist"), train: false)

    @Test(arguments: [1, 2, 4] as [Float])
    func theSoftLossGradientIsTTimesQMinusPOverTheBatch(temperature: Float) {
        let classes = 5, batch = 3
        var logits: [Float] = (0..<(batch * classes)).map { Float(($0 * 7) % 11) * 0.3 - 1.2 }
        var soft = [Float](repeating: 0, count: batch * classes)
        let teacher: [Float] = (0..<(batch * classes)).map { Float(($0 * 5) % 9) * 0.4 - 1 }
        teacher.withUnsafeBufferPointer { t in
            for b in 0..<batch { Distillation.softmax(t.baseAddress! + b * classes, count: classes, temperature: temperature, into: &soft, at: b * classes) }
        }
        let rows: [Int32] = [0, 1, 2]
        var gradient = [Float](repeating: 0, count: batch * classes)
        func loss(_ z: [Float]) -> Double {
            z.withUnsafeBufferPointer { z in
                Distillation.softCrossEntropy(logits: z.baseAddress!, targets: soft, rows: rows, batch: batch, classes: classes,
                                              temperature: temperature, gradient: nil).lossSum
            }
        }
        _ = logits.withUnsafeBufferPointer { z in
            Distillation.softCrossEntropy(logits: z.baseAddress!, targets: soft, rows: rows, batch: batch, classes: classes,
                                          temperature: temperature, gradient: &gradient)
        }
        // The gradient is of T²·CE averaged over the batch; the tally is the plain CE summed.
        let scale = Double(temperature * temperature) / Double(batch)
        let h: Float = 1e-2
        for i in logits.indices {
            let saved = logits[i]
            logits[i] = saved + h
            let up = loss(logits)
            logits[i] = saved - h
            let down = loss(logits)
            logits[i] = saved
            let numeric = (up - down) / Double(2 * h) * scale
            #expect(abs(numeric - Double(gradient[i])) < 2e-3, "logit \(i): numeric \(numeric), analytic \(gradient[i])")
        }
        // Matching the teacher exactly leaves nothing to learn.
        var zero = [Float](repeating: 1, count: batch * classes)
        _ = teacher.withUnsafeBufferPointer { z in
            Distillation.softCrossEntropy(logits: z.baseAddress!, targets: soft, rows: rows, batch: batch, classes: classes, temperature: temperature, gradient: &zero)
        }
        #expect(zero.allSatisfy { abs($0) < 1e-6 })
    }

    @Test func aSmallStudentLearnsFromTheTeacherWithoutLabels() throws {
        let teacherNet = try Network(.mnist2NN)
        let train = try Self.mnist.subset(Array(0..<4000)), transfer = try Self.mnist.subset(Array(4000..<7000))
        let test = try Self.mnist.subset(Array(7000..<10_000))
        var teacher = teacherNet.initialParameters(seed: 1)
        var generator = SeededGenerator(seed: 2)
        _ = LocalTrainer(network: teacherNet, batchCapacity: 10).train(
            parameters: &teacher, anchor: nil, data: train.all, epochs: 3, batchSize: 10, sgd: SGD(learningRate: 0.1), generator: &generator)
        let evaluate = { (network: Network, parameters: [Float]) in Evaluator(network: network, threads: 1).evaluate(parameters, on: test.all).accuracy }
        let teacherAccuracy = evaluate(teacherNet, teacher)

        let student = try Network(ModelSpec(input: .vector(784), classes: 10, layers: [.dense(outputs: 16), .relu, .dense(outputs: 10)]))
        let settings = Distillation(temperature: 4, epochs: 8, batchSize: 32, learningRate: 0.05)
        let soft = Distillation.softTargets(teacher: teacherNet, parameters: teacher, data: transfer.all, temperature: 4)
        let initial = student.initialParameters(seed: 3)
        let taught = settings.train(student: student, initial: initial, transfer: transfer.all, targets: soft)
        let studentAccuracy = evaluate(student, taught)
        #expect(studentAccuracy > 0.8 && studentAccuracy > teacherAccuracy - 0.05,
                "student \(studentAccuracy), teacher \(teacherAccuracy), untrained \(evaluate(student, initial))")

        // The labels are never read: scrambled labels teach the same student, bit for bit.
        let scrambled = try Dataset(name: "scrambled", sampleShape: transfer.sampleShape, classes: 10, features: transfer.features,
                                    labels: transfer.labels.map { ($0 + 3) % 10 })
        let again = settings.train(student: student, initial: initial, transfer: scrambled.all, targets: soft)
        #expect(again.elementsEqual(taught), "labels changed the student")
    }
}
