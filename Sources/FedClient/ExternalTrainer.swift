import FedModel
import FedProtocol
import Foundation

/// Training handed to the device's own program (`trainer = "python3 train.py"`): for each task
/// the daemon writes the global model, one `.npy` per shard named as in the layout
/// (`model/dense1.weight.npy`), and `task.json` into a working directory, runs the command with
/// `FEDL_TASK` set to that file's path and a time limit, and reads back the trained shards
/// (`out/<name>.npy`, same shapes) and `result.json` (`{"examples": N, "loss": x}`). The daemon
/// keeps authentication, compression, error feedback, caching and reconnection. README's
/// "External training code" section is the contract; `Configs/numpy_trainer.py` follows it.
public struct ExternalTrainer: Sendable {
    /// The command, run by `/bin/sh -c` in fedclient's working directory.
    public var command: String
    /// Where the files are exchanged (created when missing).
    public var directory: URL
    /// The longest a run may take when the task gives no deadline, in seconds.
    public var timeout: Double

    public init(command: String, directory: URL, timeout: Double = 3600) {
        self.command = command
        self.directory = directory
        self.timeout = timeout
    }

    /// What the program delivered.
    public struct Result: Sendable {
        public var parameters: [Float]
        public var examples: Int
        public var loss: Double
    }

    /// A run that delivered nothing usable, with the reason the coordinator is told.
    public struct Failure: Error, CustomStringConvertible {
        public var reason: Decline.Reason
        public var message: String
        public var description: String { message }
    }

    /// Checks at start what waiting cannot fix: the command's program exists and can be run,
    /// and the working directory can be created and written.
    public func check() throws {
        guard let program = command.split(whereSeparator: \.isWhitespace).first.map(String.init) else {
            throw UnrecoverableError(message: "trainer: the command is empty")
        }
        if program.contains("/") {
            guard FileManager.default.isExecutableFile(atPath: program) else {
                throw UnrecoverableError(message: "trainer: \(program) is not an executable file")
            }
        } else {
            let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
            guard path.split(separator: ":").contains(where: { FileManager.default.isExecutableFile(atPath: "\($0)/\(program)") }) else {
                throw UnrecoverableError(message: "trainer: no program \"\(program)\" on PATH")
            }
        }
        do {
            try FileManager.default.createDirectory(at: directory.appendingPathComponent("model"), withIntermediateDirectories: true)
            try FileManager.default.createDirectory(at: directory.appendingPathComponent("out"), withIntermediateDirectories: true)
        } catch {
            throw UnrecoverableError(message: "trainer_dir \(directory.path): cannot create it (\(error.localizedDescription))")
        }
        guard FileManager.default.isWritableFile(atPath: directory.path) else {
            throw UnrecoverableError(message: "trainer_dir \(directory.path) is not writable")
        }
    }

    /// The time a run may take: 90% of the task's deadline (the rest is for the upload, or for
    /// the DECLINE to arrive while the coordinator still waits), or ``timeout`` when the task
    /// has no deadline, whichever is shorter.
    func limit(for task: TrainingTask) -> Double {
        task.deadlineMilliseconds > 0 ? min(0.9 * Double(task.deadlineMilliseconds) / 1000, timeout) : timeout
    }

    /// Runs one task: writes the model and the task, runs the program (cancelled with the
    /// calling task: the program is terminated), and reads its shards back into a copy of
    /// `model` (shards it was not asked to train keep their values).
    public func run(model: [Float], network: Network, task: TrainingTask, trained: Set<Int>, dataPath: String?) async throws -> Result {
        let modelDirectory = directory.appendingPathComponent("model"), outDirectory = directory.appendingPathComponent("out")
        let taskFile = directory.appendingPathComponent("task.json"), resultFile = directory.appendingPathComponent("result.json")
        let tensors = network.layout.tensors
        do {
            try? FileManager.default.removeItem(at: outDirectory)
            try? FileManager.default.removeItem(at: resultFile)
            try FileManager.default.createDirectory(at: outDirectory, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(at: modelDirectory, withIntermediateDirectories: true)
            try model.withUnsafeBufferPointer { all in
                for tensor in tensors {
                    try NPY.float32File(UnsafeBufferPointer(rebasing: all[tensor.range]), shape: tensor.shape)
                        .write(to: modelDirectory.appendingPathComponent("\(tensor.name).npy"))
                }
            }
            let seconds = limit(for: task)
            let spec = network.spec
            let description: [String: Any] = [
                "round": Int(task.round), "model_version": Int(task.modelVersion),
                "epochs": Int(task.localEpochs), "batch_size": Int(task.batchSize), "learning_rate": Double(task.learningRate),
                "deadline_seconds": seconds,
                "train": tensors.filter { trained.contains($0.index) }.map(\.name),
                "shards": tensors.map { ["name": $0.name, "shape": $0.shape] },
                "model": spec.wireDescription, "loss": spec.loss.rawValue, "outputs": spec.classes,
                "input": spec.input.height == 1 && spec.input.width == 1 ? [spec.input.channels] : [spec.input.height, spec.input.width, spec.input.channels],
                "data": dataPath as Any? ?? NSNull(),
                "model_dir": modelDirectory.path, "output_dir": outDirectory.path, "result": resultFile.path,
            ]
            try JSONSerialization.data(withJSONObject: description, options: [.prettyPrinted, .sortedKeys]).write(to: taskFile)
        } catch {
            throw Failure(reason: .cannotTrain, message: "cannot write the task into \(directory.path): \(error.localizedDescription)")
        }
        try await execute(taskFile: taskFile, limit: limit(for: task))
        var parameters = model
        for tensor in tensors where trained.contains(tensor.index) {
            let file = outDirectory.appendingPathComponent("\(tensor.name).npy")
            let array: NPY.Array
            do { array = try NPY.read(contentsOf: file) } catch let error as DataError {
                throw Failure(reason: .invalidOutput, message: "trained shard \(tensor.name): \(error.problem)")
            }
            guard array.shape == tensor.shape else {
                throw Failure(reason: .invalidOutput, message: "trained shard \(tensor.name) has shape \(array.shape), the model's is \(tensor.shape)")
            }
            for (i, value) in array.values.enumerated() {
                let float = Float(value)
                guard float.isFinite else { throw Failure(reason: .invalidOutput, message: "trained shard \(tensor.name) holds \(value) at \(i)") }
                parameters[tensor.offset + i] = float
            }
        }
        guard let text = try? Data(contentsOf: resultFile),
              let object = try? JSONSerialization.jsonObject(with: text) as? [String: Any],
              let examples = (object["examples"] as? NSNumber)?.intValue, examples > 0, examples <= Int(UInt32.max) else {
            throw Failure(reason: .invalidOutput, message: "\(resultFile.lastPathComponent) must be {\"examples\": N > 0, \"loss\": x}")
        }
        let loss = (object["loss"] as? NSNumber)?.doubleValue ?? 0
        guard loss.isFinite else { throw Failure(reason: .invalidOutput, message: "\(resultFile.lastPathComponent): loss \(loss) is not finite") }
        return Result(parameters: parameters, examples: examples, loss: loss)
    }

    /// Runs the command and waits for it, polling so that cancellation and the time limit are
    /// noticed. The program runs in a process group of its own with default signal handling (the
    /// daemon's ignored signals are not inherited); one over its time, or whose client is
    /// stopping, gets SIGTERM, then SIGKILL a second later, sent to the whole group so that no
    /// child it started outlives it.
    private func execute(taskFile: URL, limit: Double) async throws {
        let log = directory.appendingPathComponent("trainer.log")
        var environment = ProcessInfo.processInfo.environment
        environment["FEDL_TASK"] = taskFile.path
        let pid: pid_t
        do { pid = try Self.spawn(command, environment: environment, log: log.path) } catch {
            throw Failure(reason: .trainerFailed, message: "cannot start \"\(command)\": \(error)")
        }
        let start = Date()
        var status: Int32 = 0
        func finished() -> Bool { waitpid(pid, &status, WNOHANG) == pid }
        func stop() async {
            kill(-pid, SIGTERM)
            for _ in 0..<20 {
                if finished() { break }
                try? await Task.sleep(nanoseconds: 50_000_000)
            }
            kill(-pid, SIGKILL)
            if waitpid(pid, &status, WNOHANG) == 0 { waitpid(pid, &status, 0) }
        }
        while !finished() {
            if Task.isCancelled {
                await stop()
                throw CancellationError()
            }
            if Date().timeIntervalSince(start) > limit {
                await stop()
                throw Failure(reason: .trainerTimedOut, message: String(format: "\"%@\" ran past its %.1f s limit and was stopped", command, limit))
            }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        // Children it left behind go with it.
        kill(-pid, SIGKILL)
        let signal = status & 0x7F, code = (status >> 8) & 0xFF
        guard signal == 0, code == 0 else {
            let tail = ((try? String(contentsOf: log, encoding: .utf8)) ?? "").split(separator: "\n").last.map { ": \($0)" } ?? ""
            let how = signal == 0 ? "exited with status \(code)" : "was killed by signal \(signal)"
            throw Failure(reason: .trainerFailed, message: "\"\(command)\" \(how)\(tail)")
        }
    }

    struct SpawnError: Error, CustomStringConvertible {
        var description: String
    }

    /// Starts `/bin/sh -c command` in a new process group, stdin from /dev/null, stdout and
    /// stderr to `log`, with SIGTERM, SIGINT and SIGPIPE at their defaults and no signal blocked.
    private static func spawn(_ command: String, environment: [String: String], log: String) throws -> pid_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        posix_spawnattr_setpgroup(&attributes, 0)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGPIPE, SIGHUP] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        var files = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&files)
        defer { posix_spawn_file_actions_destroy(&files) }
        posix_spawn_file_actions_addopen(&files, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&files, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&files, 1, 2)
        let words: [String] = ["/bin/sh", "-c", command]
        let arguments: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        let variables: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in arguments { free(pointer) }
            for pointer in variables { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, "/bin/sh", &files, &attributes, arguments, variables)
        guard result == 0 else { throw SpawnError(description: String(cString: strerror(result))) }
        return pid
    }
}
