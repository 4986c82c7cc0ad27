/// Ensemble distillation on the server (FedDF: Lin, Kong, Stich and Jaggi 2020, "Ensemble
/// Distillation for Robust Model Fusion in Federated Learning").
///
/// A round's clients are teachers: each client's model (the global model plus its update) is
/// run on examples the server holds, unlabelled, and its outputs (logits) are added up as the
/// update arrives, so no client model is kept. At the close, FedAvg's model is the student's
/// start; it then trains on the same examples against softmax(mean logits / T), the ensemble's
/// soft targets (``Distillation``'s loss), and the result is the new global model.
///
/// The paper distils with Adam and early stopping on a validation split; here the student
/// takes `settings.epochs` passes of SGD with momentum, so a round's cost is fixed. Only
/// classifiers (softmax) can be distilled.
public final class EnsembleDistillation {
    public let network: Network
    /// The server's examples (labels unused).
    public let transfer: DatasetSlice
    public let settings: Distillation
    private let workspace: Workspace
    private var teacher: [Float]

    /// - Parameter threads: cores each teacher's forward pass may use.
    public init(network: Network, transfer: DatasetSlice, settings: Distillation, threads: Int = 1) throws {
        guard network.spec.loss == .softmaxCrossEntropy else {
            throw ModelError("ensemble distillation teaches classifiers (softmax); this task's loss is \(network.spec.loss)")
        }
        try settings.validate()
        guard transfer.count > 0 else { throw ModelError("ensemble distillation needs server examples, it has none") }
        if let problem = network.accepts(transfer.dataset) { throw ModelError("the server's examples: \(problem)") }
        self.network = network
        self.transfer = transfer
        self.settings = settings
        workspace = Workspace(network: network, capacity: 256, threads: max(1, threads))
        teacher = [Float](repeating: 0, count: network.parameterCount)
    }

    /// A round's running sum of its teachers' logits, one row per server example.
    public struct Teachers: Sendable {
        public internal(set) var logitSum: [Float]
        public internal(set) var count = 0
    }

    /// An empty sum for a new round.
    public func startRound() -> Teachers {
        Teachers(logitSum: [Float](repeating: 0, count: transfer.count * network.classes))
    }

    /// Adds the logits of the client model `global + delta` (the delta counted on `ranges`
    /// only; the model elsewhere is the global one) to `teachers`.
    public func addTeacher(global: [Float], delta: [Float], ranges: [Range<Int>], to teachers: inout Teachers) {
        precondition(global.count == network.parameterCount && delta.count == global.count, "a teacher must have the network's size")
        teacher.withUnsafeMutableBufferPointer { t in
            global.withUnsafeBufferPointer { g in
                delta.withUnsafeBufferPointer { d in
                    _ = t.update(fromContentsOf: g)
                    for range in ranges { for i in range { t[i] += d[i] } }
                }
            }
        }
        teacher.withUnsafeBufferPointer {
            Distillation.addLogits(of: $0.baseAddress!, on: transfer, workspace: workspace, into: &teachers.logitSum)
        }
        teachers.count += 1
    }

    /// The student trained from `initial` against the ensemble's soft targets, and its last
    /// epoch's mean soft loss; `initial` unchanged if there are no teachers. The shuffle is
    /// drawn from `seed` and `round`.
    public func fuse(initial: [Float], teachers: Teachers, seed: UInt64, round: Int) -> (model: [Float], loss: Double?) {
        guard teachers.count > 0 else { return (initial, nil) }
        let classes = network.classes
        let scale = 1 / Float(teachers.count)
        var targets = [Float](repeating: 0, count: teachers.logitSum.count)
        var mean = [Float](repeating: 0, count: classes)
        for row in 0..<transfer.count {
            for j in 0..<classes { mean[j] = teachers.logitSum[row * classes + j] * scale }
            mean.withUnsafeBufferPointer {
                Distillation.softmax($0.baseAddress!, count: classes, temperature: self.settings.temperature, into: &targets, at: row * classes)
            }
        }
        var distillation = settings
        var draw = SeededGenerator(seed: seed, stream: 0xFEDDF, UInt64(round))
        distillation.seed = draw.next()
        var loss: Double?
        let model = distillation.train(student: network, initial: initial, transfer: transfer, targets: targets) { _, epochLoss in loss = epochLoss }
        return (model, loss)
    }
}
