import ArgumentParser
import FedCodec
import FedFuzz
import FedModel
import Foundation

@main
struct FedBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fedbench",
        abstract: "Measure local training throughput (examples/s) of the 2NN and the CNN on MNIST.",
        discussion: """
            Trains on the first 600 MNIST training examples, batch 10, plain SGD, as one client's \
            local epoch, in three ways: one client on one core; one client using every core; and \
            one client per core side by side (how fedsim uses the machine). Benchmarks/train_throughput.sh \
            runs this next to the same work in PyTorch and prints the ratios.
            """)

    @Option(help: "Model: 2nn, cnn or all.") var model = "all"
    @Option(help: "Directory with the MNIST IDX files.") var data = "Simulations/data/mnist"
    @Option(help: "Timed epochs of 600 examples for the 2NN (the CNN runs a fifth as many, at least 1).") var epochs = 20
    @Option(help: "Cores to use for the multi-core figures (0 = all).") var threads = 0
    @Flag(help: "Instead, time the matrix products of one CNN and 2NN training step (GFLOP/s, one core).") var kernels = false
    @Flag(help: "Instead, time each kind of layer's forward and backward pass on a batch of 10 (examples/s, on --threads cores); Benchmarks/layer_throughput.sh runs PyTorch on the same shapes beside it.") var layers = false
    @Flag(help: "Instead, time encoding and decoding of real 2NN and CNN deltas per codec (MB/s of float32, one core).") var codecs = false
    @Flag(help: "Instead, profile one epoch of training by stage (each layer's forward and backward pass, the loss, the SGD steps), one client on one core (or on --threads cores), with GFLOP/s against the matrix kernel's one-core peak measured in the same run.") var profile = false

    @Option(help: "Instead, fuzz the frame decoder and every codec's decoder with this many seeded random and mutated inputs (e.g. 1000000).") var fuzz: Int?
    @Option(name: .customLong("fuzz-seed"), help: "Seed of the fuzzer's inputs.") var fuzzSeed: UInt64 = 1

    func run() throws {
        if let fuzz {
            guard fuzz > 0 else { throw ValidationError("--fuzz must be positive") }
            var driver = FuzzDriver(seed: fuzzSeed)
            let rssBefore = peakResidentMegabytes()
            let report = driver.run(inputs: fuzz) { done in
                FileHandle.standardError.write(Data("\rfuzz: \(done)/\(fuzz) inputs".utf8))
            }
            FileHandle.standardError.write(Data("\n".utf8))
            print("fuzz (seed \(fuzzSeed)): \(report)")
            print("fuzz: inputs per target: \(report.perTarget.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))")
            print(String(format: "fuzz: peak RSS %.0f MB before, %.0f MB after", rssBefore, peakResidentMegabytes()))
            for finding in report.findings.prefix(20) { print("FINDING: \(finding)") }
            if !report.findings.isEmpty { throw ExitCode(1) }
            return
        }
        if kernels {
            measureKernels()
            return
        }
        if layers {
            try measureLayers(threads: threads > 0 ? threads : availableCores)
            return
        }
        let models: [(String, ModelSpec)]
        switch model.lowercased() {
        case "2nn": models = [("2nn", .mnist2NN)]
        case "cnn": models = [("cnn", .mnistCNN)]
        case "all": models = [("2nn", .mnist2NN), ("cnn", .mnistCNN)]
        default: throw ValidationError("--model must be 2nn, cnn or all, got \(model)")
        }
        guard epochs > 0 else { throw ValidationError("--epochs must be positive") }
        let train: Dataset
        do {
            train = try MNIST.load(directory: URL(fileURLWithPath: data), train: true)
        } catch let error as DataError {
            throw ValidationError(error.description)
        }
        if codecs {
            try measureCodecs(train)
            return
        }
        if profile {
            try profileStages(models, train)
            return
        }
        let cores = threads > 0 ? threads : availableCores
        let slice = DatasetSlice(dataset: train, indices: Array(0..<600))
        print("mode                      model  examples/s")
        for (name, spec) in models {
            let network = try Network(spec)
            let reps = name == "cnn" ? max(1, epochs / 5) : epochs
            let single = measure(network, slice, threads: 1, clients: 1, epochs: reps)
            print(String(format: "one-client-one-core       %-5@  %.0f", name, single))
            let wide = measure(network, slice, threads: cores, clients: 1, epochs: reps)
            print(String(format: "one-client-all-cores      %-5@  %.0f", name, wide))
            let side = measure(network, slice, threads: 1, clients: cores, epochs: reps)
            print(String(format: "client-per-core           %-5@  %.0f", name, side))
        }
    }

    /// Encode and decode throughput per codec on a real delta (one client's epoch of SGD),
    /// next to plain zlib on the raw floats and a memcpy of the same bytes.
    func measureCodecs(_ train: Dataset) throws {
        let specs = ["fp32+raw", "fp32", "fp16", "q8", "q8+raw", "q4", "q2", "sign", "topk:0.1+q8", "topk:0.01+q8", "q8+sr", "lowrank:4+q8", "lowrank:1+q8"]
        print("model codec            bytes      ratio   encode MB/s  decode MB/s")
        for (name, spec) in [("2nn", ModelSpec.mnist2NN), ("cnn", .mnistCNN)] {
            let network = try Network(spec)
            let start = network.initialParameters(seed: 1)
            var local = start
            var generator = SeededGenerator(seed: 2)
            _ = LocalTrainer(network: network, batchCapacity: 10).train(
                parameters: &local, anchor: nil, data: DatasetSlice(dataset: train, indices: Array(0..<600)),
                epochs: 1, batchSize: 10, sgd: SGD(learningRate: 0.05), generator: &generator)
            let delta = zip(local, start).map { $0 - $1 }
            let megabytes = Double(delta.count * 4) / 1e6
            let ranges = network.layout.tensors.map(\.range)
            func time(_ body: () throws -> Void) rethrows -> Double {
                let reps = name == "cnn" ? 3 : 10
                try body()
                let t0 = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<reps { try body() }
                return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 / Double(reps)
            }
            let raw = delta.withUnsafeBytes { Array($0) }
            var copy = [UInt8](repeating: 0, count: raw.count)
            let memcpyTime = time { copy.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(start: raw.withUnsafeBytes { $0.baseAddress }, count: raw.count)) } }
            print(String(format: "%-5@ %-15@ %10d %8.1fx %12.0f %12.0f", name, "memcpy", raw.count, 1.0, megabytes / memcpyTime, megabytes / memcpyTime))
            var crcs: (UInt32, UInt32) = (0, 0)
            let zlibCRC = time { crcs.0 = raw.withUnsafeBytes { Checksum.zlibCRC32($0) } }
            let foldedCRC = time { crcs.1 = raw.withUnsafeBytes { Checksum.crc32($0) } }
            precondition(crcs.0 == crcs.1, "the folded CRC-32 disagrees with zlib's")
            print(String(format: "%-5@ %-15@ %10d %8.1fx %12.0f %12@", name, "crc32 zlib", raw.count, 1.0, megabytes / zlibCRC, "-"))
            print(String(format: "%-5@ %-15@ %10d %8.1fx %12.0f %12@   %.1fx zlib's", name, "crc32 folded", raw.count, 1.0, megabytes / foldedCRC, "-", zlibCRC / foldedCRC))
            var compressed: [UInt8] = []
            let zlibEncode = time { compressed = Zlib.compress(raw) }
            let zlibDecode = try time { _ = try Zlib.decompress(compressed, expectedLength: raw.count) }
            print(String(format: "%-5@ %-15@ %10d %8.1fx %12.0f %12.0f", name, "zlib (raw f32)", compressed.count, Double(raw.count) / Double(compressed.count), megabytes / zlibEncode, megabytes / zlibDecode))
            for text in specs {
                // Low-rank factors start from a seeded warm start, as a coordinator's first round.
                let codec = UpdateCodec(spec: try CodecSpec(parsing: text), shardRanges: ranges, columns: network.layout.tensors.map(\.columns))
                let warmStarts = codec.factorShapes.enumerated().map { index, shape in
                    shape.map { LowRankFactors.initialWarmStart(columns: $0.columns, rank: $0.rank, seed: UInt64(index)) }
                }
                var encoded: [[UInt8]] = []
                var g = SeededGenerator(seed: 3)
                let encodeTime = try time { encoded = try codec.encode(delta, warmStarts: warmStarts, generator: &g) }
                var decoded = delta
                let decodeTime = try time { try codec.decode(encoded, into: &decoded) }
                let bytes = encoded.reduce(0) { $0 + $1.count }
                print(String(format: "%-5@ %-15@ %10d %8.1fx %12.0f %12.0f", name, text, bytes, Double(raw.count) / Double(bytes), megabytes / encodeTime, megabytes / decodeTime))
            }
        }
    }

    /// GFLOP/s of each product a training step at batch 10 performs.
    /// One epoch of 600 examples (batch 10) per model, timed by stage; the roofline is a
    /// 512×512×512 product on one core, measured first.
    func profileStages(_ models: [(String, ModelSpec)], _ train: Dataset) throws {
        var generator = SeededGenerator(seed: 1)
        let n = 512
        let a = (0..<(n * n)).map { _ in generator.nextUniform(-1, 1) }
        var c = [Float](repeating: 0, count: n * n)
        var best = Double.infinity
        a.withUnsafeBufferPointer { pa in c.withUnsafeMutableBufferPointer { pc in
            for _ in 0..<8 {
                let start = DispatchTime.now().uptimeNanoseconds
                gemm(rows: n, columns: n, depth: n, a: pa.baseAddress!, rowStride: n, depthStride: 1, b: pa.baseAddress!, ldb: n, c: pc.baseAddress!, ldc: n, accumulate: false)
                best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            }
        }}
        let peak = 2 * Double(n * n * n) / best / 1e9
        print(String(format: "roofline: the matrix kernel does %.1f GFLOP/s on one core (512x512x512, best of 8)", peak))
        let slice = DatasetSlice(dataset: train, indices: Array(0..<600))
        for (name, spec) in models {
            let network = try Network(spec)
            let cores = max(1, threads)
            let trainer = LocalTrainer(network: network, batchCapacity: 10, threads: cores)
            var parameters = network.initialParameters(seed: 1)
            var draws = SeededGenerator(seed: 2)
            let sgd = SGD(learningRate: 0.01)
            _ = trainer.train(parameters: &parameters, anchor: nil, data: slice, epochs: 1, batchSize: 10, sgd: sgd, generator: &draws)
            let stages = StageProfile(layers: network.layers.count)
            trainer.workspace.profile = stages
            let start = DispatchTime.now().uptimeNanoseconds
            _ = trainer.train(parameters: &parameters, anchor: nil, data: slice, epochs: 1, batchSize: 10, sgd: sgd, generator: &draws)
            let total = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            trainer.workspace.profile = nil
            let batch = 10.0, batches = Double(stages.batches)
            print(String(format: "\n%@: one epoch of %d examples, batch 10, %@: %.1f ms (%.0f examples/s)", name, stages.examples, cores == 1 ? "one core" : "\(cores) cores", total * 1e3, Double(stages.examples) / total))
            print("stage                               ms   share   GFLOP/s  of peak    GB/s")
            func row(_ label: String, _ nanoseconds: UInt64, flops: Double = 0, bytes: Double = 0) {
                let seconds = Double(nanoseconds) / 1e9
                let rate = flops > 0 ? String(format: "%9.1f  %6.0f%%", flops / seconds / 1e9, flops / seconds / 1e9 / peak * 100) : "        -        -"
                let bandwidth = bytes > 0 ? String(format: "%7.1f", bytes / seconds / 1e9) : "      -"
                print(label.padding(toLength: 30, withPad: " ", startingAt: 0) + String(format: " %7.1f  %5.1f%%", seconds * 1e3, seconds / total * 100) + " " + rate + " " + bandwidth)
            }
            var accounted: UInt64 = 0
            for (i, layer) in network.layers.enumerated() {
                let inCount = Double(layer.inputShape.count), outCount = Double(layer.outputShape.count)
                var forwardFlops = 0.0
                if let conv = layer as? Conv2D {
                    forwardFlops = 2 * outCount * Double(conv.kernelSize * conv.kernelSize * conv.inputShape.channels)
                } else if let dense = layer as? Dense {
                    forwardFlops = 2 * Double(dense.inputCount * dense.outputCount)
                }
                let backwardFlops = forwardFlops * (i == 0 ? 1 : 2)
                let memoryBytes = forwardFlops == 0 ? (inCount + outCount) * 4 * batch * batches : 0
                let label = "\(i) \(layer.description)"
                row(label + " fwd", stages.forward[i], flops: forwardFlops * batch * batches, bytes: memoryBytes)
                row(label + " bwd", stages.backward[i], flops: backwardFlops * batch * batches, bytes: memoryBytes)
                let trainable = Double(layer.parameterShapes.reduce(0) { $0 + $1.shape.reduce(1, *) })
                if trainable > 0 { row(label + " SGD", stages.update[i], bytes: trainable * 12 * batches) }
                accounted += stages.forward[i] + stages.backward[i] + stages.update[i]
            }
            row("softmax cross-entropy", stages.loss[0])
            accounted += stages.loss[0]
            row("rest (batching, shuffle)", UInt64(max(0, total * 1e9 - Double(accounted))))
            let winograd = network.layers.enumerated().compactMap { i, layer in (layer as? Conv2D)?.usesWinograd == true ? "\(i)" : nil }
            if !winograd.isEmpty {
                print("layers \(winograd.joined(separator: ", ")) use Winograd F(2x2, k x k) for the forward pass and ∂x: their GFLOP/s count the direct convolution's multiply-adds, so they can pass the product kernel's peak")
            }
            if network.layers.contains(where: \.fusesUpdate) {
                print("layers that apply SGD inside their backward pass count it as backward time (SGD shows 0)")
            }
        }
    }

    func measureKernels() {
        // (label, rows, columns, depth, rowStride, depthStride) for gemm; NT marked by depthStride 0.
        let shapes: [(String, Int, Int, Int, Int, Int)] = [
            ("conv1 forward   7840x32x25", 7840, 32, 25, 25, 1),
            ("conv1 dW        25x32x7840", 25, 32, 7840, 1, 25),
            ("conv2 forward   1960x64x800", 1960, 64, 800, 800, 1),
            ("conv2 dW        800x64x1960", 800, 64, 1960, 1, 800),
            ("conv2 dcols     1960x800x64", 1960, 800, 64, 64, 1),
            ("dense 3136 fwd  10x512x3136", 10, 512, 3136, 3136, 1),
            ("dense 3136 dW   3136x512x10", 3136, 512, 10, 1, 3136),
            ("dense 3136 dx   10x3136x512 (A·Bᵀ)", 10, 3136, 512, 0, 0),
            ("2nn dense1 fwd  10x200x784", 10, 200, 784, 784, 1),
            ("2nn dense1 dW   784x200x10", 784, 200, 10, 1, 784),
        ]
        var generator = SeededGenerator(seed: 1)
        for (label, m, n, k, si, sr) in shapes {
            let a = (0..<(m * k)).map { _ in generator.nextUniform(-1, 1) }
            let b = (0..<(k * n)).map { _ in generator.nextUniform(-1, 1) }
            var c = [Float](repeating: 0, count: m * n)
            let flops = 2.0 * Double(m * n * k)
            let reps = max(3, Int(2e9 / flops))
            let start = DispatchTime.now().uptimeNanoseconds
            a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in c.withUnsafeMutableBufferPointer { pc in
                for _ in 0..<reps {
                    if sr == 0 {
                        gemmTransposedB(rows: m, columns: n, depth: k, a: pa.baseAddress!, lda: k, b: pb.baseAddress!, ldb: k, c: pc.baseAddress!, ldc: n, accumulate: false)
                    } else {
                        gemm(rows: m, columns: n, depth: k, a: pa.baseAddress!, rowStride: si, depthStride: sr, b: pb.baseAddress!, ldb: n, c: pc.baseAddress!, ldc: n, accumulate: false)
                    }
                }
            }}}
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            print(String(format: "%-36@ %6.1f GFLOP/s", label, flops * Double(reps) / seconds / 1e9))
        }
    }

    /// Examples per second over `epochs` timed epochs after one warm-up epoch, with
    /// `clients` trainers running side by side, each using `threads` cores.
    func measure(_ network: Network, _ slice: DatasetSlice, threads: Int, clients: Int, epochs: Int) -> Double {
        let trainers = (0..<clients).map { _ in LocalTrainer(network: network, batchCapacity: 10, threads: threads) }
        var models = Array(repeating: network.initialParameters(seed: 1), count: clients)
        let sgd = SGD(learningRate: 0.05)
        func epoch(_ count: Int) {
            models.withUnsafeMutableBufferPointer { models in
                let box = models
                parallelFor(clients) { c in
                    var generator = SeededGenerator(seed: 7, stream: UInt64(c))
                    for _ in 0..<count {
                        _ = trainers[c].train(parameters: &box[c], anchor: nil, data: slice, epochs: 1, batchSize: 10, sgd: sgd, generator: &generator)
                    }
                }
            }
        }
        epoch(1)
        let start = DispatchTime.now().uptimeNanoseconds
        epoch(epochs)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        return Double(600 * epochs * clients) / seconds
    }
}

/// This process's peak resident set size so far, in megabytes.
func peakResidentMegabytes() -> Double {
    var usage = rusage()
    #if canImport(Glibc)
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    #else
    getrusage(RUSAGE_SELF, &usage)
    #endif
    return Double(usage.ru_maxrss) / 1024
}
