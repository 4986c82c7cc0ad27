import Crypto
import Foundation
import GRDB

/// Everything needed to continue a run from a committed round.
public struct Checkpoint: Sendable, Equatable {
    public var round: Int
    public var modelVersion: UInt32
    public var model: [Float]
    /// Server-optimizer moments (empty when the optimizer keeps none).
    public var optimizerM: [Float]
    public var optimizerV: [Float]
    /// Hex SHA-256 of the model as little-endian float32.
    public var modelSHA256: String

    public init(round: Int, modelVersion: UInt32, model: [Float], optimizerM: [Float], optimizerV: [Float], modelSHA256: String) {
        self.round = round
        self.modelVersion = modelVersion
        self.model = model
        self.optimizerM = optimizerM
        self.optimizerV = optimizerV
        self.modelSHA256 = modelSHA256
    }
}

/// What is recorded about a committed round.
public struct RoundRow: Sendable, Equatable {
    public var round: Int
    public var startedAt: Date
    public var endedAt: Date
    public var selected: Int
    public var completed: Int
    public var refused: Int
    public var uplinkBytes: Int
    public var downlinkBytes: Int
    public var trainingLoss: Double
    /// The task's headline metric after the round (``metric``: `accuracy`, `rmse` or
    /// `label_accuracy`), nil when the round was not evaluated.
    public var testMetric: Double?
    public var testLoss: Double?
    public var metric: String

    public init(round: Int, startedAt: Date, endedAt: Date, selected: Int, completed: Int, refused: Int,
                uplinkBytes: Int, downlinkBytes: Int, trainingLoss: Double, testMetric: Double?, testLoss: Double?, metric: String = "accuracy") {
        self.metric = metric
        self.round = round
        self.startedAt = startedAt
        self.endedAt = endedAt
        self.selected = selected
        self.completed = completed
        self.refused = refused
        self.uplinkBytes = uplinkBytes
        self.downlinkBytes = downlinkBytes
        self.trainingLoss = trainingLoss
        self.testMetric = testMetric
        self.testLoss = testLoss
    }
}

/// One client's part in a round: an accepted update or a refusal.
public struct Participation: Sendable, Equatable, Codable {
    public var client: String
    /// `accepted` or `refused`.
    public var state: String
    public var bytes: Int
    public var examples: Int
    public var localLoss: Double?
    public var codec: String
    /// The protocol error code when refused.
    public var errorCode: Int?
    /// Seconds from the task being sent to the update arriving (training and upload), if known.
    public var durationSeconds: Double?

    public init(client: String, state: String, bytes: Int, examples: Int, localLoss: Double?, codec: String, errorCode: Int?, durationSeconds: Double? = nil) {
        self.client = client
        self.state = state
        self.bytes = bytes
        self.examples = examples
        self.localLoss = localLoss
        self.codec = codec
        self.errorCode = errorCode
        self.durationSeconds = durationSeconds
    }
}

/// Which checkpoints to keep: the last `keepLast`, and every `keepEvery`-th round.
public struct RetentionPolicy: Sendable, Equatable {
    public var keepLast: Int
    public var keepEvery: Int
    public init(keepLast: Int = 5, keepEvery: Int = 10) {
        self.keepLast = max(1, keepLast)
        self.keepEvery = max(1, keepEvery)
    }
}

/// A run's record in one SQLite file (WAL mode): the run's configuration, every committed
/// round and its model checkpoint. Committing a round is one transaction, so a round is never
/// marked done without its model, and a process killed at any moment leaves the last
/// committed round intact.
public final class RunStore: Sendable {
    /// The newest schema this build knows.
    public static let schemaVersion = 4
    private let queue: DatabaseQueue
    public let path: String

    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    /// A database written by a newer build, or a file that is not one of ours, is refused.
    /// `busyTimeout` is how long to wait for another process's lock before failing.
    public init(path: String, busyTimeout: TimeInterval = 5) throws {
        self.path = path
        // An existing empty file is not a new run: it is a database that lost its contents.
        if let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int, size == 0 {
            throw StoreError("\(path): the file is empty, not a run database (remove it to start a new run)")
        }
        var configuration = Configuration()
        configuration.busyMode = .timeout(busyTimeout)
        do {
            queue = try DatabaseQueue(path: path, configuration: configuration)
            try queue.writeWithoutTransaction { db in
                try db.execute(sql: "PRAGMA journal_mode = WAL")
            }
            let existing = try queue.read { db in try Int.fetchOne(db, sql: "PRAGMA user_version") ?? 0 }
            if existing > Self.schemaVersion {
                throw StoreError("\(path): database schema version \(existing) is newer than this build's \(Self.schemaVersion); use a newer fedcoord")
            }
            let foreign = try queue.read { db in
                try db.tableExists("grdb_migrations") == false && (try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table'")).isEmpty == false
            }
            if foreign { throw StoreError("\(path): not a fedcoord database (it has other tables)") }
            try Self.migrator.migrate(queue)
        } catch let error as StoreError {
            throw error
        } catch let error as DatabaseError {
            throw StoreError("\(path): \(error.message ?? "SQLite error \(error.resultCode)")")
        }
    }

    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE runs (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    configuration TEXT NOT NULL,
                    started_at REAL NOT NULL
                );
                CREATE TABLE rounds (
                    number INTEGER PRIMARY KEY,
                    state TEXT NOT NULL CHECK (state IN ('committed')),
                    started_at REAL NOT NULL,
                    ended_at REAL NOT NULL,
                    selected INTEGER NOT NULL,
                    completed INTEGER NOT NULL,
                    dropped INTEGER NOT NULL,
                    refused INTEGER NOT NULL,
                    bytes_up INTEGER NOT NULL,
                    bytes_down INTEGER NOT NULL,
                    training_loss REAL NOT NULL,
                    test_accuracy REAL,
                    test_loss REAL,
                    model_sha256 TEXT NOT NULL
                );
                CREATE TABLE checkpoints (
                    round INTEGER PRIMARY KEY REFERENCES rounds(number),
                    model_version INTEGER NOT NULL,
                    model BLOB NOT NULL,
                    model_sha256 TEXT NOT NULL,
                    optimizer_m BLOB NOT NULL,
                    optimizer_v BLOB NOT NULL
                );
                CREATE TABLE participations (
                    round INTEGER NOT NULL REFERENCES rounds(number),
                    client TEXT NOT NULL,
                    state TEXT NOT NULL CHECK (state IN ('accepted', 'refused')),
                    bytes INTEGER NOT NULL,
                    examples INTEGER NOT NULL,
                    local_loss REAL,
                    codec TEXT NOT NULL,
                    error_code INTEGER,
                    duration_seconds REAL
                );
                CREATE INDEX participations_by_round ON participations(round);
                CREATE TABLE clients (
                    id TEXT PRIMARY KEY,
                    first_seen REAL NOT NULL,
                    last_seen REAL NOT NULL,
                    updates INTEGER NOT NULL DEFAULT 0,
                    refusals INTEGER NOT NULL DEFAULT 0,
                    bytes_up INTEGER NOT NULL DEFAULT 0,
                    examples INTEGER NOT NULL DEFAULT 0
                );
                CREATE TABLE events (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    at REAL NOT NULL,
                    kind TEXT NOT NULL,
                    client TEXT,
                    message TEXT NOT NULL
                );
                PRAGMA user_version = 1;
                """)
        }
        migrator.registerMigration("v2") { db in
            // Registered clients (only their public keys), and participation states for
            // simulated devices (dropped, late).
            try db.execute(sql: """
                CREATE TABLE credentials (
                    id TEXT PRIMARY KEY,
                    public_key TEXT NOT NULL,
                    created_at REAL NOT NULL,
                    revoked_at REAL
                );
                CREATE TABLE participations_v2 (
                    round INTEGER NOT NULL REFERENCES rounds(number),
                    client TEXT NOT NULL,
                    state TEXT NOT NULL CHECK (state IN ('accepted', 'refused', 'dropped', 'late')),
                    bytes INTEGER NOT NULL,
                    examples INTEGER NOT NULL,
                    local_loss REAL,
                    codec TEXT NOT NULL,
                    error_code INTEGER,
                    duration_seconds REAL
                );
                INSERT INTO participations_v2 SELECT * FROM participations;
                DROP TABLE participations;
                ALTER TABLE participations_v2 RENAME TO participations;
                CREATE INDEX participations_by_round ON participations(round);
                PRAGMA user_version = 2;
                """)
        }
        migrator.registerMigration("v3") { db in
            // The trust aggregator's record of each client, committed with the round that
            // changed it, so a restarted coordinator does not forget its attackers.
            try db.execute(sql: """
                CREATE TABLE trust (
                    client TEXT PRIMARY KEY,
                    trust REAL NOT NULL,
                    updates INTEGER NOT NULL
                );
                PRAGMA user_version = 3;
                """)
        }
        migrator.registerMigration("v4") { db in
            // Tasks other than classification: the headline metric by name (test_accuracy is
            // kept for accuracy runs and earlier readers; it is NULL for other metrics).
            try db.execute(sql: """
                ALTER TABLE rounds ADD COLUMN test_metric REAL;
                ALTER TABLE rounds ADD COLUMN metric TEXT NOT NULL DEFAULT 'accuracy';
                UPDATE rounds SET test_metric = test_accuracy;
                PRAGMA user_version = 4;
                """)
        }
        return migrator
    }

    // MARK: Registered clients

    /// Registers `id` with its public key. An id that is registered and not revoked is refused;
    /// a revoked id may be registered again (with a new key).
    public func addCredential(id: String, publicKey: String) throws {
        try write { db in
            if let revoked = try Row.fetchOne(db, sql: "SELECT revoked_at FROM credentials WHERE id = ?", arguments: [id]) {
                guard (revoked["revoked_at"] as Double?) != nil else { throw StoreError("client \"\(id)\" is already registered (revoke it first to issue a new secret)") }
            }
            try db.execute(
                sql: "INSERT OR REPLACE INTO credentials (id, public_key, created_at, revoked_at) VALUES (?, ?, ?, NULL)",
                arguments: [id, publicKey, Date().timeIntervalSince1970])
        }
    }

    /// Marks `id` revoked; it can no longer authenticate.
    public func revokeCredential(id: String) throws {
        try write { db in
            try db.execute(sql: "UPDATE credentials SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", arguments: [Date().timeIntervalSince1970, id])
            guard db.changesCount == 1 else {
                let known = try Bool.fetchOne(db, sql: "SELECT 1 FROM credentials WHERE id = ?", arguments: [id]) ?? false
                throw StoreError(known ? "client \"\(id)\" is already revoked" : "no client \"\(id)\" is registered")
            }
        }
    }

    /// A registered client's public key and whether it was revoked; nil when unknown.
    public func credential(id: String) throws -> (publicKey: String, revoked: Bool)? {
        try read { db in
            try Row.fetchOne(db, sql: "SELECT public_key, revoked_at FROM credentials WHERE id = ?", arguments: [id]).map {
                ($0["public_key"], ($0["revoked_at"] as Double?) != nil)
            }
        }
    }

    /// Every registered client, by id.
    public func credentials() throws -> [(id: String, publicKey: String, createdAt: Date, revokedAt: Date?)] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT id, public_key, created_at, revoked_at FROM credentials ORDER BY id").map {
                ($0["id"], $0["public_key"], Date(timeIntervalSince1970: $0["created_at"]), ($0["revoked_at"] as Double?).map(Date.init(timeIntervalSince1970:)))
            }
        }
    }

    /// Ids revoked so far (the coordinator disconnects them).
    public func revokedIDs() throws -> Set<String> {
        try read { db in Set(try String.fetchAll(db, sql: "SELECT id FROM credentials WHERE revoked_at IS NOT NULL")) }
    }

    /// Records the run's configuration the first time; later opens keep the original.
    public func recordRun(configuration: String) throws {
        try write { db in
            try db.execute(sql: "INSERT OR IGNORE INTO runs (id, configuration, started_at) VALUES (1, ?, ?)",
                           arguments: [configuration, Date().timeIntervalSince1970])
        }
    }

    /// Commits a round: its row, its participations, its checkpoint and the trust records it
    /// changed (client → trust and update count), together or not at all; then drops
    /// checkpoints the retention policy no longer keeps.
    public func commit(
        _ row: RoundRow, checkpoint: Checkpoint, participations: [Participation] = [],
        trust: [String: (trust: Double, updates: Int)] = [:], retention: RetentionPolicy = RetentionPolicy()
    ) throws {
        try write { db in
            try db.inTransaction {
                for (client, record) in trust {
                    try db.execute(sql: "INSERT OR REPLACE INTO trust (client, trust, updates) VALUES (?, ?, ?)",
                                   arguments: [client, record.trust, record.updates])
                }
                try db.execute(sql: """
                    INSERT INTO rounds (number, state, started_at, ended_at, selected, completed, dropped, refused, bytes_up, bytes_down,
                                        training_loss, test_accuracy, test_loss, model_sha256, test_metric, metric)
                    VALUES (?, 'committed', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [row.round, row.startedAt.timeIntervalSince1970, row.endedAt.timeIntervalSince1970,
                                     row.selected, row.completed, max(0, row.selected - row.completed), row.refused, row.uplinkBytes, row.downlinkBytes,
                                     row.trainingLoss, row.metric == "accuracy" ? row.testMetric : nil, row.testLoss, checkpoint.modelSHA256,
                                     row.testMetric, row.metric])
                try db.execute(sql: """
                    INSERT INTO checkpoints (round, model_version, model, model_sha256, optimizer_m, optimizer_v)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """, arguments: [checkpoint.round, Int(checkpoint.modelVersion), Self.blob(checkpoint.model),
                                     checkpoint.modelSHA256, Self.blob(checkpoint.optimizerM), Self.blob(checkpoint.optimizerV)])
                let now = row.endedAt.timeIntervalSince1970
                for p in participations {
                    try db.execute(sql: """
                        INSERT INTO participations (round, client, state, bytes, examples, local_loss, codec, error_code, duration_seconds)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """, arguments: [row.round, p.client, p.state, p.bytes, p.examples, p.localLoss, p.codec, p.errorCode, p.durationSeconds])
                    // Dropped and late participations are neither updates nor refusals.
                    let accepted = p.state == "accepted" ? 1 : 0
                    let refused = p.state == "refused" ? 1 : 0
                    try db.execute(sql: """
                        INSERT INTO clients (id, first_seen, last_seen, updates, refusals, bytes_up, examples) VALUES (?, ?, ?, ?, ?, ?, ?)
                        ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen, updates = updates + excluded.updates,
                            refusals = refusals + excluded.refusals, bytes_up = bytes_up + excluded.bytes_up, examples = examples + excluded.examples
                        """, arguments: [p.client, now, now, accepted, refused, p.bytes, p.examples])
                    if refused == 1 {
                        try db.execute(sql: "INSERT INTO events (at, kind, client, message) VALUES (?, 'refusal', ?, ?)",
                                       arguments: [now, p.client, "round \(row.round): update refused with error \(p.errorCode ?? 0)"])
                    }
                }
                try db.execute(sql: """
                    DELETE FROM checkpoints
                    WHERE round NOT IN (SELECT round FROM checkpoints ORDER BY round DESC LIMIT ?) AND round % ? != 0
                    """, arguments: [retention.keepLast, retention.keepEvery])
                return .commit
            }
        }
    }

    /// The trust aggregator's records, by client.
    public func trustRecords() throws -> [String: (trust: Double, updates: Int)] {
        try read { db in
            var records: [String: (trust: Double, updates: Int)] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT client, trust, updates FROM trust") {
                records[row["client"]] = (row["trust"], row["updates"])
            }
            return records
        }
    }

    /// Logs an event (error, refusal, restart).
    public func recordEvent(kind: String, client: String? = nil, message: String) throws {
        try write { db in
            try db.execute(sql: "INSERT INTO events (at, kind, client, message) VALUES (?, ?, ?, ?)",
                           arguments: [Date().timeIntervalSince1970, kind, client, message])
        }
    }

    /// The newest committed checkpoint, verified against its SHA-256, or nil for a new run.
    public func lastCheckpoint() throws -> Checkpoint? {
        try read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM checkpoints ORDER BY round DESC LIMIT 1") else { return nil }
            let model = Self.floats(row["model"])
            let checkpoint = Checkpoint(
                round: row["round"], modelVersion: UInt32(row["model_version"] as Int), model: model,
                optimizerM: Self.floats(row["optimizer_m"]), optimizerV: Self.floats(row["optimizer_v"]),
                modelSHA256: row["model_sha256"])
            guard Self.sha256(model) == checkpoint.modelSHA256 else {
                throw StoreError("\(path): checkpoint of round \(checkpoint.round) does not match its SHA-256")
            }
            return checkpoint
        }
    }

    /// Committed rounds, oldest first.
    public func rounds() throws -> [RoundRow] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM rounds ORDER BY number").map { row in
                RoundRow(
                    round: row["number"], startedAt: Date(timeIntervalSince1970: row["started_at"]),
                    endedAt: Date(timeIntervalSince1970: row["ended_at"]), selected: row["selected"],
                    completed: row["completed"], refused: row["refused"], uplinkBytes: row["bytes_up"],
                    downlinkBytes: row["bytes_down"], trainingLoss: row["training_loss"],
                    testMetric: row["test_metric"], testLoss: row["test_loss"], metric: row["metric"])
            }
        }
    }

    /// The participations of a round.
    public func participations(round: Int) throws -> [Participation] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM participations WHERE round = ? ORDER BY rowid", arguments: [round]).map { row in
                Participation(client: row["client"], state: row["state"], bytes: row["bytes"], examples: row["examples"],
                              localLoss: row["local_loss"], codec: row["codec"], errorCode: row["error_code"],
                              durationSeconds: row["duration_seconds"])
            }
        }
    }

    /// The checkpoint of `round`, if the retention policy kept it.
    public func checkpoint(round: Int) throws -> Checkpoint? {
        try read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM checkpoints WHERE round = ?", arguments: [round]) else { return nil }
            let model = Self.floats(row["model"])
            guard Self.sha256(model) == row["model_sha256"] as String else {
                throw StoreError("\(path): checkpoint of round \(round) does not match its SHA-256")
            }
            return Checkpoint(round: round, modelVersion: UInt32(row["model_version"] as Int), model: model,
                              optimizerM: Self.floats(row["optimizer_m"]), optimizerV: Self.floats(row["optimizer_v"]),
                              modelSHA256: row["model_sha256"])
        }
    }

    /// The configuration recorded when the run started (the model description), if any.
    public func runConfiguration() throws -> String? {
        try read { db in try String.fetchOne(db, sql: "SELECT configuration FROM runs WHERE id = 1") }
    }

    /// Per-client totals: id → (updates, refusals, bytes up, examples).
    public func clientTotals() throws -> [String: (updates: Int, refusals: Int, bytesUp: Int, examples: Int)] {
        try read { db in
            var result: [String: (updates: Int, refusals: Int, bytesUp: Int, examples: Int)] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT * FROM clients") {
                result[row["id"]] = (row["updates"], row["refusals"], row["bytes_up"], row["examples"])
            }
            return result
        }
    }

    /// Events of one kind (`refusal`, `restart`, ...), oldest first: (client, message).
    public func events(kind: String) throws -> [(client: String?, message: String)] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT client, message FROM events WHERE kind = ? ORDER BY id", arguments: [kind]).map { ($0["client"], $0["message"]) }
        }
    }

    /// Rolls the run back to the kept checkpoint of `round`: every later round, checkpoint and
    /// participation is deleted in one transaction, so the next start resumes from `round`.
    /// Trust records are per client, not per round, so they are cleared (the trust rule starts
    /// over). The rollback is recorded as an event. Returns the rounds discarded.
    @discardableResult
    public func rollBack(to round: Int) throws -> ClosedRange<Int>? {
        let kept = try checkpointRounds()
        guard kept.contains(round) else {
            throw StoreError("\(path): no checkpoint of round \(round) is kept; kept: \(kept.isEmpty ? "none" : kept.map(String.init).joined(separator: ", "))")
        }
        _ = try checkpoint(round: round) // verifies its SHA-256
        return try write { db in
            var discarded: ClosedRange<Int>?
            try db.inTransaction {
                let last = try Int.fetchOne(db, sql: "SELECT MAX(number) FROM rounds") ?? round
                if last > round { discarded = (round + 1)...last }
                try db.execute(sql: "DELETE FROM participations WHERE round > ?", arguments: [round])
                try db.execute(sql: "DELETE FROM checkpoints WHERE round > ?", arguments: [round])
                try db.execute(sql: "DELETE FROM rounds WHERE number > ?", arguments: [round])
                try db.execute(sql: "DELETE FROM trust")
                try db.execute(sql: "INSERT INTO events (at, kind, client, message) VALUES (?, 'rollback', NULL, ?)", arguments: [
                    Date().timeIntervalSince1970,
                    "rolled back to round \(round)" + (discarded.map { "; rounds \($0.lowerBound) to \($0.upperBound) discarded" } ?? "") + "; trust records cleared",
                ])
                return .commit
            }
            return discarded
        }
    }

    /// Rounds that still have a checkpoint.
    public func checkpointRounds() throws -> [Int] {
        try read { db in try Int.fetchAll(db, sql: "SELECT round FROM checkpoints ORDER BY round") }
    }

    /// Caps the file at `pages` database pages (SQLite's `max_page_count`), for tests that
    /// simulate a full disk.
    func setMaximumPageCount(_ pages: Int) throws {
        try write { db in _ = try Int.fetchOne(db, sql: "PRAGMA max_page_count = \(pages)") }
    }

    /// Hex SHA-256 of float32 values, little-endian.
    public static func sha256(_ values: [Float]) -> String {
        values.withUnsafeBytes { SHA256.hash(data: $0) }.map { String(format: "%02x", $0) }.joined()
    }

    private static func blob(_ values: [Float]) -> Data { values.withUnsafeBytes { Data($0) } }

    private static func floats(_ data: Data) -> [Float] {
        var values = [Float](repeating: 0, count: data.count / 4)
        _ = values.withUnsafeMutableBytes { data.copyBytes(to: $0) }
        return values
    }

    private func write<T>(_ body: (Database) throws -> T) throws -> T {
        do { return try queue.writeWithoutTransaction(body) } catch let error as DatabaseError {
            throw StoreError("\(path): write failed: \(error.message ?? "SQLite error \(error.resultCode)")")
        }
    }

    private func read<T>(_ body: (Database) throws -> T) throws -> T {
        do { return try queue.read(body) } catch let error as DatabaseError {
            throw StoreError("\(path): read failed: \(error.message ?? "SQLite error \(error.resultCode)")")
        }
    }
}

/// A database that cannot be used, naming the file and the problem.
public struct StoreError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
