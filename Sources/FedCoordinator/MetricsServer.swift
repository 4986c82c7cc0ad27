import NIOCore
import NIOPosix
import Prometheus

/// The coordinator's Prometheus metrics, served as text at `/metrics`.
public final class CoordinatorMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let rounds: Counter
    let accepted: Counter
    let refused: Counter
    let clipped: Counter
    let bytesUp: Counter
    let bytesDown: Counter
    let connected: Gauge
    let accuracy: Gauge
    let testMetric: Gauge
    let currentRound: Gauge

    public init() {
        let registry = PrometheusCollectorRegistry()
        self.registry = registry
        func counter(_ name: String, _ unit: String, _ help: String) -> Counter {
            registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "fed", metricName: name, unitName: unit, helpText: help))
        }
        func gauge(_ name: String, _ help: String) -> Gauge {
            registry.makeGauge(descriptor: MetricNameDescriptor(namespace: "fed", metricName: name, unitName: "", helpText: help))
        }
        rounds = counter("rounds", "total", "Rounds committed")
        accepted = counter("updates_accepted", "total", "Client updates accepted")
        refused = counter("updates_refused", "total", "Messages refused with a typed error")
        clipped = counter("updates_clipped", "total", "Updates clipped to the norm bound")
        bytesUp = counter("bytes_up", "total", "Encoded update bytes received")
        bytesDown = counter("bytes_down", "total", "Encoded model bytes sent")
        connected = gauge("connected_clients", "Authenticated clients connected now")
        accuracy = gauge("test_accuracy", "Test accuracy of the latest global model (classification tasks)")
        testMetric = gauge("test_metric", "The task's headline test metric (accuracy, RMSE or label accuracy) of the latest global model")
        currentRound = gauge("round", "Last completed round")
    }
}

/// A minimal HTTP/1.x responder: `GET /metrics` returns the registry in the Prometheus text
/// format; anything else gets 404. One request per connection.
enum MetricsServer {
    static func start(host: String, port: Int, metrics: CoordinatorMetrics) async throws -> any Channel {
        try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(MetricsHandler(metrics: metrics)) }
            }
            .bind(host: host, port: port)
            .get()
    }
}

private final class MetricsHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let metrics: CoordinatorMetrics
    private var request = ByteBuffer()

    init(metrics: CoordinatorMetrics) { self.metrics = metrics }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = unwrapInboundIn(data)
        request.writeBuffer(&chunk)
        guard request.readableBytes <= 8192 else { context.close(promise: nil); return }
        let text = String(buffer: request)
        guard text.contains("\r\n\r\n") || text.contains("\n\n") else { return }
        let isMetrics = text.hasPrefix("GET /metrics ") || text.hasPrefix("GET /metrics\r") || text.hasPrefix("GET /metrics?")
        let body = isMetrics ? metrics.registry.emitToString() : "not found\n"
        let head = "HTTP/1.1 \(isMetrics ? "200 OK" : "404 Not Found")\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: head + body))).whenComplete { _ in bound.value.close(promise: nil) }
    }
}
