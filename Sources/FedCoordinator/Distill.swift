import FedCodec
import FedModel
import Foundation

/// Distils a trained (teacher) model into smaller students on data the server holds, exports
/// each, and measures them beside the teacher (`fedcoord distill`, `fedsim --distill`).
public enum StudentDistillation {
    public struct Student: Sendable {
        public var layers: String
        public var parameters: Int
        /// The student as exported (with the export codec) and as trained.
        public var export: ModelExport.Result
        public var seconds: Double
    }

    /// Student specs from comma-separated layer lists (`dense:32,relu,dense:10`), on the
    /// teacher's input and outputs, softmax.
    public static func specs(_ lists: [String], teacher: ModelSpec) throws -> [ModelSpec] {
        guard teacher.loss == .softmaxCrossEntropy else {
            throw ModelError("distillation teaches classifiers (softmax); this task's loss is \(teacher.loss)")
        }
        return try lists.map { list in
            let layers = try list.split(separator: ",").map { try LayerSpec(parsing: String($0).trimmingCharacters(in: .whitespaces)) }
            let spec = ModelSpec(input: teacher.input, classes: teacher.classes, layers: layers, loss: .softmaxCrossEntropy)
            _ = try Network(spec)
            return spec
        }
    }

    /// Trains each student on `transfer` against the teacher's soft targets, writes it to
    /// `directory/student-<i>.fedmodel` (or a temporary file) with `codec`, and evaluates it.
    public static func run(
        teacher: Network, parameters: [Float], students: [ModelSpec], transfer: DatasetSlice, test: Dataset,
        settings: Distillation, codec: CodecSpec, directory: URL?, progress: ((_ student: Int, _ epoch: Int, _ loss: Double) -> Void)? = nil
    ) throws -> [Student] {
        try settings.validate()
        let targets = Distillation.softTargets(teacher: teacher, parameters: parameters, data: transfer, temperature: settings.temperature)
        var results: [Student] = []
        for (i, spec) in students.enumerated() {
            let start = Date()
            let network = try Network(spec)
            let trained = settings.train(student: network, initial: network.initialParameters(seed: settings.seed), transfer: transfer, targets: targets) {
                progress?(i, $0, $1)
            }
            let seconds = Date().timeIntervalSince(start)
            let url = (directory ?? FileManager.default.temporaryDirectory).appendingPathComponent(
                directory == nil ? "fed-student-\(UUID().uuidString).fedmodel" : "student-\(i + 1).fedmodel")
            let export = try ModelExport.write(model: trained, network: network, codec: codec, to: url, test: test)
            if directory == nil { try? FileManager.default.removeItem(at: url) }
            results.append(Student(layers: spec.layers.map(\.description).joined(separator: ","), parameters: network.parameterCount, export: export, seconds: seconds))
        }
        return results
    }

    /// One line per student, beside the teacher's accuracy and size.
    public static func describe(_ students: [Student], teacher: ModelExport.Result, codec: CodecSpec) -> [String] {
        var lines = [String(format: "teacher: %d parameters, %d bytes as %@, accuracy %.4f (exported %.4f)",
                            teacher.parameters, teacher.fileBytes, codec.description, teacher.reference?.accuracy ?? 0, teacher.exported?.accuracy ?? 0)]
        for (i, s) in students.enumerated() {
            let accuracy = s.export.exported?.accuracy ?? 0
            lines.append(String(format: "student %d %@: %d parameters, %d bytes as %@ (%.1fx smaller than the teacher's file), accuracy %.4f (%+.2f points), trained in %.1fs",
                                i + 1, s.layers, s.parameters, s.export.fileBytes, codec.description,
                                Double(teacher.fileBytes) / Double(max(1, s.export.fileBytes)), accuracy,
                                (accuracy - (teacher.exported?.accuracy ?? 0)) * 100, s.seconds))
        }
        return lines
    }
}
