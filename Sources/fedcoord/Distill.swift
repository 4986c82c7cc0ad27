import ArgumentParser
import FedCodec
import FedCoordinator
import FedModel
import FedStore
import Foundation

extension FedCoord {
    struct Distill: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Teach smaller student models from a committed round's global model, on data the server holds, and export them.",
            discussion: """
                Knowledge distillation (Hinton et al. 2015): each student (a comma-separated layer \
                list on the task's input and outputs) is trained to match the global model's \
                softened outputs, softmax(z/T), on the server's own examples; their labels are not \
                used, and the clients' data never leaves the devices. Each student is written to \
                DIR/student-N.fedmodel (fedcoord export's format) with the codec, and its size and \
                test accuracy are printed beside the teacher's. Classification tasks (softmax) only.
                """)

        @Option(help: "The run database.") var db: String
        @Option(help: "Round whose model teaches (default: the last committed round).") var round: Int?
        @Option(help: ArgumentHelp("A student: comma-separated layers, e.g. dense:32,relu,dense:10 (repeat for several).", valueName: "layers")) var student: [String]
        @Option(help: "The server's own examples (a data directory: train_x.npy/train_y.npy, train.npz, CIFAR, LEAF, CSV or IDX; labels are not used).") var data: String
        @Option(help: "Test data directory for the accuracy check.") var testData = "Simulations/data/mnist"
        @Option(help: "Directory the students are written to.") var out = "."
        @Option(help: "Codec spec for the exported weights (fp32, fp16, q8, q4, ...).") var codec = "q8"
        @Option(help: "Temperature T of the soft targets.") var temperature: Double = 4
        @Option(help: "Passes over the server's examples.") var epochs = 20
        @Option(help: "Student SGD learning rate (momentum 0.9).") var lr: Double = 0.05
        @Option(help: "Student minibatch size.") var batch = 64
        @Option(help: "Seed of the students' initial weights and shuffling.") var seed: UInt64 = 1

        func run() throws {
            runReportingErrors {
                let committed = try CommittedModel(database: db, round: round)
                let (spec, network, wanted) = (committed.spec, committed.network, committed.round)
                let codecSpec = try CodecSpec(parsing: codec)
                let students = try StudentDistillation.specs(student, teacher: spec)
                let settings = Distillation(temperature: Float(temperature), epochs: epochs, batchSize: batch, learningRate: Float(lr), seed: seed)
                try settings.validate()
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: out, isDirectory: &isDirectory), isDirectory.boolValue else {
                    throw StoreError("--out \(out): no such directory")
                }
                let transfer = try DataDirectory.load(URL(fileURLWithPath: data), train: true, targets: TargetFormat(spec))
                if let problem = network.accepts(transfer) { throw DataError(data, problem) }
                let test = try DataDirectory.load(URL(fileURLWithPath: testData), train: false, targets: TargetFormat(spec))
                let directory = URL(fileURLWithPath: out)
                let teacher = try ModelExport.write(model: committed.parameters, network: network, codec: codecSpec,
                                                    to: directory.appendingPathComponent("teacher.fedmodel"), test: test)
                let results = try StudentDistillation.run(
                    teacher: network, parameters: committed.parameters, students: students, transfer: transfer.all, test: test,
                    settings: settings, codec: codecSpec, directory: directory) { student, epoch, loss in
                    if epoch == epochs || epoch % 5 == 0 {
                        FileHandle.standardError.write(Data(String(format: "fedcoord: distilling student %d/%d: epoch %d/%d, soft loss %.4f\n", student + 1, students.count, epoch, epochs, loss).utf8))
                    }
                }
                print("fedcoord: round \(wanted)'s model taught \(students.count) student(s) on \(transfer.count) examples of \(data), T = \(temperature); written to \(directory.path)/teacher.fedmodel and student-N.fedmodel")
                for line in StudentDistillation.describe(results, teacher: teacher, codec: codecSpec) { print("fedcoord: " + line) }
            }
        }
    }
}
