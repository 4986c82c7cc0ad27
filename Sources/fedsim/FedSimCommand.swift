import ArgumentParser
import FedCodec
import FedCoordinator
import FedModel
import FedSim
import FedStore
import Foundation

/// `fedsim search ...` is ``Search``; anything else is a simulation. (Not an ArgumentParser
/// subcommand: the two share option names such as --config and --seed, which the parent would
/// take.)
@main
enum Main {
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "search" {
            Search.main(Array(arguments.dropFirst()))
        } else {
            await FedSimCommand.main(arguments)
        }
    }
}

struct FedSimCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fedsim",
        abstract: "Simulate federated averaging with many clients in one process (your own NumPy, CIFAR or LEAF data, or MNIST and Fashion-MNIST).",
        discussion: """
            Loads a scenario (TOML), applies the command-line overrides, and runs the rounds, \
            printing one line per round (round, test accuracy, test loss, seconds) and a summary.
            Example: fedsim --config Simulations/mnist-2nn-iid.toml --rounds 20 --report run.json
            `fedsim search --help`: the model that fits a size budget.
            """,
        version: "0.1.0")

    @Option(name: .long, help: "Scenario file (TOML). Without it, built-in defaults: 2NN, IID, 100 clients, data in Simulations/data/mnist.")
    var config: String?

    @Option(help: "Number of rounds.") var rounds: Int?
    @Option(help: "Number of clients K.") var clients: Int?
    @Option(help: "Fraction C of clients sampled per round, in (0, 1].") var fraction: Double?
    @Option(name: .customLong("local-epochs"), help: "Local epochs E.") var localEpochs: Int?
    @Option(name: .customLong("batch"), help: "Local minibatch size B.") var batch: Int?
    @Option(name: .customLong("lr"), help: "Client learning rate.") var learningRate: Double?
    @Option(help: "Client SGD momentum.") var momentum: Double?
    @Option(name: .customLong("mu"), help: "FedProx proximal coefficient (0 = FedAvg).") var proximalMu: Double?
    @Option(help: "Data split: iid, shards (McMahan's non-IID), dirichlet, labels (--labels-per-client each), or natural (one client per user id: train_ids.npy, LEAF users or a CSV user_column).") var partition: String?
    @Option(name: .customLong("alpha"), help: "Dirichlet concentration for --partition dirichlet.") var dirichletAlpha: Double?
    @Option(name: .customLong("labels-per-client"), help: "Labels each client holds for --partition labels (NIID-Bench's #C = k).") var labelsPerClient: Int?
    @Option(help: "Model preset: 2nn or cnn.") var model: String?
    @Option(help: "Random seed.") var seed: UInt64?
    @Option(help: "Target of the task's test metric for the rounds-to-target figure: accuracy in 0-1 (reached at or above), or RMSE for an mse task (reached at or below).") var target: Double?
    @Flag(name: .customLong("stop-at-target"), help: "Stop once the target is reached.") var stopAtTarget = false
    @Option(help: "Worker threads (0 = one per core).") var threads: Int?
    @Option(help: "Update codec: fp32, fp16, q8, q4, q2, sign, optionally topk:F+ before and +ef, +sr, +gN, +zN, +raw after (e.g. topk:0.01+q8+ef).") var codec: String?
    @Option(help: "Codec for the global model sent to clients: fp32, fp16 or q8 (+raw for no zlib).") var downlink: String?
    @Option(help: "memory (worker threads) or tcp (a real coordinator and client daemons over 127.0.0.1).") var transport: String?
    @Option(name: .customLong("server-optimizer"), help: "fedavg, fedavgm, fedadagrad, fedadam or fedyogi.") var serverOptimizer: String?
    @Option(name: .customLong("server-lr"), help: "Server learning rate.") var serverLearningRate: Double?
    @Option(name: .customLong("server-momentum"), help: "Server momentum (FedAvgM) or beta1 (adaptive).") var serverMomentum: Double?
    @Option(help: "Aggregation rule: fedavg, median, trimmed_mean, krum, multi_krum or trust (needs the server's own trusted examples).") var aggregator: String?
    @Option(name: .customLong("trim-beta"), help: "Fraction trimmed at each end by trimmed_mean.") var trimBeta: Double?
    @Option(name: .customLong("krum-f"), help: "Attackers Krum tolerates.") var krumF: Int?
    @Option(name: .customLong("norm-bound"), help: "Clip updates whose norm exceeds this multiple of the round's median (0 = off).") var normBound: Double?
    @Option(name: .customLong("norm-bound-action"), help: "clip (default) or refuse the updates above the norm bound.") var normBoundAction: String?
    @Option(name: .customLong("trusted-examples"), help: "trust: training examples the server holds itself (default 1000).") var trustedExamples: Int?
    @Option(name: .customLong("dp-clip"), help: "Central DP: clip each update to this L2 norm (0 = off).") var dpClip: Double?
    @Option(name: .customLong("dp-noise"), help: "Central DP: Gaussian noise multiplier on the clipped sum.") var dpNoise: Double?
    @Option(help: "Fraction of malicious clients.") var attackers: Double?
    @Option(help: "What they do: sign_flip, scale, noise or label_flip.") var attack: String?
    @Option(name: .customLong("attack-from-round"), help: "First round the attackers attack (honest before it).") var attackFromRound: Int?
    @Option(help: "Federated magnitude pruning to this final sparsity in [0, 1) (e.g. 0.9), on Zhu and Gupta's schedule: prune_start, prune_end (default: half the rounds), prune_every, prune_scope in the scenario.") var prune: Double?
    @Option(help: "Data directory: train_x.npy/train_y.npy/test_x.npy/test_y.npy, or the four IDX files (overrides the scenario's data).") var data: String?
    @Option(help: "Write the JSON report to this file.") var report: String?
    @Option(help: "Record the run in this SQLite file (the fedcoord schema; read it with fedcoord report). In-memory transport only.") var db: String?
    @Option(help: "Write the final global model to this file (fedcoord export's format; in-memory transport only), with --export-codec, and print its size and test metric beside the float32 model's.") var export: String?
    @Option(name: .customLong("export-codec"), help: "Codec of the exported weights: fp32, fp16, q8, q4, ... or topk:F+q8 to prune at export. A pruned model is written sparse.") var exportCodec = "q8"
    @Option(help: ArgumentHelp("After the run, distil the final model into this smaller student (a comma-separated layer list, e.g. dense:32,relu,dense:10; repeat for several), trained on the server's held-out training examples with the teacher's soft targets, and print its size and accuracy beside the teacher's (memory transport).", valueName: "layers")) var distill: [String] = []
    @Option(name: .customLong("svd-rank"), help: "Low-rank reference: replace each client's update to every weight matrix by its rank-R approximation (randomized SVD) before encoding, and print the bytes rank-R factors would take (0 = off).") var svdRank: Int?
    @Option(name: .customLong("base-model"), help: ArgumentHelp("Start from a model trained elsewhere: an exported model (--export, fedcoord export) or a run database (its last checkpoint), copied in by tensor name. With :loraR layers in the scenario only the adapters train.", valueName: "file")) var baseModel: String?
    @Option(help: ArgumentHelp("Device classes by width (HeteroFL): comma-separated fractions in (0, 1], e.g. 0.25,0.5,1; a client of a class trains the model with that fraction of every hidden layer's units or channels.", valueName: "p,p,...")) var widths: String?
    @Flag(name: .customLong("ordered-dropout"), help: "With --widths: FjORD's ordered dropout, each local batch at a width drawn from the classes' widths up to the client's own.") var orderedDropout = false
    @Flag(name: .customLong("frozen-shards"), help: "With --widths: the comparison with frozen shards. Each class's width stands for the memory budget it fits; its devices hold the whole model and train only the shards that budget picks.") var frozenShards = false
    @Option(name: .customLong("export-width"), help: "With --export: write the model at this width in (0, 1] (its nested sub-model; default 1, the whole model).") var exportWidth: Double?
    @Option(name: .customLong("width-shares"), help: ArgumentHelp("The share of the clients in each width class, summing to 1, e.g. 0.4,0.3,0.3.", valueName: "s,s,...")) var widthShares: String?
    @Flag(name: .customLong("ensemble-distill"), help: "FedDF: each round, train FedAvg's model further on the server's held-out examples against the mean outputs of the round's client models (fedavg aggregator; ensemble_temperature, ensemble_epochs, ensemble_lr and ensemble_batch in the scenario).") var ensembleDistill = false
    @Option(name: .customLong("ensemble-epochs"), help: "With --ensemble-distill: passes over the server's examples a round (default 1).") var ensembleEpochs: Int?
    @Option(name: .customLong("server-examples"), help: "Training examples held out of the clients' data for the server's distillation (default 5000 with --distill or --ensemble-distill).") var serverExamples: Int?
    @Option(help: "Distillation temperature T (default 4).") var temperature: Double?
    @Option(name: .customLong("distill-epochs"), help: "Distillation passes over the server's examples (default 20).") var distillEpochs: Int?
    @Flag(help: "Continue the run recorded in --db FILE after its last committed round, bit for bit as if it had not stopped: the same scenario and options, and --rounds as many or more (not with +ef codecs or width classes).") var resume = false
    @Option(help: "Write an SVG plot of accuracy, loss and bytes per round to this file.") var plot: String?
    @Option(help: "Progress display: auto (a live bar on a terminal, one line per round otherwise), bar, lines or none.")
    var progress: ProgressStyle = .auto
    @Flag(name: .shortAndLong, help: "Print only the final summary (for scripts).") var quiet = false

    func run() async throws {
        do {
            try await simulate()
        } catch let error as ConfigurationError {
            fail(error.description)
        } catch let error as DataError {
            fail(error.description)
        } catch let error as ModelError {
            fail(error.description)
        } catch let error as StoreError {
            fail(error.description)
        }
    }

    private func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("fedsim: error: \(message)\n".utf8))
        Foundation.exit(1)
    }

    private func effectiveConfiguration() throws -> SimulationConfiguration {
        var c: SimulationConfiguration
        if let config {
            c = try SimulationConfiguration.load(contentsOf: URL(fileURLWithPath: config))
        } else {
            c = SimulationConfiguration()
            c.name = "default"
            c.data = "Simulations/data/mnist"
        }
        if let rounds { c.rounds = rounds }
        if let clients { c.clients = clients }
        if let fraction { c.fraction = fraction }
        if let localEpochs { c.localEpochs = localEpochs }
        if let batch { c.batchSize = batch }
        if let learningRate { c.learningRate = learningRate }
        if let momentum { c.momentum = momentum }
        if let proximalMu { c.proximalMu = proximalMu }
        if let partition { c.partition = try PartitionKind.parse(partition, key: "--partition") }
        if let dirichletAlpha { c.dirichletAlpha = dirichletAlpha }
        if let labelsPerClient { c.labelsPerClient = labelsPerClient }
        if let model { c.model = model; c.layers = [] }
        if let seed { c.seed = seed }
        if let target { c.targetMetric = target }
        if stopAtTarget { c.stopAtTarget = true }
        if let threads { c.threads = threads }
        if let codec { c.codec = try CodecSpec.configured(codec, key: "--codec") }
        if let downlink { c.downlink = try CodecSpec.configured(downlink, key: "--downlink", download: true) }
        if let serverOptimizer { c.serverOptimizer = serverOptimizer }
        if let transport { c.transport = try Transport.parse(transport, key: "--transport") }
        if let serverLearningRate { c.serverLearningRate = serverLearningRate }
        if let serverMomentum { c.serverMomentum = serverMomentum }
        if let aggregator { c.aggregator = aggregator }
        if let trimBeta { c.aggregation.trimBeta = trimBeta }
        if let krumF { c.aggregation.byzantine = krumF }
        if let normBound { c.aggregation.normBound = normBound }
        if let trustedExamples { c.trustedExamples = trustedExamples }
        if let normBoundAction { c.normBoundAction = normBoundAction }
        if let attackFromRound { c.attackFromRound = attackFromRound }
        if let dpClip { c.aggregation.dpClip = dpClip }
        if let dpNoise { c.aggregation.dpNoiseMultiplier = dpNoise }
        if let attackers { c.attackers = attackers }
        if let attack { c.attack = try Attack.parse(attack, key: "--attack") }
        if let data { c.data = data }
        if !distill.isEmpty { c.distillStudents = distill }
        if let serverExamples { c.serverExamples = serverExamples }
        if let svdRank { c.svdRank = svdRank }
        if let baseModel { c.baseModel = baseModel }
        func fractions(_ text: String, _ option: String) throws -> [Double] {
            try text.split(separator: ",").map {
                guard let value = Double($0.trimmingCharacters(in: .whitespaces)) else { throw ConfigurationError("\(option): \"\($0)\" is not a number") }
                return value
            }
        }
        if let widths { c.widths = try fractions(widths, "--widths") }
        if let widthShares { c.widthShares = try fractions(widthShares, "--width-shares") }
        if orderedDropout { c.orderedDropout = true }
        if frozenShards { c.frozenShards = true }
        if let temperature { c.distillation.temperature = Float(temperature) }
        if let distillEpochs { c.distillation.epochs = distillEpochs }
        if ensembleDistill { c.ensemble.enabled = true }
        if let ensembleEpochs { c.ensemble.distillation.epochs = ensembleEpochs }
        if let prune {
            if c.pruning == nil { c.pruning = PruningSchedule(sparsity: prune, endRound: 0) } else { c.pruning!.sparsity = prune }
        }
        try c.validate()
        return c
    }

    private func simulate() async throws {
        let stops = StopSignals()
        let c = try effectiveConfiguration()
        if let report {
            // Fail before hours of work, not after.
            let directory = URL(fileURLWithPath: report).deletingLastPathComponent().path
            guard FileManager.default.isWritableFile(atPath: directory.isEmpty ? "." : directory) else {
                throw ConfigurationError("cannot write the report to \(report): directory \(directory) is not writable or does not exist")
            }
        }
        if let plot {
            let directory = URL(fileURLWithPath: plot).deletingLastPathComponent().path
            guard FileManager.default.isWritableFile(atPath: directory.isEmpty ? "." : directory) else {
                throw ConfigurationError("cannot write the plot to \(plot): directory \(directory) is not writable or does not exist")
            }
        }
        var exportSpec: CodecSpec?
        guard c.distillStudents.isEmpty || c.transport == .memory else {
            throw ConfigurationError("--distill distils the in-memory transport's model; with --transport tcp use fedcoord distill")
        }
        if let export {
            guard c.transport == .memory else { throw ConfigurationError("--export writes the in-memory transport's model; with --transport tcp use fedcoord serve --db and fedcoord export") }
            exportSpec = try CodecSpec.configured(exportCodec, key: "--export-codec")
            guard !exportSpec!.errorFeedback else { throw ConfigurationError("--export-codec: \"\(exportCodec)\" may not use error feedback") }
            if let exportWidth {
                do { _ = try SubModel(of: try Network(c.modelSpec()), fraction: exportWidth) } catch let error as ModelError { throw ConfigurationError("--export-width: \(error.description)") }
            }
            let directory = URL(fileURLWithPath: export).deletingLastPathComponent().path
            guard FileManager.default.isWritableFile(atPath: directory.isEmpty ? "." : directory) else {
                throw ConfigurationError("cannot write the model to \(export): directory \(directory) is not writable or does not exist")
            }
        }
        let loadStart = Date()
        var store: RunStore?
        var resumed: Simulation.Resume?
        if let db {
            guard c.transport == .memory else { throw ConfigurationError("--db records the in-memory transport; with --transport tcp use fedcoord serve --db") }
            do {
                store = try RunStore(path: db)
                resumed = try Simulation.Resume.load(from: store!)
            } catch let error as StoreError {
                throw ConfigurationError(error.description)
            }
            if resumed != nil, !resume { throw ConfigurationError("\(db) already holds a run: --resume continues it, or give a new file") }
            if resumed == nil, resume { throw ConfigurationError("\(db) holds no committed round to resume") }
        } else if resume {
            throw ConfigurationError("--resume continues the run in --db FILE")
        }
        let simulation = try Simulation(configuration: c, resume: resumed)
        if let store {
            do {
                if let resumed {
                    try store.recordEvent(kind: "restart", message: "fedsim resumed after round \(resumed.round)")
                } else {
                    try store.recordRun(configuration: simulation.network.spec.wireDescription)
                    try store.recordEvent(kind: Simulation.Resume.configurationEvent, message: Simulation.fingerprint(of: c))
                }
            } catch let error as StoreError {
                throw ConfigurationError(error.description)
            }
            simulation.store = store
        }
        if !quiet {
            print("""
                fedsim: \(c.name): model \(c.layers.isEmpty ? c.model : c.layers.joined(separator: ",")) \
                (\(simulation.network.parameterCount) parameters\(trainedNote(simulation.network))), codec \(c.codec), downlink \(c.downlink), \(c.clients) clients, \
                \(c.clientsPerRound) per round, partition \(c.partition), E=\(c.localEpochs) B=\(c.batchSize) \
                lr=\(c.learningRate), \(c.rounds) rounds, transport \(c.transport), \(c.effectiveThreads) threads, seed \(c.seed) \
                (data loaded in \(String(format: "%.1f", Date().timeIntervalSince(loadStart)))s)
                """)
            if let resumed { print("fedsim: resuming \(db!) after round \(resumed.round)") }
        }
        let style = quiet ? .none : progress.resolved(terminal: isatty(STDERR_FILENO) == 1)
        let display = ProgressDisplay(style: style, rounds: c.rounds, virtualClock: c.devices.hasClock)
        let printRound: @Sendable (RoundRecord) -> Void = { display.show($0) }
        stops.started(StopSignals.Run(gate: simulation.commits, rounds: c.rounds) { [db] round in
            guard c.transport == .memory else { return " (the TCP transport keeps no record to resume)" }
            guard let db else { return " (nothing was kept: --db FILE records every round, and --resume continues from it)" }
            if round == 0 { return " (\(db) holds no round: the same command starts again)" }
            if c.codec.errorFeedback || !c.widths.isEmpty { return ", committed to \(db) (a run with error feedback or width classes cannot be resumed)" }
            return ", committed to \(db): the same command with --resume continues it"
        }, display: display)
        let result = c.transport == .tcp
            ? try await simulation.runOverTCP(progress: printRound)
            : try simulation.run(progress: printRound)
        display.finish()
        let s = result.summary
        let final = s.finalAccuracy.map { String(format: "%.4f", $0) } ?? "-"
        let best = s.bestAccuracy.map { String(format: "%.4f", $0) } ?? "-"
        var line = "fedsim: done: \(s.roundsRun) rounds, final \(s.metric) \(final), best \(best)"
        if s.metric == .rmse, let mae = s.mae { line += String(format: " (MAE %.4f)", mae) }
        if let target = s.targetMetric {
            let goal = s.metric == .rmse ? "RMSE \(target)" : "\(String(format: "%.2f", target * 100))%"
            line += ", rounds to \(goal): \(s.roundsToTarget.map(String.init) ?? "not reached")"
        }
        line += String(format: ", %.2fs per round, %.1fs total", s.meanSecondsPerRound, s.totalSeconds)
        line += ", uplink \(s.uplinkBytes) bytes, downlink \(s.downlinkBytes) bytes"
        if let sparsity = result.rounds.last?.sparsity { line += String(format: ", sparsity %.3f", sparsity) }
        if let factors = simulation.lowRankUpdateBytes {
            line += ", rank-\(c.svdRank) factors \(factors) bytes per update (\(String(format: "%.1f", Double(simulation.network.parameterCount * 4 + 32 * simulation.network.layout.tensors.count) / Double(factors)))x less than float32)"
        }
        if let simulated = s.simulatedSeconds { line += String(format: ", %.1f simulated seconds", simulated) }
        print(line)
        if !s.widths.isEmpty {
            print("fedsim: by width: " + s.widths.map { w in
                String(format: "%g (%d parameters%@, %d updates) %@ %.4f", w.width, w.parameters,
                       w.trainedParameters.map { ", \($0) trained" } ?? "", w.updates, s.metric.rawValue, w.metric)
            }.joined(separator: "; "))
        }
        if !quiet, s.perClassAccuracy.count > 1, s.perClassAccuracy.count <= 100 {
            print("fedsim: accuracy per \(s.metric == .labelAccuracy ? "label" : "class"): " + s.perClassAccuracy.enumerated().map { c, a in "\(c) " + (a.map { String(format: "%.3f", $0) } ?? "-") }.joined(separator: ", "))
        }
        if let export, let exportSpec {
            let written: ModelExport.Result
            do {
                // At a width below 1, the nested sub-model of that width.
                let sub = try exportWidth.flatMap { $0 < 1 ? try SubModel(of: simulation.network, fraction: $0) : nil }
                written = try ModelExport.write(model: sub?.gather(simulation.global) ?? simulation.global, network: sub?.network ?? simulation.network,
                                                codec: exportSpec, to: URL(fileURLWithPath: export), test: simulation.testData, threads: c.effectiveThreads)
            } catch let error as CodecError {
                throw ConfigurationError("--export: \(error.message)")
            } catch let error as CocoaError {
                throw ConfigurationError("cannot write the model to \(export): \(error.localizedDescription)")
            }
            let what = exportWidth.map { $0 < 1 ? "the final model at width \($0)" : "the final model" } ?? "the final model"
            for line in ModelExport.describe(written, codec: exportSpec, path: export, what: what) { print("fedsim: " + line) }
        }
        if !c.distillStudents.isEmpty, let server = simulation.serverData {
            let codec = try exportSpec ?? CodecSpec(parsing: exportCodec)
            let students = try StudentDistillation.specs(c.distillStudents, teacher: simulation.network.spec)
            let directory = export.map { URL(fileURLWithPath: $0).deletingLastPathComponent() }
            let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("fedsim-teacher-\(UUID().uuidString).fedmodel")
            let teacher = try ModelExport.write(model: simulation.global, network: simulation.network, codec: codec, to: scratch, test: simulation.testData, threads: c.effectiveThreads)
            try? FileManager.default.removeItem(at: scratch)
            let epochs = c.distillation.epochs
            let results = try StudentDistillation.run(
                teacher: simulation.network, parameters: simulation.global, students: students, transfer: server.all, test: simulation.testData,
                settings: c.distillation, codec: codec, directory: directory) { student, epoch, loss in
                if !quiet, epoch == epochs || epoch % 5 == 0 {
                    FileHandle.standardError.write(Data(String(format: "fedsim: distilling student %d/%d: epoch %d/%d, soft loss %.4f\n", student + 1, students.count, epoch, epochs, loss).utf8))
                }
            }
            print("fedsim: distilled on \(server.count) held-out training examples, T = \(c.distillation.temperature), \(epochs) epochs" + (directory.map { ", students written to \($0.path)/student-N.fedmodel" } ?? ""))
            for line in StudentDistillation.describe(results, teacher: teacher, codec: codec) { print("fedsim: " + line) }
        }
        if let report {
            do {
                try result.jsonData().write(to: URL(fileURLWithPath: report))
            } catch {
                throw ConfigurationError("cannot write the report to \(report): \(error.localizedDescription)")
            }
            if !quiet { print("fedsim: report written to \(report)") }
        }
        if let plot {
            let rows = result.rounds.map { r in
                RoundRow(round: r.round, startedAt: Date(), endedAt: Date(), selected: r.selected, completed: r.clients, refused: 0,
                         uplinkBytes: r.uplinkBytes, downlinkBytes: r.downlinkBytes, trainingLoss: r.trainLoss,
                         testMetric: r.testMetric, testLoss: r.testLoss, metric: r.metric.rawValue)
            }
            do {
                try Data(RunPlot.svg(rounds: rows, title: "fedsim \(c.name): \(c.codec), \(c.serverOptimizer)").utf8).write(to: URL(fileURLWithPath: plot))
            } catch {
                throw ConfigurationError("cannot write the plot to \(plot): \(error.localizedDescription)")
            }
            if !quiet { print("fedsim: plot written to \(plot)") }
        }
    }
}

/// ", 4,040 trained (adapters)" for a model with frozen tensors, else nothing.
private func trainedNote(_ network: Network) -> String {
    let trained = network.layout.tensors.filter(\.trainable).reduce(0) { $0 + $1.count }
    return trained == network.parameterCount ? "" : ", \(trained) trained: the adapters"
}
