extension Network {
    /// Multiply-adds of one example's forward pass through the layers with weights: a dense
    /// layer in·out; a convolution outH·outW·K·K·in·out; a depthwise one outH·outW·K·K·C; a GRU
    /// steps·3H·(C + H); an adapted layer its base (the adapter's merge is once per batch).
    /// Activations, pooling, normalisation and embeddings count nothing.
    public var forwardMultiplyAdds: Int {
        zip(spec.layers, layers).reduce(0) { total, pair in total + Self.multiplyAdds(pair.0, pair.1) }
    }

    /// Training FLOPs per example, the rule `fedsim search --budget-flops` measures: 2 FLOPs per
    /// multiply-add, and the backward pass twice the forward (∂x and ∂W), so 6 × the forward
    /// multiply-adds. The MNIST CNN: 73.6 MFLOP; the 2NN: 1.19 MFLOP.
    public var trainingFlopsPerExample: Int { 6 * forwardMultiplyAdds }

    private static func multiplyAdds(_ spec: LayerSpec, _ layer: any Layer) -> Int {
        let input = layer.inputShape, output = layer.outputShape
        switch spec {
        case .dense(let outputs):
            return input.count * outputs
        case .conv(let k, let channels, _):
            return output.height * output.width * k * k * input.channels * channels
        case .depthwise(let k, _):
            return output.height * output.width * k * k * input.channels
        case .gru(let hidden):
            return input.height * input.width * 3 * hidden * (input.channels + hidden)
        case .adapted(let base, _, _):
            return multiplyAdds(base, (layer as? LowRankAdapter)?.base ?? layer)
        case .relu, .maxPool, .avgPool, .globalAvgPool, .groupNorm, .flatten, .dropout, .embedding:
            return 0
        }
    }
}
