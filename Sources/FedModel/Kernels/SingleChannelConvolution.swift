/// Direct stride-1 "same" convolution of single-channel images (the first layer of a model
/// for grayscale images), with output channels in multiples of 16.
///
/// With one input channel an im2col row holds only k² values, so the im2col product is short
/// and wide: laying out the rows costs about as much as the product, which runs at a third of
/// the kernel's peak. Here each image is copied once into a zero-padded frame, and each output
/// position sums its k² taps straight from the frame, four positions at a time sharing each
/// tap's weights. The sums have the im2col product's order (the bias, then the taps row by
/// row, padding included); ∂W sums over positions in order.
struct SingleChannelConvolution: Sendable {
    let kernel: Int
    let height: Int
    let width: Int
    let outputs: Int

    init(kernel: Int, height: Int, width: Int, outputs: Int) {
        precondition(outputs % 16 == 0, "SingleChannelConvolution needs output channels in multiples of 16")
        self.kernel = kernel
        self.height = height
        self.width = width
        self.outputs = outputs
    }

    var pad: Int { kernel / 2 }
    /// Row length of a padded frame.
    var frameWidth: Int { width + 2 * pad }
    /// Floats of one padded frame, with four floats of slack after its last row, so that five
    /// neighbouring taps can always be read (the ones past the row are never kept).
    var frameCount: Int { (height + 2 * pad) * frameWidth + 4 }

    /// Copies each image into its zero-padded frame (`batch × frameCount` floats).
    func pad(_ input: UnsafePointer<Float>, images: Range<Int>, into frames: UnsafeMutablePointer<Float>) {
        let (p, fw) = (pad, frameWidth)
        for b in images {
            let frame = frames + b * frameCount
            frame.update(repeating: 0, count: frameCount)
            for y in 0..<height {
                (frame + (y + p) * fw + p).update(from: input + (b * height + y) * width, count: width)
            }
        }
    }

    /// output[b, y, x, o] = bias[o] + Σ_{ky, kx} frame_b[y + ky, x + kx] · W[ky, kx, 0, o]: two
    /// groups of 16 outputs at a time (one for an odd last group), for four positions, eight
    /// independent sums sharing each tap's broadcast values.
    func forward(
        frames: UnsafePointer<Float>, images: Range<Int>, weights: UnsafePointer<Float>, bias: UnsafePointer<Float>,
        into output: UnsafeMutablePointer<Float>
    ) {
        let (k, fw, o) = (kernel, frameWidth, outputs)
        let groups = o / 16
        @inline(__always) func load(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
            UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
        }
        for b in images {
            let frame = frames + b * frameCount
            for y in 0..<height {
                let out = output + (b * height + y) * width * o
                @inline(__always) func store(_ x: Int, _ group: Int, _ value: SIMD16<Float>) {
                    UnsafeMutableRawPointer(out + x * o + group * 16).storeBytes(of: value, as: SIMD16<Float>.self)
                }
                var group = 0
                while group < groups {
                    let pair = group + 1 < groups
                    let second = pair ? group + 1 : group
                    let (start0, start1) = (load(bias + group * 16), load(bias + second * 16))
                    var x = 0
                    while x + 4 <= width {
                        var (a0, a1, a2, a3) = (start0, start0, start0, start0)
                        var (b0, b1, b2, b3) = (start1, start1, start1, start1)
                        for ky in 0..<k {
                            let row = frame + (y + ky) * fw + x
                            let taps = weights + ky * k * o
                            for kx in 0..<k {
                                let (w0, w1) = (load(taps + kx * o + group * 16), load(taps + kx * o + second * 16))
                                let (v0, v1, v2, v3) = (SIMD16(repeating: row[kx]), SIMD16(repeating: row[kx + 1]), SIMD16(repeating: row[kx + 2]), SIMD16(repeating: row[kx + 3]))
                                a0 = a0.addingProduct(v0, w0); b0 = b0.addingProduct(v0, w1)
                                a1 = a1.addingProduct(v1, w0); b1 = b1.addingProduct(v1, w1)
                                a2 = a2.addingProduct(v2, w0); b2 = b2.addingProduct(v2, w1)
                                a3 = a3.addingProduct(v3, w0); b3 = b3.addingProduct(v3, w1)
                            }
                        }
                        store(x, group, a0); store(x + 1, group, a1); store(x + 2, group, a2); store(x + 3, group, a3)
                        if pair { store(x, second, b0); store(x + 1, second, b1); store(x + 2, second, b2); store(x + 3, second, b3) }
                        x += 4
                    }
                    while x < width {
                        var (a, c) = (start0, start1)
                        for ky in 0..<k {
                            let row = frame + (y + ky) * fw + x
                            for kx in 0..<k {
                                let v = SIMD16(repeating: row[kx])
                                a = a.addingProduct(v, load(weights + (ky * k + kx) * o + group * 16))
                                c = c.addingProduct(v, load(weights + (ky * k + kx) * o + second * 16))
                            }
                        }
                        store(x, group, a)
                        if pair { store(x, second, c) }
                        x += 1
                    }
                    group += pair ? 2 : 1
                }
            }
        }
    }

    /// ∂W[ky, kx, 0, o] = Σ_{b, y, x} frame_b[y + ky, x + kx] · ∂y[b, y, x, o] for the kernel rows
    /// `rows`, overwriting them: five taps of a row and two groups of 16 outputs at a time (ten
    /// independent sums), over every position in order.
    func filterGradient(
        frames: UnsafePointer<Float>, outputGradient dy: UnsafePointer<Float>, batch: Int, rows: Range<Int>,
        into gradient: UnsafeMutablePointer<Float>
    ) {
        let (k, fw, o) = (kernel, frameWidth, outputs)
        let groups = o / 16
        for ky in rows {
            var group = 0
            while group < groups {
                let pair = group + 1 < groups
                let second = pair ? group + 1 : group
                var kx0 = 0
                while kx0 < k {
                    var (a0, a1, a2, a3, a4) = (SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>(), SIMD16<Float>())
                    var (b0, b1, b2, b3, b4) = (a0, a1, a2, a3, a4)
                    for b in 0..<batch {
                        let frame = frames + b * frameCount
                        for y in 0..<height {
                            let row = frame + (y + ky) * fw + kx0
                            let gradients = UnsafeRawPointer(dy + (b * height + y) * width * o)
                            for x in 0..<width {
                                let g0 = gradients.loadUnaligned(fromByteOffset: (x * o + group * 16) * 4, as: SIMD16<Float>.self)
                                let g1 = gradients.loadUnaligned(fromByteOffset: (x * o + second * 16) * 4, as: SIMD16<Float>.self)
                                let p = row + x
                                let (v0, v1, v2, v3, v4) = (SIMD16(repeating: p[0]), SIMD16(repeating: p[1]), SIMD16(repeating: p[2]), SIMD16(repeating: p[3]), SIMD16(repeating: p[4]))
                                a0 = a0.addingProduct(v0, g0); b0 = b0.addingProduct(v0, g1)
                                a1 = a1.addingProduct(v1, g0); b1 = b1.addingProduct(v1, g1)
                                a2 = a2.addingProduct(v2, g0); b2 = b2.addingProduct(v2, g1)
                                a3 = a3.addingProduct(v3, g0); b3 = b3.addingProduct(v3, g1)
                                a4 = a4.addingProduct(v4, g0); b4 = b4.addingProduct(v4, g1)
                            }
                        }
                    }
                    let sums = [(a0, b0), (a1, b1), (a2, b2), (a3, b3), (a4, b4)]
                    for j in 0..<min(5, k - kx0) {
                        let tap = gradient + (ky * k + kx0 + j) * o
                        UnsafeMutableRawPointer(tap + group * 16).storeBytes(of: sums[j].0, as: SIMD16<Float>.self)
                        if pair { UnsafeMutableRawPointer(tap + second * 16).storeBytes(of: sums[j].1, as: SIMD16<Float>.self) }
                    }
                    kx0 += 5
                }
                group += pair ? 2 : 1
            }
        }
    }

    /// ∂x[b, iy, ix] = Σ_{ky, kx, o} ∂y[b, iy − ky + p, ix − kx + p, o] · W[ky, kx, 0, o] over the
    /// output positions inside the image.
    func inputGradient(
        _ dy: UnsafePointer<Float>, images: Range<Int>, weights: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>
    ) {
        let (k, p, o) = (kernel, pad, outputs)
        for b in images {
            for iy in 0..<height {
                for ix in 0..<width {
                    var sum = SIMD16<Float>()
                    for ky in 0..<k {
                        let y = iy - ky + p
                        guard y >= 0 && y < height else { continue }
                        for kx in 0..<k {
                            let x = ix - kx + p
                            guard x >= 0 && x < width else { continue }
                            let g = UnsafeRawPointer(dy + ((b * height + y) * width + x) * o)
                            let w = UnsafeRawPointer(weights + (ky * k + kx) * o)
                            for group in 0..<(o / 16) {
                                sum = sum.addingProduct(
                                    g.loadUnaligned(fromByteOffset: group * 64, as: SIMD16<Float>.self),
                                    w.loadUnaligned(fromByteOffset: group * 64, as: SIMD16<Float>.self))
                            }
                        }
                    }
                    dx[(b * height + iy) * width + ix] = sum.sum()
                }
            }
        }
    }
}
