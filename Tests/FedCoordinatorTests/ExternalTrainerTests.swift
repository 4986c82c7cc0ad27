import FedClient
import FedModel
import FedProtocol
import Foundation
import Testing

/// The external trainer's contract, on real child processes: what it writes, what it reads
/// back, and each way a program can fail.
@Suite struct ExternalTrainerTests {
    let network = try! Network(ModelSpec(input: .vector(3), classes: 2, layers: [.dense(outputs: 2)]))

    func task(deadline: UInt32 = 0) -> TrainingTask {
        TrainingTask(round: 7, modelVersion: 3, shards: [0, 1], localEpochs: 2, batchSize: 5, learningRate: 0.5, codec: "fp32", deadlineMilliseconds: deadline)
    }

    func directory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("fedtrainer-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @Test func theProgramReadsTheTaskAndItsShardsComeBack() async throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(at: dir) }
        // Doubles every trained value and checks the task's fields on the way.
        let script = dir.appendingPathComponent("double.py")
        try """
            import json, os, numpy as np
            t = json.load(open(os.environ["FEDL_TASK"]))
            assert (t["round"], t["epochs"], t["batch_size"], t["learning_rate"]) == (7, 2, 5, 0.5), t
            assert t["train"] == ["dense1.bias"] and t["model"] == "3|2|dense:2" and t["loss"] == "softmax", t
            for name in t["train"]:
                w = np.load(os.path.join(t["model_dir"], name + ".npy"))
                np.save(os.path.join(t["output_dir"], name + ".npy"), (2 * w).astype(np.float32))
            json.dump({"examples": 40, "loss": 0.25}, open(t["result"], "w"))
            """.write(to: script, atomically: true, encoding: .utf8)
        let trainer = ExternalTrainer(command: "python3 \(script.path)", directory: dir.appendingPathComponent("work"))
        try trainer.check()
        let model: [Float] = [1, 2, 3, 4, 5, 6, 7, 8]
        let result = try await trainer.run(model: model, network: network, task: task(), trained: [1], dataPath: nil)
        #expect(result.parameters == [1, 2, 3, 4, 5, 6, 14, 16] && result.examples == 40 && result.loss == 0.25)
        // The model went out as NumPy files of the layout's shapes.
        let weight = try NPY.read(contentsOf: dir.appendingPathComponent("work/model/dense1.weight.npy"))
        #expect(weight.shape == [3, 2] && weight.values == [1, 2, 3, 4, 5, 6])
    }

    @Test func eachFailureHasItsReason() async throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(at: dir) }
        func failure(_ command: String, deadline: UInt32 = 0) async throws -> ExternalTrainer.Failure? {
            let trainer = ExternalTrainer(command: command, directory: dir.appendingPathComponent("work"), timeout: 60)
            do {
                _ = try await trainer.run(model: [Float](repeating: 0, count: 8), network: network, task: task(deadline: deadline), trained: [0, 1], dataPath: nil)
                return nil
            } catch let failure as ExternalTrainer.Failure {
                return failure
            }
        }
        let failed = try await failure("echo broken >&2; exit 3")
        #expect(failed?.reason == .trainerFailed && failed?.message.contains("exited with status 3: broken") == true, "\(String(describing: failed))")
        let silent = try await failure("true")
        #expect(silent?.reason == .invalidOutput && silent?.message.contains("dense1.weight") == true)
        let shape = try await failure("python3 -c \"import json,os,numpy as np; t=json.load(open(os.environ['FEDL_TASK'])); [np.save(os.path.join(t['output_dir'], s['name']+'.npy'), np.zeros(5, np.float32)) for s in t['shards']]\"")
        #expect(shape?.reason == .invalidOutput && shape?.message.contains("has shape [5], the model's is [3, 2]") == true, "\(String(describing: shape))")
        // A program past its time is stopped, even one that ignores SIGTERM, with the child it
        // started: long before the child would end (the bound is loose: the machine is shared).
        let start = Date()
        let slow = try await failure("trap '' TERM; sleep 120", deadline: 700)
        let elapsed = Date().timeIntervalSince(start)
        #expect(slow?.reason == .trainerTimedOut && elapsed < 60, "stopped after \(elapsed) s: \(String(describing: slow))")
    }

    @Test func programsThatCanNeverRunAreRefusedAtStart() {
        #expect { try ExternalTrainer(command: "/nonexistent/train", directory: FileManager.default.temporaryDirectory).check() }
            throws: { "\($0)".contains("is not an executable file") }
        #expect { try ExternalTrainer(command: "no-such-trainer-program --x", directory: FileManager.default.temporaryDirectory).check() }
            throws: { "\($0)".contains("no program \"no-such-trainer-program\" on PATH") }
        #expect { try ExternalTrainer(command: "true", directory: URL(fileURLWithPath: "/proc/fed-not-creatable")).check() }
            throws: { "\($0)".contains("cannot create it") }
    }
}
