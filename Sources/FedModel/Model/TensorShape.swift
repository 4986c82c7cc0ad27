/// The shape of one example's activations, height × width × channels, stored NHWC
/// (channels innermost). Vectors are `1 × 1 × n`.
public struct TensorShape: Hashable, Sendable, CustomStringConvertible {
    public var height: Int
    public var width: Int
    public var channels: Int

    public init(height: Int, width: Int, channels: Int) {
        self.height = height
        self.width = width
        self.channels = channels
    }

    /// A flat vector of `count` values.
    public static func vector(_ count: Int) -> TensorShape {
        TensorShape(height: 1, width: 1, channels: count)
    }

    /// Values per example.
    public var count: Int { height * width * channels }

    public var description: String {
        height == 1 && width == 1 ? "\(channels)" : "\(height)x\(width)x\(channels)"
    }
}
