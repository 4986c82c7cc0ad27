/// Softmax followed by the cross-entropy loss, fused for numerical stability:
/// loss = −log softmax(z)[label], ∂loss/∂z = softmax(z) − onehot(label).
public enum SoftmaxCrossEntropy {
    /// Loss summed over the batch and the number of correct argmax predictions. When
    /// `gradient` is given it receives ∂(mean loss)/∂logits, i.e. scaled by 1/batch.
    /// `perClass`, when given, counts examples (`[2c]`) and correct ones (`[2c + 1]`) per class.
    public static func evaluate(
        logits: UnsafePointer<Float>, labels: UnsafePointer<Int32>, batch: Int, classes: Int,
        gradient: UnsafeMutablePointer<Float>?, perClass: UnsafeMutablePointer<Int>? = nil
    ) -> LossTally {
        var lossSum = 0.0
        var correct = 0
        let scale = 1 / Float(batch)
        for b in 0..<batch {
            let z = logits + b * classes
            var maxValue = z[0]
            var argmax = 0
            for j in 1..<classes where z[j] > maxValue {
                maxValue = z[j]
                argmax = j
            }
            var sum: Float = 0
            for j in 0..<classes { sum += _expf(z[j] - maxValue) }
            let label = Int(labels[b])
            if argmax == label { correct += 1 }
            if let perClass {
                perClass[2 * label] += 1
                if argmax == label { perClass[2 * label + 1] += 1 }
            }
            let logSum = _logf(sum)
            lossSum += Double(logSum - (z[label] - maxValue))
            if let gradient {
                let g = gradient + b * classes
                let inverse = 1 / sum
                for j in 0..<classes {
                    g[j] = _expf(z[j] - maxValue) * inverse * scale
                }
                g[label] -= scale
            }
        }
        var tally = LossTally()
        tally.lossSum = lossSum
        tally.correct = Double(correct)
        return tally
    }
}
