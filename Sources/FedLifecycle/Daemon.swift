import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

/// Runs a daemon's work as a `Service` in a `ServiceGroup`: SIGTERM or SIGINT asks it to stop
/// gracefully (`onShutdown` runs once); a second such signal ends the process at once with
/// status 128 + the signal (130 for SIGINT, 143 for SIGTERM). Returns what `work` returned.
public func runDaemon<T: Sendable>(
    name: String,
    logger: Logger,
    work: @escaping @Sendable () async throws -> T,
    onShutdown: @escaping @Sendable () -> Void
) async throws -> T {
    let service = DaemonService(work: work, onShutdown: onShutdown)
    let group = ServiceGroup(configuration: ServiceGroupConfiguration(
        services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup)],
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: logger))
    let signals = Task {
        var count = 0
        for await signal in await UnixSignalsSequence(trapping: .sigterm, .sigint) {
            count += 1
            if count == 1 {
                logger.info("\(signal) received: shutting down (send it again to exit at once)")
            } else {
                FileHandle.standardError.write(Data("\(name): second \(signal): exiting at once\n".utf8))
                exit(128 + signal.rawValue)
            }
        }
    }
    defer { signals.cancel() }
    try await group.run()
    return try service.result()
}

private final class DaemonService<T: Sendable>: Service, @unchecked Sendable {
    private let work: @Sendable () async throws -> T
    private let onShutdown: @Sendable () -> Void
    private let lock = NSLock()
    private var outcome: Result<T, any Error>?

    init(work: @escaping @Sendable () async throws -> T, onShutdown: @escaping @Sendable () -> Void) {
        self.work = work
        self.onShutdown = onShutdown
    }

    func run() async throws {
        let value: Result<T, any Error>
        do {
            value = .success(try await withGracefulShutdownHandler {
                try await work()
            } onGracefulShutdown: { [onShutdown] in
                onShutdown()
            })
        } catch {
            value = .failure(error)
        }
        lock.withLock { outcome = value }
    }

    func result() throws -> T {
        guard let outcome = lock.withLock({ outcome }) else { throw CancellationError() }
        return try outcome.get()
    }
}
