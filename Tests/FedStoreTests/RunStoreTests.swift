import Foundation
import Testing
@testable import FedStore

func temporaryDatabase() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("fedstore-\(UUID().uuidString).sqlite").path
}

func row(_ round: Int) -> RoundRow {
    RoundRow(round: round, startedAt: Date(), endedAt: Date(), selected: 10, completed: 9, refused: 1,
             uplinkBytes: 1000, downlinkBytes: 2000, trainingLoss: 0.5, testMetric: 0.9, testLoss: 0.3)
}

func checkpoint(_ round: Int, _ model: [Float]) -> Checkpoint {
    Checkpoint(round: round, modelVersion: UInt32(round), model: model, optimizerM: [1, 2], optimizerV: [3],
               modelSHA256: RunStore.sha256(model))
}

@Suite struct RunStoreTests {
    @Test func committedRoundsSurviveReopening() throws {
        let path = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            let store = try RunStore(path: path)
            try store.recordRun(configuration: "{}")
            #expect(try store.lastCheckpoint() == nil)
            try store.commit(row(1), checkpoint: checkpoint(1, [1, 2, 3]))
            try store.commit(row(2), checkpoint: checkpoint(2, [4, 5, 6]))
        }
        let reopened = try RunStore(path: path)
        let last = try #require(try reopened.lastCheckpoint())
        #expect(last.round == 2 && last.model == [4, 5, 6] && last.optimizerM == [1, 2] && last.optimizerV == [3])
        #expect(try reopened.rounds().map(\.round) == [1, 2])
    }

    /// The headline metric is stored by name; `test_accuracy` holds only accuracies (NULL for
    /// an RMSE), so an earlier reader never mistakes an error for an accuracy.
    @Test func theMetricIsRecordedByName() throws {
        let path = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try RunStore(path: path)
        var regression = row(1)
        regression.testMetric = 52.5
        regression.metric = "rmse"
        try store.commit(regression, checkpoint: checkpoint(1, [1]))
        try store.commit(row(2), checkpoint: checkpoint(2, [2]))
        let rows = try store.rounds()
        #expect(rows.map(\.metric) == ["rmse", "accuracy"] && rows.map(\.testMetric) == [52.5, 0.9])
        let queue = try DatabaseQueue(path: path)
        let accuracies = try queue.read { try Double?.fetchAll($0, sql: "SELECT test_accuracy FROM rounds ORDER BY number") }
        #expect(accuracies == [nil, 0.9])
    }

    @Test func aRoundIsCommittedOnlyOnce() throws {
        let path = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try RunStore(path: path)
        try store.commit(row(1), checkpoint: checkpoint(1, [1]))
        #expect(throws: StoreError.self) { try store.commit(row(1), checkpoint: checkpoint(1, [2])) }
        // The failed commit left neither a second row nor a changed checkpoint.
        #expect(try store.rounds().count == 1)
        #expect(try store.lastCheckpoint()?.model == [1])
    }

    @Test func trustRecordsAreCommittedWithTheirRoundAndSurviveReopening() throws {
        let path = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            let store = try RunStore(path: path)
            try store.commit(row(1), checkpoint: checkpoint(1, [1]), trust: ["a": (0.5, 1), "x": (-0.4, 1)])
            try store.commit(row(2), checkpoint: checkpoint(2, [2]), trust: ["x": (-0.9, 2)])
            // A failed commit (the round exists) changes no record.
            #expect(throws: StoreError.self) { try store.commit(row(2), checkpoint: checkpoint(2, [3]), trust: ["a": (9, 9)]) }
        }
        let records = try RunStore(path: path).trustRecords()
        #expect(records.count == 2)
        #expect(records["a"]?.trust == 0.5 && records["a"]?.updates == 1)
        #expect(records["x"]?.trust == -0.9 && records["x"]?.updates == 2)
    }

    @Test func retentionKeepsTheLastNAndEveryMth() throws {
        let path = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try RunStore(path: path)
        for round in 1...25 {
            try store.commit(row(round), checkpoint: checkpoint(round, [Float(round)]), retention: RetentionPolicy(keepLast: 3, keepEvery: 10))
        }
        #expect(try store.checkpointRounds() == [10, 20, 23, 24, 25])
        #expect(try store.rounds().count == 25, "round rows are never dropped")
        #expect(try store.lastCheckpoint()?.round == 25)
    }

    @Test func participationsAreCommittedWithTheirRound() throws {
        let path = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try RunStore(path: path)
        let people = [
            Participation(client: "a", state: "accepted", bytes: 100, examples: 600, localLoss: 0.4, codec: "q8", errorCode: nil),
            Participation(client: "b", state: "refused", bytes: 0, examples: 0, localLoss: nil, codec: "q8", errorCode: 10),
        ]
        try store.commit(row(1), checkpoint: checkpoint(1, [1]), participations: people)
        #expect(try store.participations(round: 1) == people)
        try store.commit(row(2), checkpoint: checkpoint(2, [1]), participations: [people[0]])
        let totals = try store.clientTotals()
        #expect(totals["a"]?.updates == 2 && totals["a"]?.bytesUp == 200 && totals["a"]?.examples == 1200)
        #expect(totals["b"]?.updates == 0 && totals["b"]?.refusals == 1)
        #expect(try store.events(kind: "refusal").map(\.client) == ["b"])
        // A failed commit (duplicate round) adds no participation rows either.
        #expect(throws: StoreError.self) { try store.commit(row(1), checkpoint: checkpoint(1, [1]), participations: people) }
        #expect(try store.participations(round: 1).count == 2)
        #expect(try store.clientTotals()["a"]?.updates == 2, "the failed commit changed no totals")
    }

    @Test func aRunRollsBackToAKeptCheckpoint() throws {
        let path = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try RunStore(path: path)
        let someone = Participation(client: "a", state: "accepted", bytes: 1, examples: 1, localLoss: 0.1, codec: "q8", errorCode: nil)
        for round in 1...5 {
            try store.commit(row(round), checkpoint: checkpoint(round, [Float(round)]), participations: [someone],
                             trust: ["a": (trust: Double(round), updates: round)])
        }
        #expect(try store.rollBack(to: 3) == 4...5)
        #expect(try store.lastCheckpoint()?.round == 3 && store.lastCheckpoint()?.model == [3])
        #expect(try store.rounds().map(\.round) == [1, 2, 3])
        #expect(try store.participations(round: 4).isEmpty)
        #expect(try store.trustRecords().isEmpty, "trust records are per client, not per round: cleared")
        #expect(try store.events(kind: "rollback").map(\.message) == ["rolled back to round 3; rounds 4 to 5 discarded; trust records cleared"])
        // The run goes on from round 4.
        try store.commit(row(4), checkpoint: checkpoint(4, [40]), participations: [])
        #expect(try store.lastCheckpoint()?.model == [40])
        // A round whose checkpoint is not kept is refused with the kept ones listed.
        let error = #expect(throws: StoreError.self) { try store.rollBack(to: 9) }
        #expect("\(error!)".contains("no checkpoint of round 9 is kept; kept: 1, 2, 3, 4"), "\(error!)")
    }

    @Test func droppedAndLateParticipationsAreNotRefusals() throws {
        let path = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try RunStore(path: path)
        try store.commit(row(1), checkpoint: checkpoint(1, [1]), participations: [
            Participation(client: "c", state: "dropped", bytes: 0, examples: 0, localLoss: nil, codec: "q8", errorCode: nil),
            Participation(client: "d", state: "late", bytes: 50, examples: 600, localLoss: 0.5, codec: "q8", errorCode: 11),
        ])
        let totals = try store.clientTotals()
        #expect(totals["c"]?.updates == 0 && totals["c"]?.refusals == 0)
        #expect(totals["d"]?.updates == 0 && totals["d"]?.refusals == 0 && totals["d"]?.bytesUp == 50)
        #expect(try store.events(kind: "refusal").isEmpty, "no refusal events for dropped or late clients")
    }

    @Test func newerOrForeignDatabasesAreRefused() throws {
        let path = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: path) }
        _ = try RunStore(path: path)
        // Pretend a newer build wrote it.
        let raw = try RunStoreTestAccess.execute(path: path, sql: "PRAGMA user_version = 99")
        _ = raw
        #expect { try RunStore(path: path) } throws: { "\($0)".contains("newer") }

        let foreign = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: foreign) }
        _ = try RunStoreTestAccess.execute(path: foreign, sql: "CREATE TABLE invoices (id INTEGER)")
        #expect { try RunStore(path: foreign) } throws: { "\($0)".contains("not a fedcoord database") }

        let garbage = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: garbage) }
        try Data(repeating: 0x5A, count: 4096).write(to: URL(fileURLWithPath: garbage))
        #expect(throws: StoreError.self) { try RunStore(path: garbage) }
    }

    @Test func tamperedCheckpointIsDetected() throws {
        let path = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try RunStore(path: path)
        try store.commit(row(1), checkpoint: checkpoint(1, [1, 2]))
        _ = try RunStoreTestAccess.execute(path: path, sql: "UPDATE checkpoints SET model_sha256 = 'x'")
        #expect { try RunStore(path: path).lastCheckpoint() } throws: { "\($0)".contains("SHA-256") }
    }
}

import GRDB
enum RunStoreTestAccess {
    static func execute(path: String, sql: String) throws -> Bool {
        let queue = try DatabaseQueue(path: path)
        try queue.writeWithoutTransaction { try $0.execute(sql: sql) }
        return true
    }
}

@Suite struct RunPlotTests {
    @Test func chartHasBothPanelsAxesAndLegend() {
        let rounds = (1...12).map { r in
            RoundRow(round: r, startedAt: Date(), endedAt: Date(), selected: 10, completed: 10, refused: 0,
                     uplinkBytes: 1000 * r, downlinkBytes: 8000, trainingLoss: 1 / Double(r),
                     testMetric: 0.8 + Double(r) / 100, testLoss: 1 / Double(r))
        }
        let svg = RunPlot.svg(rounds: rounds, title: "run <1>")
        #expect(svg.hasPrefix("<svg") && svg.hasSuffix("</svg>\n"))
        #expect(svg.components(separatedBy: "<polyline").count - 1 == 4, "accuracy, loss, bytes up, bytes down")
        for text in ["test accuracy", "test loss", "bytes up", "bytes down", "round", "bytes per round", "run &lt;1&gt;"] {
            #expect(svg.contains(">\(text)<"), "missing \(text)")
        }
        // Rounds without evaluation leave gaps rather than crashing the chart.
        var sparse = rounds
        sparse[3].testMetric = nil
        #expect(RunPlot.svg(rounds: sparse, title: "x").contains("<polyline"))
        #expect(RunPlot.svg(rounds: [], title: "empty").hasSuffix("</svg>\n"))
    }
}

@Suite struct StoreFailureTests {
    /// A full disk, simulated with SQLite's page limit: the failing commit is refused with a
    /// clear error and the last committed round stays intact.
    @Test func fullDiskKeepsTheLastCommittedRound() throws {
        let path = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try RunStore(path: path)
        let model = [Float](repeating: 0.5, count: 20_000)
        try store.commit(row(1), checkpoint: checkpoint(1, model))
        let queue = try DatabaseQueue(path: path)
        let pages = try queue.read { try Int.fetchOne($0, sql: "PRAGMA page_count")! }
        // Limit the file to a little more than it holds now: the next checkpoint cannot fit.
        let limited = try RunStoreWithPageLimit(path: path, maxPages: pages + 5)
        var bigger = model
        bigger[0] = 1
        #expect { try limited.store.commit(row(2), checkpoint: checkpoint(2, bigger)) } throws: { "\($0)".contains("full") }
        let reopened = try RunStore(path: path)
        #expect(try reopened.lastCheckpoint()?.round == 1)
        #expect(try reopened.lastCheckpoint()?.model == model)
        #expect(try reopened.rounds().map(\.round) == [1])
    }

    @Test func lockedDatabaseIsAClearError() throws {
        let path = temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try RunStore(path: path, busyTimeout: 0.3)
        let other = try DatabaseQueue(path: path)
        try other.writeWithoutTransaction { db in
            try db.execute(sql: "BEGIN EXCLUSIVE")
            #expect { try store.commit(row(1), checkpoint: checkpoint(1, [1])) } throws: { "\($0)".contains("locked") }
            try db.execute(sql: "ROLLBACK")
        }
        try store.commit(row(1), checkpoint: checkpoint(1, [1]))
        #expect(try store.rounds().count == 1)
    }
}

/// A RunStore whose connection has a page limit (simulating a small disk).
struct RunStoreWithPageLimit {
    let store: RunStore
    init(path: String, maxPages: Int) throws {
        store = try RunStore(path: path)
        try store.setMaximumPageCount(maxPages)
    }
}
