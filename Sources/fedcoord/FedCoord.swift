import ArgumentParser
import FedCoordinator
import FedLifecycle
import FedModel
import FedProtocol
import FedStore
import Foundation
import Logging

@main
struct FedCoord: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fedcoord",
        abstract: "The federated learning coordinator.",
        version: "0.1.0",
        subcommands: [Serve.self, Clients.self, Report.self, Export.self, Distill.self],
        defaultSubcommand: Serve.self)
}

extension FedCoord {
    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Listen for client daemons and run the training rounds of a configuration.",
            discussion: """
                Stops after the configured rounds or at the target accuracy, says GOODBYE to every client and exits 0. \
                SIGTERM or SIGINT stop taking connections, finish the round in flight if it completes within the smaller \
                of its deadline and 30 s (otherwise abandon it, committing nothing of it), close every connection (the \
                clients reconnect to the next start) and exit 0; a second signal exits at once (130 or 143).
                """)

        @Option(help: "Coordinator configuration (TOML); Configs/coordinator.toml documents every key.")
        var config = "Configs/coordinator.toml"
        @Option(help: "Port to listen on (overrides the configuration; 0 = any free port).")
        var port: Int?
        @Option(help: "Address to listen on (overrides the configuration).")
        var host: String?
        @Option(help: "Rounds to run (overrides the configuration).")
        var rounds: Int?
        @Option(help: "SQLite file recording the run; an existing one resumes from its last committed round.")
        var db: String?
        @Option(help: "Serve Prometheus metrics at http://HOST:PORT/metrics.")
        var metricsPort: Int?
        @Option(name: .customLong("resume-from-round"), help: "Roll the database back to the kept checkpoint of round N first, discarding later rounds (for a run poisoned after N; `fedcoord report` lists the rounds).")
        var resumeFromRound: Int?

        func run() async throws {
            LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
            let logger = Logger(label: "fedcoord")
            var configuration: CoordinatorConfiguration
            let testData: URL?
            let test: Dataset?
            let trusted: Dataset?
            do {
                (configuration, testData) = try CoordinatorConfiguration.load(contentsOf: URL(fileURLWithPath: config))
                if let port { configuration.port = port }
                if let host { configuration.host = host }
                if let rounds { configuration.rounds = rounds }
                if let db { configuration.databasePath = db }
                if let metricsPort { configuration.metricsPort = metricsPort }
                try configuration.validate()
                let targets = TargetFormat(configuration.model)
                test = try testData.map { try DataDirectory.load($0, train: false, targets: targets) }
                trusted = try configuration.trustedDataPath.map { try DataDirectory.load(URL(fileURLWithPath: $0), train: true, targets: targets) }
            } catch let error as ConfigurationError {
                fail(error.description)
            } catch let error as DataError {
                fail(error.description)
            }
            if let resumeFromRound {
                guard let path = configuration.databasePath else { fail("--resume-from-round needs a database (--db or database = in the configuration)") }
                do {
                    let discarded = try RunStore(path: path).rollBack(to: resumeFromRound)
                    print("fedcoord: rolled back to round \(resumeFromRound)" + (discarded.map { " (rounds \($0.lowerBound) to \($0.upperBound) discarded)" } ?? ""))
                } catch {
                    fail("\(error)")
                }
            }
            let coordinator: Coordinator
            do {
                coordinator = try Coordinator(configuration: configuration, test: test, trusted: trusted, logger: logger)
            } catch {
                fail("\(error)")
            }
            let listenHost = configuration.host
            let metric = configuration.model.loss.metric.rawValue
            let progress: @Sendable (CoordinatorRound) -> Void = { r in
                let value = r.testMetric.map { String(format: "%.4f", $0) } ?? "-"
                print(String(format: "round %4d  \(metric) %@  updates %d/%d  refused %d  up %d B  down %d B  %.2fs",
                             r.round, value, r.completed, r.selected, r.refused, r.uplinkBytes, r.downlinkBytes, r.seconds))
                fflush(nil)
            }
            let history: [CoordinatorRound]
            do {
                history = try await runDaemon(name: "fedcoord", logger: logger, work: {
                    try await coordinator.run(onBound: { port in
                        print("fedcoord: listening on \(listenHost):\(port)")
                        fflush(nil)
                    }, progress: progress)
                }, onShutdown: {
                    Task { await coordinator.stop() }
                })
            } catch let error as StoreError {
                // The last committed round is intact; the run resumes from it on restart.
                fail("\(error)")
            } catch let error as TLSSetupError {
                fail(error.description)
            } catch let error as MetricsBindError {
                fail(error.description)
            } catch {
                // Binding is what fails in practice (address in use, no permission).
                fail("cannot serve on \(configuration.host):\(configuration.port): \(error)")
            }
            let stopped = await coordinator.isStopping
            print("fedcoord: \(stopped ? "stopped" : "done"): \(history.count) rounds, final \(metric) \(history.last?.testMetric.map { String(format: "%.4f", $0) } ?? "-")")
        }

        private func fail(_ message: String) -> Never {
            FileHandle.standardError.write(Data("fedcoord: error: \(message)\n".utf8))
            Foundation.exit(1)
        }
    }
}
