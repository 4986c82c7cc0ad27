import ArgumentParser
import FedClient
import FedLifecycle
import FedModel
import FedProtocol
import Foundation
import Logging
import TOMLKit

@main
struct FedClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fedclient",
        abstract: "The federated learning client daemon: trains on this device's data and sends only its update.",
        discussion: """
            Data is an MNIST directory (the training files; --examples picks a range of them) or a CSV
            file (label, then features per line). The daemon reconnects with backoff until the
            coordinator says goodbye at the end of the run. SIGTERM or SIGINT stop it: a training in progress
            is finished (its upload abandoned), the error-feedback state is saved, GOODBYE is sent and it exits 0;
            a second signal exits at once (130 or 143).
            """,
        version: "0.1.0")

    @Option(help: "Client configuration (TOML); Configs/client.toml documents every key.")
    var config: String?
    @Option(help: "Coordinator address HOST:PORT.") var coordinator: String?
    @Option(help: "Private data: an MNIST directory or a CSV file.") var data: String?
    @Option(help: "This client's registered id.") var id: String?
    @Option(help: "This client's secret (prefer the configuration file).") var secret: String?
    @Option(help: "With MNIST data, the range of training examples this device holds, e.g. 0..<600.") var examples: String?
    @Option(help: "File that keeps the error-feedback residual across restarts.") var stateFile: String?

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var settings: [String: String] = [:]
        var base = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
        if let config {
            let url = URL(fileURLWithPath: config)
            base = url.deletingLastPathComponent()
            settings = try readSettings(url)
        }
        if let coordinator { settings["coordinator"] = coordinator }
        if let data { settings["data"] = data }
        if let id { settings["id"] = id }
        if let secret { settings["secret"] = secret }
        if let examples { settings["examples"] = examples }
        if let stateFile { settings["state_file"] = stateFile }
        guard let clientID = settings["id"], !clientID.isEmpty else { fail("no client id (--id or id = in the configuration)") }
        guard let secret = settings["secret"], !secret.isEmpty else { fail("no secret (secret = in the configuration)") }
        do { _ = try Authentication.publicKey(ofSecret: secret) } catch let error as ProtocolError { fail("secret: \(error.message)") }
        let address = settings["coordinator"] ?? "127.0.0.1:7420"
        let parts = address.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]), (1...65_535).contains(port) else { fail("coordinator must be HOST:PORT, got \"\(address)\"") }
        guard let dataPath = settings["data"] else { fail("no data (--data or data = in the configuration)") }
        let slice: DatasetSlice
        do {
            slice = try loadData(resolve(dataPath, base), examples: settings["examples"])
        } catch let error as DataError {
            fail(error.description)
        }
        var configuration = ClientConfiguration(clientID: clientID, secret: secret, data: slice)
        configuration.host = String(parts[0])
        configuration.port = port
        configuration.stateFile = settings["state_file"].map { resolve($0, base) }
        if let budget = settings["memory_budget"] {
            guard let bytes = UInt64(budget) else { fail("memory_budget must be a number of bytes, got \"\(budget)\"") }
            configuration.memoryBudget = bytes
        }
        if settings["tls"] == "true" || settings["tls_ca"] != nil || settings["tls_certificate"] != nil {
            let tls = ClientTLS(
                caPath: settings["tls_ca"].map { resolve($0, base).path },
                certificatePath: settings["tls_certificate"].map { resolve($0, base).path },
                keyPath: settings["tls_key"].map { resolve($0, base).path },
                serverName: settings["tls_server_name"])
            // Fail now on a bad file, not at the first connection.
            do { _ = try tls.makeContext() } catch { fail("\(error)") }
            configuration.tls = tls
        }
        let daemon = ClientDaemon(configuration: configuration)
        print("fedclient: \(clientID) with \(slice.count) examples, coordinator \(address)")
        fflush(nil)
        try await runDaemon(name: "fedclient", logger: Logger(label: "fedclient"), work: {
            await daemon.run()
        }, onShutdown: {
            Task { await daemon.stop() }
        })
        print("fedclient: finished after \(await daemon.completedRounds.count) rounds")
    }

    private func resolve(_ path: String, _ base: URL) -> URL {
        path.hasPrefix("/") ? URL(fileURLWithPath: path) : base.appendingPathComponent(path).standardizedFileURL
    }

    private func readSettings(_ url: URL) throws -> [String: String] {
        let known: Set<String> = ["id", "secret", "coordinator", "data", "examples", "state_file", "memory_budget",
                                  "tls", "tls_ca", "tls_certificate", "tls_key", "tls_server_name"]
        do {
            let table = try TOMLTable(string: try String(contentsOf: url, encoding: .utf8))
            var result: [String: String] = [:]
            for key in table.keys {
                guard known.contains(key) else { fail("\(url.path): unknown key \"\(key)\"") }
                if key == "tls" {
                    guard let on = table[key]?.bool else { fail("\(url.path): \"tls\" must be true or false") }
                    result[key] = on ? "true" : "false"
                    continue
                }
                guard let value = table[key]?.string else { fail("\(url.path): \"\(key)\" must be a string") }
                result[key] = value
            }
            return result
        } catch let error as TOMLParseError {
            fail("\(url.path): invalid TOML at line \(error.source.begin.line): \(error.description)")
        } catch {
            fail("\(url.path): \(FileManager.default.fileExists(atPath: url.path) ? "cannot read file" : "no such file")")
        }
    }

    private func loadData(_ url: URL, examples: String?) throws -> DatasetSlice {
        if url.pathExtension.lowercased() == "csv" {
            let text = (try? String(contentsOf: url, encoding: .utf8)) ?? ""
            let width = text.split(separator: "\n").first { !$0.hasPrefix("#") && !$0.isEmpty }.map { $0.split(separator: ",").count - 1 } ?? 0
            let dataset = try CSVDataset.load(contentsOf: url, sampleShape: .vector(max(1, width)), classes: 10)
            return dataset.all
        }
        guard let examples else { return try MNIST.load(directory: url, train: true).all }
        let bounds = examples.components(separatedBy: "..<")
        guard bounds.count == 2, let low = Int(bounds[0]), let high = Int(bounds[1]), low >= 0, low < high else {
            fail("examples must be LOW..<HIGH, got \"\(examples)\"")
        }
        // Only this device's examples are kept in memory.
        return try MNIST.load(directory: url, train: true, examples: low..<high).all
    }

    private func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("fedclient: error: \(message)\n".utf8))
        Foundation.exit(1)
    }
}
