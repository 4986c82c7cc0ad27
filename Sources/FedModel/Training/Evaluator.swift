import Dispatch

/// Test-set scores of one model: the mean loss, and the loss's metrics.
public struct Evaluation: Sendable, Hashable, Codable {
    public var loss: Double
    /// Accuracy (softmax) or label accuracy (bce); 0 for mse.
    public var accuracy: Double
    /// Root mean squared and mean absolute error over every target value (mse); 0 otherwise.
    public var rmse: Double
    public var mae: Double
    /// The headline metric's name and value (``Loss/metric``).
    public var metric: Metric
    public var examples: Int
    /// Accuracy of each class (softmax; nil for a class without test examples) or of each label
    /// (bce); empty for mse.
    public var perClassAccuracy: [Double?]

    /// The value of the headline metric.
    public var value: Double { metric == .rmse ? rmse : accuracy }

    public init(loss: Double, accuracy: Double, rmse: Double = 0, mae: Double = 0, metric: Metric = .accuracy, examples: Int, perClassAccuracy: [Double?] = []) {
        self.loss = loss
        self.accuracy = accuracy
        self.rmse = rmse
        self.mae = mae
        self.metric = metric
        self.examples = examples
        self.perClassAccuracy = perClassAccuracy
    }
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
        precondition(network.accepts(data.dataset) == nil, "data does not match the model")
        let threads = workspaces.count
        let batches = (data.count + batchSize - 1) / batchSize
        let loss = network.spec.loss
        let classes = network.classes
        var partial = [LossTally](repeating: LossTally(), count: threads)
        // Examples and correct ones per class (softmax) or per label (bce), per thread.
        let countsWidth = loss == .meanSquaredError ? 0 : 2 * classes
        var perClass = [Int](repeating: 0, count: threads * countsWidth)
        partial.withUnsafeMutableBufferPointer { partial in
            let results = partial
            perClass.withUnsafeMutableBufferPointer { perClass in
                let counts = perClass
                parameters.withUnsafeBufferPointer { w in
                    data.indices.withUnsafeBufferPointer { indices in
                        parallelFor(threads) { t in
                            let workspace = workspaces[t]
                            var tally = LossTally()
                            var b = t
                            while b < batches {
                                let start = b * batchSize
                                let count = min(batchSize, data.count - start)
                                data.dataset.gather(UnsafeBufferPointer(rebasing: indices[start..<(start + count)]), into: workspace)
                                tally += workspace.loss(
                                    parameters: w.baseAddress!, batch: count,
                                    perClass: countsWidth > 0 ? counts.baseAddress! + t * countsWidth : nil)
                                b += threads
                            }
                            results[t] = tally
                        }
                    }
                }
            }
        }
        var total = LossTally()
        for tally in partial { total += tally }
        let n = Double(max(1, data.count))
        let values = n * Double(classes)
        var perClassAccuracy: [Double?] = []
        if countsWidth > 0 {
            perClassAccuracy = (0..<classes).map { c in
                var seen = 0, correct = 0
                for t in 0..<threads {
                    seen += perClass[t * countsWidth + 2 * c]
                    correct += perClass[t * countsWidth + 2 * c + 1]
                }
                return seen > 0 ? Double(correct) / Double(seen) : nil
            }
        }
        return Evaluation(
            loss: total.lossSum / n, accuracy: total.correct / n,
            rmse: loss == .meanSquaredError ? (total.squaredError / values).squareRoot() : 0,
            mae: loss == .meanSquaredError ? total.absoluteError / values : 0,
            metric: loss.metric, examples: data.count, perClassAccuracy: perClassAccuracy)
    }
}
