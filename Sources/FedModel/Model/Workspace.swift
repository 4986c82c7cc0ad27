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
    /// Labels of the current batch.
    public let labels: UnsafeMutablePointer<UInt8>
    /// ∂(mean loss)/∂parameters after ``lossAndGradient(parameters:batch:)``, laid out like the parameters.
    public let parameterGradient: UnsafeMutablePointer<Float>

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
        let labelBytes = aligned64(capacity)
        let parameterBytes = aligned64(network.parameterCount * floats)
        let total = sizes.reduce(0, +) + 2 * gradientBytes + scratchSizes.reduce(0, +) + labelBytes + parameterBytes
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
        labels = cursor.bindMemory(to: UInt8.self, capacity: capacity)
        cursor += labelBytes
        parameterGradient = cursor.bindMemory(to: Float.self, capacity: network.parameterCount)
    }

    deinit { memory.deallocate() }

    /// Where to write the input batch (`batch × inputShape.count` floats).
    public var input: UnsafeMutablePointer<Float> { activations[0] }

    /// Runs the layers over the batch in ``input``; returns the logits (`batch × classes`).
    @discardableResult
    public func forward(parameters: UnsafePointer<Float>, batch: Int) -> UnsafePointer<Float> {
        precondition(batch > 0 && batch <= capacity, "batch \(batch) outside 1...\(capacity)")
        for (i, layer) in network.layers.enumerated() {
            layer.forward(buffers(layer: i, parameters: parameters, batch: batch))
        }
        return UnsafePointer(activations[network.layers.count])
    }

    private func buffers(layer i: Int, parameters: UnsafePointer<Float>, batch: Int) -> ForwardBuffers {
        ForwardBuffers(
            batch: batch, parameters: parameters + network.parameterOffsets[i],
            input: UnsafePointer(activations[i]), output: activations[i + 1], scratch: scratch[i], threads: threads)
    }

    /// Loss and accuracy of the batch in ``input``/``labels`` without gradients.
    public func loss(parameters: UnsafePointer<Float>, batch: Int) -> (lossSum: Double, correct: Int) {
        let logits = forward(parameters: parameters, batch: batch)
        return SoftmaxCrossEntropy.evaluate(
            logits: logits, labels: labels, batch: batch, classes: network.classes, gradient: nil)
    }

    /// Forward and backward pass: fills ``parameterGradient`` with ∂(mean loss)/∂parameters.
    /// `afterLayer` is called with each layer's index as soon as its parameter gradient is
    /// final and its parameters are no longer read, which lets an optimiser update them
    /// while the gradient is still in cache.
    public func lossAndGradient(
        parameters: UnsafePointer<Float>, batch: Int,
        afterLayer: (Int) -> Void = { _ in }
    ) -> (lossSum: Double, correct: Int) {
        let logits = forward(parameters: parameters, batch: batch)
        var upstream = gradientA
        var downstream = gradientB
        let result = SoftmaxCrossEntropy.evaluate(
            logits: logits, labels: labels, batch: batch, classes: network.classes, gradient: upstream)
        for i in network.layers.indices.reversed() {
            let layer = network.layers[i]
            let offset = network.parameterOffsets[i]
            layer.backward(BackwardBuffers(
                forward: buffers(layer: i, parameters: parameters, batch: batch),
                outputGradient: UnsafePointer(upstream),
                inputGradient: i == 0 ? nil : downstream,
                parameterGradient: parameterGradient + offset))
            afterLayer(i)
            swap(&upstream, &downstream)
        }
        return result
    }

    /// The parameter range of layer `i` in the flat vector.
    public func parameterRange(ofLayer i: Int) -> Range<Int> {
        let start = network.parameterOffsets[i]
        return start..<(start + network.layers[i].parameterCount)
    }
}
