import ArgumentParser
import FedCodec
import FedCoordinator
import FedModel
import FedStore
import Foundation

extension FedCoord {
    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the global model of a committed round to a file, optionally quantized, and print its test accuracy.",
            discussion: """
                File format: the line "FEDMODEL 1", the model description line (Protocol.md, section 6), \
                then for each shard in layout order a u32 little-endian length and the encoded shard \
                (Protocol.md, section 8). The accuracy of the exported model is printed next to the \
                float32 model's, so the cost of shipping a smaller model is visible. A model trained \
                with pruning (prune_sparsity) is written sparse over its kept weights. A top-k codec \
                (topk:0.1+q8) prunes at export: it keeps each shard's largest-magnitude fraction \
                (per-layer magnitude pruning, after training) and codes the rest as zeros, sparsely.
                """)

        @Option(help: "The run database.") var db: String
        @Option(help: "Round whose model to export (default: the last committed round).") var round: Int?
        @Option(help: "Output file.") var out: String
        @Option(help: "Codec spec for the weights: fp32, fp16, q8, q4, ..., or topk:F+q8 to keep each shard's largest fraction F (pruning); no error feedback.") var codec = "fp32"
        @Option(help: "Test data directory for the accuracy check (test_x.npy/test_y.npy or IDX files).") var testData = "Simulations/data/mnist"

        func run() throws {
            runReportingErrors {
                let committed = try CommittedModel(database: db, round: round)
                let codecSpec = try CodecSpec(parsing: codec)
                let test = try DataDirectory.load(URL(fileURLWithPath: testData), train: false, targets: TargetFormat(committed.spec))
                let result = try ModelExport.write(model: committed.parameters, network: committed.network, codec: codecSpec, to: URL(fileURLWithPath: out), test: test)
                let lines = ModelExport.describe(result, codec: codecSpec, path: out, what: "round \(committed.round)")
                print("fedcoord: " + lines[0])
                for line in lines.dropFirst() { print(line) }
            }
        }
    }
}
