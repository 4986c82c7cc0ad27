import Dispatch

/// Test-set loss and accuracy of one model.
public struct Evaluation: Sendable, Hashable, Codable {
    public var loss: Double
    public var accuracy: Double
    public var examples: Int
}

/// Evaluates parameters on a dataset, splitting it across `threads` workspaces that are
/// kept between calls.
public final class Evaluator: @unchecked Sendable {
    public let network: Network
    public let batchSize: Int
    private let workspaces: [Workspace]

    public init(network: Network, threads: Int, batchSize: Int = 100) {
        self.network = network
        self.batchSize = batchSize
        workspaces = (0..<max(1, threads)).map { _ in Workspace(network: network, capacity: batchSize) }
    }

    public func evaluate(_ parameters: [Float], on data: DatasetSlice) -> Evaluation {
        precondition(parameters.count == network.parameterCount, "parameter vector does not match the model")
        let threads = workspaces.count
        let batches = (data.count + batchSize - 1) / batchSize
        var partial = [(Double, Int)](repeating: (0, 0), count: threads)
        partial.withUnsafeMutableBufferPointer { partial in
            let results = partial
            parameters.withUnsafeBufferPointer { w in
                data.indices.withUnsafeBufferPointer { indices in
                    parallelFor(threads) { t in
                        let workspace = workspaces[t]
                        var lossSum = 0.0
                        var correct = 0
                        var b = t
                        while b < batches {
                            let start = b * batchSize
                            let count = min(batchSize, data.count - start)
                            data.dataset.gather(
                                UnsafeBufferPointer(rebasing: indices[start..<(start + count)]),
                                features: workspace.input, labels: workspace.labels)
                            let r = workspace.loss(parameters: w.baseAddress!, batch: count)
                            lossSum += r.lossSum
                            correct += r.correct
                            b += threads
                        }
                        results[t] = (lossSum, correct)
                    }
                }
            }
        }
        let lossSum = partial.reduce(0) { $0 + $1.0 }
        let correct = partial.reduce(0) { $0 + $1.1 }
        let n = max(1, data.count)
        return Evaluation(loss: lossSum / Double(n), accuracy: Double(correct) / Double(n), examples: data.count)
    }
}
