import FedCodec
import FedProtocol
import FedModel
import FedRounds
import FedStore

/// What a coordinator needs to run a federated training job.
public struct CoordinatorConfiguration: Sendable {
    /// Address to listen on.
    public var host = "127.0.0.1"
    /// TCP port; 0 lets the OS choose (see ``Coordinator/port``).
    public var port = 7420
    /// The model architecture.
    public var model = ModelSpec.mnist2NN
    /// Rounds to complete.
    public var rounds = 10
    /// Stop early once the test accuracy reaches this (0 = never).
    public var targetMetric = 0.0
    /// Connected, authenticated clients needed before a round starts.
    public var minimumClients = 2
    /// Updates wanted per round.
    public var clientsPerRound = 10
    /// Clients selected per round = ceil(clientsPerRound × overSelection), to absorb dropouts.
    public var overSelection = 1.3
    /// Fewest updates that make a round count; fewer by the deadline and the round is retried.
    public var minimumUpdates = 1
    /// Seconds a round waits for updates.
    public var roundDeadline = 60.0
    /// Most selected clients sent the model and a task whose update has not come back (0 = no
    /// limit): the rest of the round's clients wait their turn, each sent its task as soon as
    /// another's update arrives (or that client leaves). Bounds the coordinator's outgoing
    /// bytes and memory at once; every task still has to finish by the round's deadline.
    public var maximumTasksInFlight = 0
    /// Local training the clients are asked to do.
    public var localEpochs = 1
    public var batchSize = 10
    public var learningRate: Float = 0.1
    /// Codec spec for client updates and for the model download.
    public var uplinkCodec = CodecSpec.fp32Raw
    public var downlinkCodec = CodecSpec.fp32Raw
    public var serverOptimizer = ServerOptimizer.Settings()
    /// FedAvg or a robust rule, the norm bound and central differential privacy.
    public var aggregation = AggregationSettings()
    /// Federated magnitude pruning (nil = none; the `prune_` keys): masked shards go out
    /// sparse and updates count only on the kept weights. An end of 0 means half the rounds.
    public var pruning: PruningSchedule?
    /// A model trained elsewhere that the run starts from (`base_model`: an exported model or a
    /// run database), copied in by tensor name (``BaseModel``). A resumed run starts from its
    /// checkpoint instead.
    public var baseModelPath: String?
    /// Device classes by width (HeteroFL, `widths`): each client trains the widest of these
    /// nested sub-models whose training fits its memory budget from HELLO (16 bytes per
    /// parameter; an unstated budget gets the whole model), and its WELCOME names that model.
    /// Empty: every client holds the whole model.
    public var widths: [Double] = []
    /// Default bound on one update: its L2 norm is scaled down to this multiple of the median
    /// norm of the updates accepted in recent rounds (0 = off).
    public var updateBound = 3.0
    /// A round whose new model is non-finite, or whose test loss is above this multiple of the
    /// previous model's, is not committed; the previous model is kept (0 = the finite check only).
    public var lossGuard = 10.0
    /// The trust aggregator's own data: a directory with MNIST-format training files
    /// (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`), and how many of its
    /// examples (drawn with the seed) the server trains its per-class directions on.
    public var trustedDataPath: String?
    public var trustedExamples = 1000
    /// FedDF: each round's aggregate is distilled further from the round's client models on
    /// `trustedExamples` examples of the trusted data (drawn with the seed; labels unused).
    public var ensemble = EnsembleDistillationSettings()
    /// Clients registered in the configuration file: id → public key (`fedpk1:...`). Clients
    /// registered in the database with `fedcoord clients add` are looked up there.
    public var clientKeys: [String: String] = [:]
    /// Seed for initialisation and client selection.
    public var seed: UInt64 = 1
    /// Heartbeat period announced to clients, in milliseconds.
    public var heartbeatMilliseconds: UInt32 = 5000
    /// Seconds a connection may take to authenticate.
    public var handshakeTimeout = 10.0
    /// TLS certificate and key (and a client CA for mutual TLS); nil = plain TCP.
    public var tls: ServerTLS?
    /// Connections served at once; more are answered ERROR overloaded and closed.
    public var maximumConnections = 4096
    /// Seconds an authenticated client that is not training may stay silent (the coordinator
    /// sends HEARTBEAT every heartbeat period, which a live client echoes); 0 = no limit.
    public var idleTimeout = 60.0
    /// Seconds one frame may take to arrive once it has started (slow-loris peers); 0 = no limit.
    /// The default lets a 1 MiB frame arrive over links down to about 140 kbit/s.
    public var readTimeout = 60.0
    /// Largest frame payload and largest reassembled message accepted from a peer: together
    /// they bound what one connection can make the coordinator buffer.
    public var maximumFramePayload = Frame.defaultMaximumPayload
    public var maximumMessage = 64 << 20
    /// SQLite file recording every committed round with its model; an existing file resumes
    /// its run from the last committed round. nil keeps nothing.
    public var databasePath: String?
    /// Port for the Prometheus `/metrics` endpoint (on `host`); nil = no endpoint, 0 = any free port.
    public var metricsPort: Int?
    /// Seconds a client still training when the run ends gets to upload before its connection
    /// is closed (it reads its GOODBYE after the upload).
    public var finishGrace = 5.0
    /// Checkpoints kept in the database: the last N and every Mth round.
    public var retention = RetentionPolicy()

    public init() {}

    /// Number selected each round.
    public var selectionSize: Int { Int((Double(clientsPerRound) * overSelection).rounded(.up)) }
}

/// One committed round, as the round engine recorded it.
public typealias CoordinatorRound = RoundOutcome
