/// 2×2 max pooling with stride 2 (odd trailing rows or columns are dropped).
/// The forward pass records which input won each window; backward routes ∂y there.
public struct MaxPool2D: Layer {
    public let inputShape: TensorShape

    public init(shape: TensorShape) {
        precondition(shape.height >= 2 && shape.width >= 2, "MaxPool2D needs at least 2x2 input")
        inputShape = shape
    }

    public var outputShape: TensorShape {
        TensorShape(height: inputShape.height / 2, width: inputShape.width / 2, channels: inputShape.channels)
    }
    public var parameterShapes: [(name: String, shape: [Int])] { [] }
    public var description: String { "MaxPool2x2" }

    public func scratchBytes(batch: Int) -> Int {
        aligned64(batch * outputShape.count * MemoryLayout<Int32>.stride)
    }

    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {}

    public func forward(_ f: ForwardBuffers) {
        let winners = f.scratch.assumingMemoryBound(to: Int32.self)
        let perImage = outputShape.count
        forEachBatchChunk(f.batch, threads: f.batch * inputShape.count >= 1 << 16 ? f.threads : 1) { images in
            for b in images {
                pool(f.input, image: b, into: f.output + b * perImage, winners: winners + b * perImage)
            }
        }
    }

    /// Pools image `b`, recording for each output the index (in the whole batch) of the input
    /// that won its window: the first of the largest, in the order (0,0), (0,1), (1,0), (1,1).
    private func pool(_ input: UnsafePointer<Float>, image b: Int, into output: UnsafeMutablePointer<Float>, winners: UnsafeMutablePointer<Int32>) {
        let (h, w, c) = (inputShape.height, inputShape.width, inputShape.channels)
        let (oh, ow) = (h / 2, w / 2)
        let base = b * h * w * c
        var o = 0
        for y in 0..<oh {
            for x in 0..<ow {
                let i00 = base + ((2 * y) * w + 2 * x) * c
                let i01 = i00 + c
                let i10 = i00 + w * c
                let i11 = i10 + c
                var ch = 0
                // Sixteen channels at a time: the same comparisons, lane by lane.
                let lane = SIMD16<Int32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
                while ch + 16 <= c {
                    let raw = UnsafeRawPointer(input)
                    var value = raw.loadUnaligned(fromByteOffset: (i00 + ch) * 4, as: SIMD16<Float>.self)
                    var best = SIMD16<Int32>(repeating: Int32(truncatingIfNeeded: i00 + ch)) &+ lane
                    @inline(__always) func challenge(_ corner: Int) {
                        let candidate = raw.loadUnaligned(fromByteOffset: (corner + ch) * 4, as: SIMD16<Float>.self)
                        let wins = candidate .> value
                        value.replace(with: candidate, where: wins)
                        best.replace(with: SIMD16<Int32>(repeating: Int32(truncatingIfNeeded: corner + ch)) &+ lane, where: wins)
                    }
                    challenge(i01)
                    challenge(i10)
                    challenge(i11)
                    UnsafeMutableRawPointer(output + o).storeBytes(of: value, as: SIMD16<Float>.self)
                    UnsafeMutableRawPointer(winners + o).storeBytes(of: best, as: SIMD16<Int32>.self)
                    o += 16
                    ch += 16
                }
                while ch < c {
                    var best = i00 + ch
                    var value = input[best]
                    if input[i01 + ch] > value { best = i01 + ch; value = input[best] }
                    if input[i10 + ch] > value { best = i10 + ch; value = input[best] }
                    if input[i11 + ch] > value { best = i11 + ch; value = input[best] }
                    output[o] = value
                    winners[o] = Int32(truncatingIfNeeded: best)
                    o += 1
                    ch += 1
                }
            }
        }
    }

    public func backward(_ g: BackwardBuffers) {
        guard let dx = g.inputGradient else { return }
        let winners = g.forward.scratch.assumingMemoryBound(to: Int32.self)
        let (perImage, perInput) = (outputShape.count, inputShape.count)
        forEachBatchChunk(g.forward.batch, threads: g.forward.batch * perInput >= 1 << 16 ? g.forward.threads : 1) { images in
            // Each image's windows route only into that image's inputs.
            (dx + images.lowerBound * perInput).update(repeating: 0, count: images.count * perInput)
            for o in (images.lowerBound * perImage)..<(images.upperBound * perImage) {
                dx[Int(winners[o])] += g.outputGradient[o]
            }
        }
    }
}
