import FedClient
import FedModel
import FedProtocol
import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import FedCoordinator

/// Many short-lived connections hammering a coordinator in the middle of a run.
@Suite(.serialized, .timeLimit(.minutes(3))) struct LoadTests {
    @Test func aThousandConnectionsOpeningAndClosingDoNotStopTheRun() async throws {
        var config = configuration(clients: 4, perRound: 4, rounds: 100_000)
        config.minimumUpdates = 4
        let deployment = try await Deployment.start(config)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 4, seed: 4)
        let tasks = (0..<4).map { i in Task { await deployment.client("device-\(i)", secret: "secret-\(i)", indices: shares[i]).run() } }
        // 1,000 connections, 25 at a time: a third close at once, a third send garbage, a third
        // start a handshake and hang up in the middle of it.
        let hello = MessageFramer().frames(for: .hello(Hello(clientID: "device-0", protocolVersions: [2], codecs: ["fp32", "fp16", "q8", "q4", "q2", "sign", "topk"], memoryBudget: 0, exampleCount: 1)))
        var helloBytes = ByteBuffer()
        for frame in hello { frame.write(to: &helloBytes) }
        let start = Date()
        var opened = 0
        var failedToConnect = 0
        while opened < 1000 {
            let batch = min(25, 1000 - opened)
            let base = opened
            let greeting = helloBytes
            let port = deployment.port
            let results = await withTaskGroup(of: Bool.self) { group in
                for k in 0..<batch {
                    let kind = (base + k) % 3
                    group.addTask {
                        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
                        do {
                            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                                .connect(host: "127.0.0.1", port: port) { channel in
                                    channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
                                }
                        } catch {
                            return false // the coordinator stopped accepting: a failure
                        }
                        // The coordinator may answer garbage and close before our write ends:
                        // a reset here is the coordinator doing its job.
                        try? await channel.executeThenClose { _, outbound in
                            switch kind {
                            case 1: try await outbound.write(ByteBuffer(bytes: (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 37) }))
                            case 2: try await outbound.write(greeting)
                            default: break
                            }
                        }
                        return true
                    }
                }
                return await group.reduce(into: [Bool]()) { $0.append($1) }
            }
            opened += batch
            failedToConnect += results.filter { !$0 }.count
        }
        let churnSeconds = Date().timeIntervalSince(start)
        let roundsDuringChurn = await deployment.coordinator.history.count
        await deployment.coordinator.stop() // after the current round
        let rounds = try await deployment.rounds()
        for task in tasks { await task.value }
        #expect(failedToConnect == 0)
        #expect(roundsDuringChurn >= 2, "only \(roundsDuringChurn) rounds during the churn")
        #expect(rounds.count >= roundsDuringChurn)
        #expect(rounds.allSatisfy { $0.completed == 4 })
        #expect(rounds.last!.testMetric! > rounds.first!.testMetric!)
        // The hung-up handshakes are all cleaned up (only the four daemons were left, and they
        // have been dismissed).
        for _ in 0..<100 where deployment.coordinator.connectionCount > 0 { try await Task.sleep(nanoseconds: 20_000_000) }
        #expect(deployment.coordinator.connectionCount == 0)
        print("load test: 1000 connections opened and closed in \(String(format: "%.2f", churnSeconds)) s while \(roundsDuringChurn) rounds ran")
    }
}
