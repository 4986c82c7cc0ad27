import Foundation

/// Knowledge distillation (Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a
/// Neural Network"): a small student learns to match a trained teacher's softened outputs on
/// data the server holds, with no labels needed.
///
/// With temperature T, the teacher's soft targets are p = softmax(z_teacher / T) and the
/// student's q = softmax(z_student / T). The loss per example is the cross-entropy
/// −Σⱼ pⱼ log qⱼ, scaled by T² so that its gradient keeps the size it has at T = 1:
///
///     ∂(T² · CE)/∂z_student = T · (q − p)
///
/// (the mean over the batch is taken, as for every other loss). The student trains with
/// minibatch SGD with momentum, on shuffled passes over the transfer set.
public struct Distillation: Sendable, Hashable {
    public var temperature: Float
    public var epochs: Int
    public var batchSize: Int
    public var learningRate: Float
    public var momentum: Float
    public var seed: UInt64

    public init(temperature: Float = 4, epochs: Int = 20, batchSize: Int = 64, learningRate: Float = 0.05, momentum: Float = 0.9, seed: UInt64 = 1) {
        self.temperature = temperature
        self.epochs = epochs
        self.batchSize = batchSize
        self.learningRate = learningRate
        self.momentum = momentum
        self.seed = seed
    }

    /// Checks the values; the message names the bad one.
    public func validate() throws {
        guard temperature > 0, temperature.isFinite, temperature <= 100 else { throw ModelError("temperature must be in (0, 100], got \(temperature)") }
        guard epochs >= 1, epochs <= 10_000 else { throw ModelError("distillation epochs must be in 1...10000, got \(epochs)") }
        guard batchSize >= 1, batchSize <= 4096 else { throw ModelError("distillation batch size must be in 1...4096, got \(batchSize)") }
        guard learningRate > 0, learningRate.isFinite else { throw ModelError("distillation learning rate must be positive, got \(learningRate)") }
        guard momentum >= 0, momentum < 1 else { throw ModelError("distillation momentum must be in [0, 1), got \(momentum)") }
    }

    /// softmax(teacher(x) / T) for every example of `data`, one row of `teacher.classes` per
    /// example, in the slice's order.
    public static func softTargets(teacher: Network, parameters: [Float], data: DatasetSlice, temperature: Float, batchSize: Int = 256) -> [Float] {
        precondition(teacher.spec.loss == .softmaxCrossEntropy, "distillation needs a softmax teacher")
        let classes = teacher.classes
        var targets = [Float](repeating: 0, count: data.count * classes)
        let workspace = Workspace(network: teacher, capacity: batchSize)
        parameters.withUnsafeBufferPointer { w in
            forEachBatch(of: data, workspace: workspace, parameters: w.baseAddress!) { start, logits, batch in
                for b in 0..<batch {
                    softmax(logits + b * classes, count: classes, temperature: temperature, into: &targets, at: (start + b) * classes)
                }
            }
        }
        return targets
    }

    /// Adds `network(x)`'s outputs (logits) for every example of `data` to `sum` (one row of
    /// `network.classes` per example, in the slice's order), with `workspace`'s batches.
    public static func addLogits(of parameters: UnsafePointer<Float>, on data: DatasetSlice, workspace: Workspace, into sum: inout [Float]) {
        let classes = workspace.network.classes
        precondition(sum.count == data.count * classes, "the logit sum does not match the data and the network's outputs")
        sum.withUnsafeMutableBufferPointer { out in
            forEachBatch(of: data, workspace: workspace, parameters: parameters) { start, logits, batch in
                let row = out.baseAddress! + start * classes
                for i in 0..<(batch * classes) { row[i] += logits[i] }
            }
        }
    }

    /// Runs the forward pass over `data` in batches of the workspace's capacity; `body` gets the
    /// batch's first position in the slice, its outputs and its size.
    private static func forEachBatch(
        of data: DatasetSlice, workspace: Workspace, parameters: UnsafePointer<Float>,
        _ body: (_ start: Int, _ logits: UnsafePointer<Float>, _ batch: Int) -> Void
    ) {
        data.indices.withUnsafeBufferPointer { indices in
            var start = 0
            while start < data.count {
                let batch = min(workspace.capacity, data.count - start)
                data.dataset.gather(UnsafeBufferPointer(rebasing: indices[start..<(start + batch)]), into: workspace)
                body(start, workspace.forward(parameters: parameters, batch: batch), batch)
                start += batch
            }
        }
    }

    /// Trains `student` from `initial` on `transfer` against `targets` (``softTargets``, in the
    /// slice's order). `progress` gets each epoch's mean loss. Returns the student's parameters.
    public func train(student: Network, initial: [Float], transfer: DatasetSlice, targets: [Float],
                      progress: ((_ epoch: Int, _ meanLoss: Double) -> Void)? = nil) -> [Float] {
        precondition(student.spec.loss == .softmaxCrossEntropy, "the student must be a softmax classifier")
        precondition(targets.count == transfer.count * student.classes, "soft targets do not match the transfer set and the student's outputs")
        let classes = student.classes
        let workspace = Workspace(network: student, capacity: batchSize)
        var parameters = initial
        var velocity = [Float](repeating: 0, count: parameters.count)
        // Positions in the transfer slice, shuffled each epoch; the batch's rows of `targets`
        // are looked up through them.
        var order = (0..<Int32(transfer.count)).map { $0 }
        var batchRows = [Int32](repeating: 0, count: batchSize)
        var batchIndices = [Int32](repeating: 0, count: batchSize)
        var generator = SeededGenerator(seed: seed, stream: 0xD157)
        let sgd = SGD(learningRate: learningRate, momentum: momentum)
        let temperature = self.temperature
        let layerStarts = student.parameterOffsets
        targets.withUnsafeBufferPointer { soft in
            batchRows.withUnsafeMutableBufferPointer { rows in
                let (softBase, rowBase) = (soft.baseAddress!, UnsafePointer(rows.baseAddress!))
                workspace.lossOverride = { logits, batch, gradient in
                    Self.softCrossEntropy(logits: logits, targets: softBase, rows: rowBase,
                                          batch: batch, classes: classes, temperature: temperature, gradient: gradient)
                }
                defer { workspace.lossOverride = nil }
                for epoch in 0..<epochs {
                    order.withUnsafeMutableBufferPointer { generator.shuffle($0) }
                    var lossSum = 0.0, seen = 0, start = 0
                    while start < order.count {
                        let batch = min(batchSize, order.count - start)
                        for b in 0..<batch {
                            rows[b] = order[start + b]
                            batchIndices[b] = transfer.indices[Int(order[start + b])]
                        }
                        batchIndices.withUnsafeBufferPointer { transfer.dataset.gather(UnsafeBufferPointer(rebasing: $0[0..<batch]), into: workspace) }
                        let tally = parameters.withUnsafeMutableBufferPointer { w in
                            velocity.withUnsafeMutableBufferPointer { v in
                                workspace.trainingStep(parameters: w.baseAddress!, batch: batch) { layer, offset, gradient, count in
                                    let first = layerStarts[layer] + offset
                                    sgd.step(parameters: w.baseAddress! + first, gradient: gradient, anchor: nil,
                                             velocity: v.baseAddress! + first, count: count)
                                }
                            }
                        }
                        lossSum += tally.lossSum
                        seen += batch
                        start += batch
                    }
                    progress?(epoch + 1, lossSum / Double(max(1, seen)))
                }
            }
        }
        return parameters
    }

    /// T²-scaled cross-entropy of softmax(z/T) against the rows `rows[b]` of `targets`;
    /// `gradient` gets ∂(mean loss)/∂z = T·(q − p)/batch. The tally's loss is the plain
    /// cross-entropy (unscaled) summed over the batch.
    static func softCrossEntropy(
        logits: UnsafePointer<Float>, targets: UnsafePointer<Float>, rows: UnsafePointer<Int32>,
        batch: Int, classes: Int, temperature: Float, gradient: UnsafeMutablePointer<Float>?
    ) -> LossTally {
        var tally = LossTally()
        let inverseT = 1 / temperature
        let scale = temperature / Float(batch)
        for b in 0..<batch {
            let z = logits + b * classes
            let p = targets + Int(rows[b]) * classes
            var maxValue = z[0] * inverseT
            for j in 1..<classes { maxValue = max(maxValue, z[j] * inverseT) }
            var sum: Float = 0
            for j in 0..<classes { sum += expf(z[j] * inverseT - maxValue) }
            let logSum = logf(sum)
            var loss: Float = 0
            for j in 0..<classes {
                let logQ = z[j] * inverseT - maxValue - logSum
                loss -= p[j] * logQ
                gradient?[b * classes + j] = (expf(logQ) - p[j]) * scale
            }
            tally.lossSum += Double(loss)
        }
        return tally
    }

    static func softmax(_ z: UnsafePointer<Float>, count: Int, temperature: Float, into out: inout [Float], at offset: Int) {
        var maxValue = z[0] / temperature
        for j in 1..<count { maxValue = max(maxValue, z[j] / temperature) }
        var sum: Float = 0
        for j in 0..<count {
            let e = expf(z[j] / temperature - maxValue)
            out[offset + j] = e
            sum += e
        }
        for j in 0..<count { out[offset + j] /= sum }
    }
}
