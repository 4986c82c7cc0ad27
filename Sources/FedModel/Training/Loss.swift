import Foundation

/// What a model's outputs are trained against, and how they are scored.
public enum Loss: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Softmax cross-entropy against one class index per example (classification); scored by
    /// accuracy (and accuracy per class in reports).
    case softmaxCrossEntropy = "softmax"
    /// Mean squared error against a vector of float targets per example (regression); scored
    /// by the root mean squared error (and the mean absolute error).
    case meanSquaredError = "mse"
    /// Sigmoid binary cross-entropy against a multi-hot vector per example (multi-label);
    /// scored by label accuracy, the share of (example, label) decisions `output > 0` that
    /// match `target > 0.5`.
    case binaryCrossEntropy = "bce"

    /// `softmax` (also `crossentropy`, `ce`), `mse`, `bce`; nil otherwise.
    public init?(parsing text: String) {
        switch text.lowercased().trimmingCharacters(in: .whitespaces) {
        case "softmax", "crossentropy", "cross-entropy", "ce", "softmax-cross-entropy": self = .softmaxCrossEntropy
        case "mse", "mean-squared-error", "l2": self = .meanSquaredError
        case "bce", "binary-cross-entropy", "sigmoid": self = .binaryCrossEntropy
        default: return nil
        }
    }

    public var description: String { rawValue }

    /// Whether the targets are one class index per example (otherwise a float vector of the
    /// model's output size).
    public var usesClassLabels: Bool { self == .softmaxCrossEntropy }

    /// The task's headline metric: what reports lead with and `target` applies to.
    public var metric: Metric {
        switch self {
        case .softmaxCrossEntropy: .accuracy
        case .meanSquaredError: .rmse
        case .binaryCrossEntropy: .labelAccuracy
        }
    }

    /// Scores a batch of `batch × outputs` model outputs against the batch's targets (class
    /// indices in `labels` or `batch × outputs` floats in `values`, as the loss uses). When
    /// `gradient` is given it receives ∂(mean loss)/∂outputs. `perClass`, when given, counts
    /// examples (`[2c]`) and correct ones (`[2c + 1]`) of each class c (softmax), or decisions
    /// and right ones of each label c (bce).
    public func evaluate(
        outputs: UnsafePointer<Float>, labels: UnsafePointer<Int32>, values: UnsafePointer<Float>,
        batch: Int, width: Int, gradient: UnsafeMutablePointer<Float>?, perClass: UnsafeMutablePointer<Int>? = nil
    ) -> LossTally {
        switch self {
        case .softmaxCrossEntropy:
            SoftmaxCrossEntropy.evaluate(
                logits: outputs, labels: labels, batch: batch, classes: width, gradient: gradient, perClass: perClass)
        case .meanSquaredError:
            Self.meanSquaredError(outputs: outputs, targets: values, batch: batch, width: width, gradient: gradient)
        case .binaryCrossEntropy:
            Self.binaryCrossEntropy(logits: outputs, targets: values, batch: batch, width: width, gradient: gradient, perLabel: perClass)
        }
    }

    /// Loss per example: the mean over outputs of (y − t)²; ∂/∂y = 2(y − t) / (batch · width),
    /// as PyTorch's `MSELoss` (mean over every element).
    static func meanSquaredError(
        outputs: UnsafePointer<Float>, targets: UnsafePointer<Float>, batch: Int, width: Int, gradient: UnsafeMutablePointer<Float>?
    ) -> LossTally {
        var tally = LossTally()
        let scale = 2 / Float(batch * width)
        for b in 0..<batch {
            var squares: Float = 0
            var absolutes: Float = 0
            for j in 0..<width {
                let i = b * width + j
                let error = outputs[i] - targets[i]
                squares += error * error
                absolutes += abs(error)
                gradient?[i] = error * scale
            }
            tally.lossSum += Double(squares) / Double(width)
            tally.squaredError += Double(squares)
            tally.absoluteError += Double(absolutes)
        }
        return tally
    }

    /// Loss per example: the mean over labels of max(z, 0) − z·t + log(1 + e^−|z|) (the
    /// stable form of −t·log σ(z) − (1 − t)·log(1 − σ(z))); ∂/∂z = (σ(z) − t) / (batch · width),
    /// as PyTorch's `BCEWithLogitsLoss`.
    static func binaryCrossEntropy(
        logits: UnsafePointer<Float>, targets: UnsafePointer<Float>, batch: Int, width: Int, gradient: UnsafeMutablePointer<Float>?,
        perLabel: UnsafeMutablePointer<Int>? = nil
    ) -> LossTally {
        var tally = LossTally()
        let scale = 1 / Float(batch * width)
        for b in 0..<batch {
            var loss: Float = 0
            var correct = 0
            for j in 0..<width {
                let i = b * width + j
                let z = logits[i], t = targets[i]
                loss += max(z, 0) - z * t + log1pf(expf(-abs(z)))
                let right = (z > 0) == (t > 0.5)
                if right { correct += 1 }
                if let perLabel {
                    perLabel[2 * j] += 1
                    if right { perLabel[2 * j + 1] += 1 }
                }
                if let gradient {
                    let sigmoid = z >= 0 ? 1 / (1 + expf(-z)) : expf(z) / (1 + expf(z))
                    gradient[i] = (sigmoid - t) * scale
                }
            }
            tally.lossSum += Double(loss) / Double(width)
            tally.correct += Double(correct) / Double(width)
        }
        return tally
    }
}

/// The measure a task is judged by.
public enum Metric: String, Sendable, Hashable, Codable, CaseIterable, CustomStringConvertible {
    /// Share of examples whose largest output is their class.
    case accuracy
    /// Root mean squared error over every target value.
    case rmse
    /// Share of (example, label) decisions that are right.
    case labelAccuracy = "label_accuracy"

    public var description: String { rawValue }

    /// Whether a larger value is better (accuracies) or a smaller one (errors).
    public var higherIsBetter: Bool { self != .rmse }

    /// Whether `value` reaches `target` in this metric's direction.
    public func reaches(_ value: Double, _ target: Double) -> Bool {
        higherIsBetter ? value >= target : value <= target
    }

    /// The better of two values.
    public func best(_ a: Double, _ b: Double) -> Double { higherIsBetter ? max(a, b) : min(a, b) }

    /// Shown with 4 decimals; accuracies in [0, 1].
    public func format(_ value: Double) -> String { String(format: "%.4f", value) }
}

/// Sums of a loss's scores over examples; added across batches and threads.
public struct LossTally: Sendable, Hashable {
    /// Loss summed over examples (each example's loss is its mean over outputs).
    public var lossSum = 0.0
    /// Correct examples (softmax), or the sum over examples of their share of correct labels (bce).
    public var correct = 0.0
    /// Squared and absolute errors summed over every target value (mse).
    public var squaredError = 0.0
    public var absoluteError = 0.0

    public init() {}

    public static func += (a: inout LossTally, b: LossTally) {
        a.lossSum += b.lossSum
        a.correct += b.correct
        a.squaredError += b.squaredError
        a.absoluteError += b.absoluteError
    }
}
