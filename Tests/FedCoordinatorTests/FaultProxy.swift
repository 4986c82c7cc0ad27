import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A TCP proxy on 127.0.0.1 that forwards to a target port and injects faults into what it
/// forwards: delays, a cut connection, a corrupted byte, a stall. Each accepted connection gets
/// the faults `plan` gives for its index (0 for the first), so a test can break a client's first
/// connection and let it reconnect cleanly.
final class FaultProxy: Sendable {
    enum Direction: Sendable { case toServer, toClient }

    enum Fault: Sendable {
        /// Waits this long before forwarding each chunk (a slow link).
        case delay(Direction, seconds: Double)
        /// Forwards the first `afterBytes` bytes, then closes both sides (a cut cable, a crash).
        case cut(Direction, afterBytes: Int)
        /// Flips every bit of the byte at this offset of the stream.
        case corrupt(Direction, atByte: Int)
        /// Forwards the first `afterBytes` bytes, then nothing more, keeping the connection open.
        case stall(Direction, afterBytes: Int)

        var direction: Direction {
            switch self {
            case .delay(let d, _), .cut(let d, _), .corrupt(let d, _), .stall(let d, _): d
            }
        }
    }

    let port: Int
    private let server: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
    private let task: Task<Void, Never>
    private let accepted = NIOLockedValueBox(0)

    /// Connections accepted so far.
    var connections: Int { accepted.withLockedValue { $0 } }

    static func start(target: Int, plan: @escaping @Sendable (Int) -> [Fault]) async throws -> FaultProxy {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
            }
        return FaultProxy(server: server, target: target, plan: plan)
    }

    private init(server: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>, target: Int, plan: @escaping @Sendable (Int) -> [Fault]) {
        self.server = server
        port = server.channel.localAddress?.port ?? 0
        let accepted = accepted
        task = Task {
            try? await server.executeThenClose { inbound in
                await withDiscardingTaskGroup { group in
                    do {
                        for try await client in inbound {
                            let index = accepted.withLockedValue { count in defer { count += 1 }; return count }
                            let faults = plan(index)
                            group.addTask { await Self.relay(client, target: target, faults: faults) }
                        }
                    } catch {}
                    group.cancelAll()
                }
            }
        }
    }

    func stop() {
        task.cancel()
        server.channel.close(promise: nil)
    }

    deinit { stop() }

    private static func relay(_ client: NIOAsyncChannel<ByteBuffer, ByteBuffer>, target: Int, faults: [Fault]) async {
        do {
            let upstream = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: target) { channel in
                    channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
                }
            try await client.executeThenClose { clientIn, clientOut in
                try await upstream.executeThenClose { serverIn, serverOut in
                    await withTaskGroup(of: (toClient: Bool, byFault: Bool).self) { pumps in
                        pumps.addTask { (false, await pump(clientIn, into: serverOut, faults: faults.filter { $0.direction == .toServer })) }
                        pumps.addTask { (true, await pump(serverIn, into: clientOut, faults: faults.filter { $0.direction == .toClient })) }
                        // A cut, or the server's side ending, ends the connection on both sides.
                        // The client's side ending first (its write to a server that has just
                        // closed failing, say) waits for what the server sent last, a GOODBYE
                        // held back by a delay, to reach the client.
                        while let ended = await pumps.next() {
                            if ended.byFault || ended.toClient { break }
                        }
                        pumps.cancelAll()
                    }
                }
            }
        } catch {
            client.channel.close(promise: nil)
        }
    }

    /// Forwards `source` to `sink` with `faults` applied; true when a cut or a stall ended it.
    private static func pump(_ source: NIOAsyncChannelInboundStream<ByteBuffer>, into sink: NIOAsyncChannelOutboundWriter<ByteBuffer>, faults: [Fault]) async -> Bool {
        var forwarded = 0
        do {
            for try await var chunk in source {
                var end: (keep: Int, stall: Bool)?
                for fault in faults {
                    switch fault {
                    case .delay(_, let seconds):
                        try await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
                    case .corrupt(_, let offset) where (forwarded..<(forwarded + chunk.readableBytes)).contains(offset):
                        let at = chunk.readerIndex + offset - forwarded
                        chunk.setInteger(~chunk.getInteger(at: at, as: UInt8.self)!, at: at)
                    case .cut(_, let limit) where forwarded + chunk.readableBytes > limit:
                        end = (limit - forwarded, false)
                    case .stall(_, let limit) where forwarded + chunk.readableBytes > limit:
                        end = (limit - forwarded, true)
                    default:
                        break
                    }
                }
                if let end {
                    if end.keep > 0, let head = chunk.readSlice(length: end.keep) { try await sink.write(head) }
                    if end.stall { try await Task.sleep(nanoseconds: 3_600_000_000_000) }
                    return true
                }
                forwarded += chunk.readableBytes
                try await sink.write(chunk)
            }
        } catch {}
        return false
    }
}
