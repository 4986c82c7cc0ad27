import ArgumentParser
import FedClient
import FedConfiguration
import FedLifecycle
import FedModel
import FedProtocol
import Foundation
import Logging

@main
struct FedClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fedclient",
        abstract: "The federated learning client daemon: trains on this device's data and sends only its update.",
        discussion: """
            Data is a directory with x.npy and y.npy, an MNIST-layout directory (the training files; \
            --examples picks a range of them) or a CSV file (a target column and features per line). \
            With --trainer, the device's own program trains instead (README, "External training \
            code"): the daemon writes the model and the task to --trainer-dir, runs the command with \
            FEDL_TASK set to the task file, and uploads what it returns. The daemon reconnects with backoff until the \
            coordinator says goodbye at the end of the run. SIGTERM or SIGINT stop it: a training in progress \
            is finished (its upload abandoned), the error-feedback state is saved, GOODBYE is sent and it exits 0; \
            a second signal exits at once (130 or 143).
            """,
        version: "0.1.0")

    @Option(help: "Client configuration (TOML); Configs/client.toml documents every key.")
    var config: String?
    @Option(help: "Coordinator address HOST:PORT.") var coordinator: String?
    @Option(help: "Private data: a directory with x.npy and y.npy or data.npz (NumPy), CIFAR or LEAF files, one in the IDX layout (MNIST's), or a CSV file.") var data: String?
    @Option(help: "This client's registered id.") var id: String?
    @Option(help: "This client's secret (prefer the configuration file).") var secret: String?
    @Option(help: "The range of examples this device holds, e.g. 0..<600 (directory data).") var examples: String?
    @Option(name: .customLong("label-column"), help: "With CSV data, the label's column: a header name or a position from 0 (-1 = last; default 0).") var labelColumn: String?
    @Option(help: "File that keeps the error-feedback residual across restarts.") var stateFile: String?
    @Option(help: "Hand training to this command (run by /bin/sh -c, FEDL_TASK names the task file), e.g. \"python3 train.py\".") var trainer: String?
    @Option(name: .customLong("trainer-dir"), help: "Where the model, the task and the trained shards are exchanged with --trainer (default: a directory under the system's temporary one).") var trainerDir: String?
    @Option(name: .customLong("trainer-timeout"), help: "Longest a --trainer run may take when the task sets no deadline, in seconds.") var trainerTimeout: Double?

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var file: ClientFile
        do {
            file = try config.map { try ClientFile(contentsOf: URL(fileURLWithPath: $0)) } ?? ClientFile()
        } catch let error as ConfigurationError {
            fail(error.description)
        }
        // Options override the file; their paths are relative to the working directory.
        if let coordinator { file.coordinator = coordinator }
        if let data { file.data = URL(fileURLWithPath: data).standardizedFileURL.path }
        if let id { file.id = id }
        if let secret { file.secret = secret }
        if let examples { file.examples = examples }
        if let labelColumn { file.labelColumn = labelColumn }
        if let stateFile { file.stateFile = URL(fileURLWithPath: stateFile).standardizedFileURL.path }
        if let trainer { file.trainer = trainer }
        if let trainerDir { file.trainerDir = URL(fileURLWithPath: trainerDir).standardizedFileURL.path }
        if let trainerTimeout { file.trainerTimeout = trainerTimeout }
        guard let clientID = file.id, !clientID.isEmpty else { fail("no client id (--id or id = in the configuration)") }
        guard let secret = file.secret, !secret.isEmpty else { fail("no secret (secret = in the configuration)") }
        do { _ = try Authentication.publicKey(ofSecret: secret) } catch let error as ProtocolError { fail("secret: \(error.message)") }
        let address = file.coordinator ?? "127.0.0.1:7420"
        let parts = address.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]), (1...65_535).contains(port) else { fail("coordinator must be HOST:PORT, got \"\(address)\"") }
        var external: ExternalTrainer?
        if let command = file.trainer {
            guard (file.trainerTimeout ?? 3600) > 0 else { fail("trainer_timeout must be positive") }
            let directory = file.trainerDir.map { URL(fileURLWithPath: $0) }
                ?? FileManager.default.temporaryDirectory.appendingPathComponent("fedclient-\(clientID)")
            let trainer = ExternalTrainer(command: command, directory: directory, timeout: file.trainerTimeout ?? 3600)
            do { try trainer.check() } catch let error as UnrecoverableError { fail(error.message) }
            external = trainer
        }
        guard file.data != nil || external != nil else { fail("no data (--data or data = in the configuration), and no --trainer to read it") }
        var slice: DatasetSlice?
        if let dataPath = file.data {
            do {
                slice = try loadData(URL(fileURLWithPath: dataPath), examples: file.examples, labelColumn: file.labelColumn)
            } catch let error as DataError {
                // An external trainer reads the data itself; a format only it understands is fine.
                if external == nil { fail(error.description) }
            }
        }
        var configuration = ClientConfiguration(clientID: clientID, secret: secret, data: slice, trainer: external)
        configuration.dataPath = file.data
        configuration.host = String(parts[0])
        configuration.port = port
        configuration.stateFile = file.stateFile.map { URL(fileURLWithPath: $0) }
        configuration.memoryBudget = file.memoryBudget ?? 0
        if file.tls || file.tlsCA != nil || file.tlsCertificate != nil {
            let tls = ClientTLS(caPath: file.tlsCA, certificatePath: file.tlsCertificate, keyPath: file.tlsKey, serverName: file.tlsServerName)
            // Fail now on a bad file, not at the first connection.
            do { _ = try tls.makeContext() } catch { fail("\(error)") }
            configuration.tls = tls
        }
        do { try ClientDaemon.checkStateFile(configuration.stateFile) } catch let error as UnrecoverableError { fail(error.message) }
        let daemon = ClientDaemon(configuration: configuration)
        if let external {
            print("fedclient: \(clientID) training with \"\(external.command)\" in \(external.directory.path), coordinator \(address)")
        } else {
            print("fedclient: \(clientID) with \(slice?.count ?? 0) examples, coordinator \(address)")
        }
        fflush(nil)
        try await runDaemon(name: "fedclient", logger: Logger(label: "fedclient"), work: {
            await daemon.run()
        }, onShutdown: {
            Task { await daemon.stop() }
        })
        if let problem = await daemon.fatalError { fail(problem) }
        let declined = await daemon.declinedRounds.count
        print("fedclient: finished after \(await daemon.completedRounds.count) rounds" + (declined > 0 ? " (\(declined) declined)" : ""))
    }

    private func loadData(_ url: URL, examples: String?, labelColumn: String?) throws -> DatasetSlice {
        if url.pathExtension.lowercased() == "csv" {
            return try CSVDataset.load(contentsOf: url, labelColumn: CSVLabelColumn(parsing: labelColumn ?? "0"), targets: nil).all
        }
        guard let examples else { return try DataDirectory.loadDevice(url).all }
        let bounds = examples.components(separatedBy: "..<")
        guard bounds.count == 2, let low = Int(bounds[0]), let high = Int(bounds[1]), low >= 0, low < high else {
            fail("examples must be LOW..<HIGH, got \"\(examples)\"")
        }
        if ["x.npy", "data.npz", "train_x.npy"].contains(where: { FileManager.default.fileExists(atPath: url.appendingPathComponent($0).path) }) {
            let all = try DataDirectory.loadDevice(url)
            guard high <= all.count else { fail("examples \(low)..<\(high) outside the data's 0..<\(all.count)") }
            return DatasetSlice(dataset: all, indices: (low..<high).map { Int32($0) })
        }
        // Only this device's examples are kept in memory.
        return try MNIST.load(directory: url, train: true, examples: low..<high).all
    }

    private func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("fedclient: error: \(message)\n".utf8))
        Foundation.exit(1)
    }
}

/// fedclient's configuration file (Configs/client.toml documents every key), read with the
/// same reader as fedsim's and fedcoord's; paths are resolved against the file's directory.
struct ClientFile {
    var id: String?
    var secret: String?
    var coordinator: String?
    var data: String?
    var examples: String?
    var labelColumn: String?
    var stateFile: String?
    var memoryBudget: UInt64?
    var tls = false
    var tlsCA: String?
    var tlsCertificate: String?
    var tlsKey: String?
    var tlsServerName: String?
    var trainer: String?
    var trainerDir: String?
    var trainerTimeout: Double?

    static let keys: Set<String> = ["id", "secret", "coordinator", "data", "examples", "label_column", "state_file", "memory_budget",
                                    "tls", "tls_ca", "tls_certificate", "tls_key", "tls_server_name", "trainer", "trainer_dir", "trainer_timeout"]

    init() {}

    init(contentsOf url: URL) throws {
        let table = try ConfigurationTable(contentsOf: url, knownKeys: Self.keys)
        id = try table.string("id")
        secret = try table.string("secret")
        coordinator = try table.string("coordinator")
        data = try table.path("data")
        examples = try table.string("examples")
        labelColumn = try table.numberOrString("label_column")
        stateFile = try table.path("state_file")
        memoryBudget = try table.count("memory_budget")
        tls = try table.bool("tls") ?? false
        tlsCA = try table.path("tls_ca")
        tlsCertificate = try table.path("tls_certificate")
        tlsKey = try table.path("tls_key")
        tlsServerName = try table.string("tls_server_name")
        trainer = try table.string("trainer")
        trainerDir = try table.path("trainer_dir")
        trainerTimeout = try table.number("trainer_timeout")
    }
}
