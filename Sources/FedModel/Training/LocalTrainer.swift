/// What one local training run did.
public struct TrainingSummary: Sendable, Hashable {
    /// Mean training loss over every example seen.
    public var meanLoss: Double
    /// Examples processed (epochs × local examples).
    public var examplesSeen: Int
    public var steps: Int
}

/// Runs local SGD for one thread: a reusable workspace, momentum buffer and shuffle order,
/// so training many clients in turn allocates nothing per batch or per client.
public final class LocalTrainer {
    public let network: Network
    public let workspace: Workspace
    private var velocity: [Float]
    private var order: [Int32] = []

    /// `batchCapacity` is the largest batch this trainer will be asked to run; `threads` the
    /// cores one training step may use (see ``Workspace/threads``).
    public init(network: Network, batchCapacity: Int, threads: Int = 1) {
        self.network = network
        workspace = Workspace(network: network, capacity: batchCapacity, threads: threads)
        velocity = []
    }

    /// Trains `parameters` in place for `epochs` passes over `data` in shuffled minibatches
    /// of `batchSize` (the last batch of an epoch may be smaller). `anchor` is the global
    /// model the run started from, needed only for FedProx (`sgd.proximalMu > 0`).
    ///
    /// `frozen` lists parameter tensors (shard indices) that keep their values: their gradients
    /// flow through as usual, but the optimiser does not step them.
    ///
    /// `keep` (a pruning mask: 1 kept, 0 pruned, one per parameter) restricts training to the
    /// kept weights: every step multiplies what it updated by it, so pruned weights stay zero.
    public func train(
        parameters: inout [Float], anchor: [Float]?, data: DatasetSlice,
        epochs: Int, batchSize: Int, sgd: SGD, generator: inout SeededGenerator,
        frozen: Set<Int> = [], keep: [Float]? = nil
    ) -> TrainingSummary {
        precondition(parameters.count == network.parameterCount, "parameter vector does not match the model")
        precondition(keep == nil || keep!.count == parameters.count, "pruning mask does not match the model")
        precondition(batchSize > 0 && batchSize <= workspace.capacity, "batch size \(batchSize) outside 1...\(workspace.capacity)")
        precondition(network.accepts(data.dataset) == nil, "data does not match the model")
        if sgd.momentum > 0 {
            if velocity.count != parameters.count { velocity = [Float](repeating: 0, count: parameters.count) }
            else { velocity.withUnsafeMutableBufferPointer { $0.update(repeating: 0) } }
        }
        order = data.indices
        var lossSum = 0.0
        var seen = 0
        var steps = 0
        let workspace = self.workspace
        let layers = network.layers.indices
        // The ranges the optimiser steps after each layer's backward pass: the layer's tensors
        // that are not frozen.
        let tensors = network.layout.tensors
        let ranges: [[Range<Int>]] = layers.map { layer in
            let span = workspace.parameterRange(ofLayer: layer)
            return tensors.filter { !frozen.contains($0.index) && span.contains($0.offset) }.map(\.range)
        }
        let layerStarts = network.parameterOffsets
        let useVelocity = sgd.momentum > 0
        let drawsPerStep = network.drawsPerStep
        parameters.withUnsafeMutableBufferPointer { w in
            velocity.withUnsafeMutableBufferPointer { v in
                order.withUnsafeMutableBufferPointer { order in
                    let anchorCopy = anchor
                    keep.withUnsafeOptionalBuffer { keepBase in
                    anchorCopy.withUnsafeOptionalBuffer { anchorBase in
                        for _ in 0..<epochs {
                            generator.shuffle(order)
                            var start = 0
                            while start < order.count {
                                let batch = min(batchSize, order.count - start)
                                data.dataset.gather(UnsafeBufferPointer(rebasing: order[start..<(start + batch)]), into: workspace)
                                // Only models with dropout draw, so others keep their generator's sequence.
                                if drawsPerStep { workspace.stepSeed = generator.next() }
                                let result = workspace.trainingStep(parameters: w.baseAddress!, batch: batch) { layer, offset, gradient, count in
                                    // The piece of the layer handed over, clipped to each tensor the optimiser steps.
                                    let first = layerStarts[layer] + offset, end = first + count
                                    for range in ranges[layer] where range.lowerBound < end && first < range.upperBound {
                                        let lower = max(first, range.lowerBound), upper = min(end, range.upperBound)
                                        let threads = upper - lower >= 1 << 16 ? workspace.threads : 1
                                        forEachBatchChunk(upper - lower, threads: threads) { part in
                                            let start = lower + part.lowerBound
                                            sgd.step(
                                                parameters: w.baseAddress! + start,
                                                gradient: gradient + (start - first),
                                                anchor: anchorBase.map { $0 + start },
                                                velocity: useVelocity ? v.baseAddress! + start : nil,
                                                count: part.count)
                                            if let keepBase {
                                                let weights = w.baseAddress! + start, factors = keepBase + start
                                                for i in 0..<part.count { weights[i] *= factors[i] }
                                            }
                                        }
                                    }
                                }
                                lossSum += result.lossSum
                                seen += batch
                                steps += 1
                                start += batch
                            }
                        }
                    }
                    }
                }
            }
        }
        return TrainingSummary(meanLoss: seen > 0 ? lossSum / Double(seen) : 0, examplesSeen: seen, steps: steps)
    }
}

extension Optional where Wrapped == [Float] {
    /// Calls `body` with the array's base address, or nil.
    func withUnsafeOptionalBuffer<R>(_ body: (UnsafePointer<Float>?) throws -> R) rethrows -> R {
        switch self {
        case .some(let array): try array.withUnsafeBufferPointer { try body($0.baseAddress) }
        case .none: try body(nil)
        }
    }
}
