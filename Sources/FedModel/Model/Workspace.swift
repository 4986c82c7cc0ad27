import Dispatch

/// The buffers one thread needs to run forward and backward passes of a ``Network`` on
/// batches of up to ``capacity`` examples: activations of every layer, two gradient buffers
/// used in turn, per-layer scratch, labels and the parameter gradient. One allocation,
/// made once; nothing is allocated per batch.
public final class Workspace {
    public let network: Network
    public let capacity: Int
    /// Cores each pass may use. 1 when many workspaces train side by side (one per core);
    /// more when a single model should use the whole machine.
    public let threads: Int
    private let memory: UnsafeMutableRawPointer
    /// activations[0] is the input batch; activations[i + 1] is layer i's output.
    private let activations: [UnsafeMutablePointer<Float>]
    private let gradientA: UnsafeMutablePointer<Float>
    private let gradientB: UnsafeMutablePointer<Float>
    private let scratch: [UnsafeMutableRawPointer]
    /// Class labels of the current batch (softmax loss).
    public let labels: UnsafeMutablePointer<Int32>
    /// Target values of the current batch, `batch × outputs` (mse and bce losses).
    public let targets: UnsafeMutablePointer<Float>
    /// ∂(mean loss)/∂parameters after ``lossAndGradient(parameters:batch:)``, laid out like the parameters.
    public let parameterGradient: UnsafeMutablePointer<Float>
    /// When set, every layer's forward and backward pass, the loss, and the optimiser steps
    /// run between layers are timed into it (`fedbench --profile`). Nil costs one branch per layer.
    public var profile: StageProfile?
    /// When set, training steps score the outputs with this instead of the network's loss:
    /// `(outputs, batch, gradient)` returns the batch's tally and writes ∂(mean loss)/∂outputs
    /// (knowledge distillation's soft targets).
    public var lossOverride: ((_ outputs: UnsafePointer<Float>, _ batch: Int, _ gradient: UnsafeMutablePointer<Float>) -> LossTally)?

    public init(network: Network, capacity: Int, threads: Int = 1) {
        precondition(capacity > 0, "workspace capacity must be positive")
        self.network = network
        self.capacity = capacity
        self.threads = max(1, threads)
        let floats = MemoryLayout<Float>.stride
        var sizes: [Int] = [aligned64(capacity * network.inputShape.count * floats)]
        var largest = network.inputShape.count
        for layer in network.layers {
            sizes.append(aligned64(capacity * layer.outputShape.count * floats))
            largest = max(largest, layer.outputShape.count)
        }
        let gradientBytes = aligned64(capacity * largest * floats)
        let scratchSizes = network.layers.map { aligned64($0.scratchBytes(batch: capacity)) }
        let labelBytes = aligned64(capacity * MemoryLayout<Int32>.stride)
        let targetBytes = aligned64(network.spec.loss.usesClassLabels ? floats : capacity * network.classes * floats)
        let parameterBytes = aligned64(network.parameterCount * floats)
        let total = sizes.reduce(0, +) + 2 * gradientBytes + scratchSizes.reduce(0, +) + labelBytes + targetBytes + parameterBytes
        memory = UnsafeMutableRawPointer.allocate(byteCount: max(total, 64), alignment: 64)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: total)
        var cursor = memory
        var activations: [UnsafeMutablePointer<Float>] = []
        for size in sizes {
            activations.append(cursor.bindMemory(to: Float.self, capacity: size / floats))
            cursor += size
        }
        self.activations = activations
        gradientA = cursor.bindMemory(to: Float.self, capacity: gradientBytes / floats)
        cursor += gradientBytes
        gradientB = cursor.bindMemory(to: Float.self, capacity: gradientBytes / floats)
        cursor += gradientBytes
        var scratch: [UnsafeMutableRawPointer] = []
        for size in scratchSizes {
            scratch.append(cursor)
            cursor += size
        }
        self.scratch = scratch
        labels = cursor.bindMemory(to: Int32.self, capacity: capacity)
        cursor += labelBytes
        targets = cursor.bindMemory(to: Float.self, capacity: targetBytes / floats)
        cursor += targetBytes
        parameterGradient = cursor.bindMemory(to: Float.self, capacity: network.parameterCount)
    }

    deinit { memory.deallocate() }

    /// Where to write the input batch (`batch × inputShape.count` floats).
    public var input: UnsafeMutablePointer<Float> { activations[0] }

    /// The seed of the next training step's random choices (dropout masks); the trainer sets
    /// it before each step from its seeded generator.
    public var stepSeed: UInt64 = 0

    /// Runs the layers over the batch in ``input``; returns the outputs (`batch × classes`).
    /// `training` turns on what only training does (dropout).
    @discardableResult
    public func forward(parameters: UnsafePointer<Float>, batch: Int, training: Bool = false) -> UnsafePointer<Float> {
        precondition(batch > 0 && batch <= capacity, "batch \(batch) outside 1...\(capacity)")
        for (i, layer) in network.layers.enumerated() {
            if let profile {
                let start = DispatchTime.now().uptimeNanoseconds
                layer.forward(buffers(layer: i, parameters: parameters, batch: batch, training: training))
                profile.forward[i] += DispatchTime.now().uptimeNanoseconds - start
            } else {
                layer.forward(buffers(layer: i, parameters: parameters, batch: batch, training: training))
            }
        }
        return UnsafePointer(activations[network.layers.count])
    }

    private func buffers(layer i: Int, parameters: UnsafePointer<Float>, batch: Int, training: Bool) -> ForwardBuffers {
        ForwardBuffers(
            batch: batch, parameters: parameters + network.parameterOffsets[i],
            input: UnsafePointer(activations[i]), output: activations[i + 1], scratch: scratch[i], threads: threads,
            training: training, seed: stepSeed &+ UInt64(i) &* 0x9E37_79B9_7F4A_7C15)
    }

    /// The loss's scores of the batch in ``input`` against ``labels`` or ``targets``, without
    /// gradients. `perClass`: see ``Loss/evaluate(outputs:labels:values:batch:width:gradient:perClass:)``.
    public func loss(parameters: UnsafePointer<Float>, batch: Int, perClass: UnsafeMutablePointer<Int>? = nil) -> LossTally {
        let outputs = forward(parameters: parameters, batch: batch)
        return network.spec.loss.evaluate(
            outputs: outputs, labels: labels, values: targets, batch: batch, width: network.classes, gradient: nil, perClass: perClass)
    }

    /// Forward and backward pass: fills ``parameterGradient`` with ∂(mean loss)/∂parameters.
    public func lossAndGradient(parameters: UnsafePointer<Float>, batch: Int) -> LossTally {
        pass(parameters: parameters, batch: batch, update: nil)
    }

    /// One training step: forward and backward pass, with the optimiser applied to each layer's
    /// parameters by `update(layer, offset, gradient, count)` (offset relative to the layer's
    /// first parameter) as soon as their gradient is final and they are no longer read: after
    /// the layer's backward pass, or piece by piece inside it for layers that fuse the step
    /// (``Layer/fusesUpdate``). Calls for disjoint ranges may come from several threads at once.
    /// ``parameterGradient`` is left undefined.
    public func trainingStep(
        parameters: UnsafePointer<Float>, batch: Int,
        update: (_ layer: Int, _ offset: Int, _ gradient: UnsafePointer<Float>, _ count: Int) -> Void
    ) -> LossTally {
        withoutActuallyEscaping(update) { pass(parameters: parameters, batch: batch, update: $0) }
    }

    private func pass(
        parameters: UnsafePointer<Float>, batch: Int,
        update: ((Int, Int, UnsafePointer<Float>, Int) -> Void)?
    ) -> LossTally {
        let logits = forward(parameters: parameters, batch: batch, training: true)
        var upstream = gradientA
        var downstream = gradientB
        var clock = profile == nil ? 0 : DispatchTime.now().uptimeNanoseconds
        /// Adds the time since the last call to `stage` (when profiling).
        func lap(_ stage: ReferenceWritableKeyPath<StageProfile, [UInt64]>, _ i: Int) {
            guard let profile else { return }
            let now = DispatchTime.now().uptimeNanoseconds
            profile[keyPath: stage][i] += now - clock
            clock = now
        }
        let result = lossOverride?(logits, batch, upstream) ?? network.spec.loss.evaluate(
            outputs: logits, labels: labels, values: targets, batch: batch, width: network.classes, gradient: upstream)
        lap(\.loss, 0)
        for i in network.layers.indices.reversed() {
            let layer = network.layers[i]
            let offset = network.parameterOffsets[i]
            let buffers = BackwardBuffers(
                forward: buffers(layer: i, parameters: parameters, batch: batch, training: true),
                outputGradient: UnsafePointer(upstream),
                inputGradient: i == 0 ? nil : downstream,
                parameterGradient: parameterGradient + offset)
            if let update, layer.fusesUpdate {
                layer.backward(buffers) { update(i, $0, $1, $2) }
                lap(\.backward, i)
            } else {
                layer.backward(buffers)
                lap(\.backward, i)
                if let update, layer.parameterCount > 0 {
                    update(i, 0, buffers.parameterGradient, layer.parameterCount)
                    lap(\.update, i)
                }
            }
            swap(&upstream, &downstream)
        }
        profile?.batches += 1
        profile?.examples += batch
        return result
    }

    /// The parameter range of layer `i` in the flat vector.
    public func parameterRange(ofLayer i: Int) -> Range<Int> {
        let start = network.parameterOffsets[i]
        return start..<(start + network.layers[i].parameterCount)
    }
}

/// Nanoseconds spent per stage of training, summed over batches (see ``Workspace/profile``).
public final class StageProfile {
    public var forward: [UInt64]
    public var backward: [UInt64]
    /// The optimiser's steps run right after each layer's backward pass (inside it for layers
    /// that fuse the step, ``Layer/fusesUpdate``, whose steps count as backward time).
    public var update: [UInt64]
    /// The loss and its gradient (one entry).
    public var loss: [UInt64] = [0]
    public var batches = 0
    public var examples = 0

    public init(layers: Int) {
        forward = Array(repeating: 0, count: layers)
        backward = Array(repeating: 0, count: layers)
        update = Array(repeating: 0, count: layers)
    }
}
