import FedCodec
import FedModel
import Foundation
import Testing
@testable import FedSim

@Suite struct DeviceModelTests {
    func configuration(_ change: (inout SimulationConfiguration) -> Void = { _ in }) -> SimulationConfiguration {
        var c = SimulationConfiguration()
        c.clients = 40
        c.fraction = 0.25
        c.rounds = 3
        c.learningRate = 0.1
        c.seed = 9
        c.devices.computeSpeed = Distribution(.logNormal(median: 100, sigma: 1))
        c.devices.uplinkMbps = Distribution(.uniform(low: 1, high: 20))
        c.devices.downlinkMbps = Distribution(.constant(50))
        change(&c)
        return c
    }

    @Test(arguments: [
        ("250", Distribution.Kind.constant(250)),
        ("constant:3.5", .constant(3.5)),
        ("uniform:1,4", .uniform(low: 1, high: 4)),
        ("lognormal: 200, 0.8", .logNormal(median: 200, sigma: 0.8)),
    ])
    func distributionsParse(text: String, kind: Distribution.Kind) throws {
        #expect(try Distribution(parsing: text).kind == kind)
    }

    @Test(arguments: ["", "fast", "-3", "0", "uniform:4,1", "uniform:1", "lognormal:100", "gamma:1,2", "uniform:1,nan"])
    func badDistributionsAreRefused(text: String) {
        #expect(throws: ConfigurationError.self) { try Distribution(parsing: text) }
    }

    @Test func samplesStayInTheirRange() {
        var generator = SeededGenerator(seed: 1, stream: 2)
        let uniform = Distribution(.uniform(low: 2, high: 5))
        let values = (0..<2000).map { _ in uniform.sample(&generator) }
        #expect(values.allSatisfy { $0 >= 2 && $0 <= 5 })
        let logNormal = Distribution(.logNormal(median: 100, sigma: 0.5))
        let sorted = (0..<4001).map { _ in logNormal.sample(&generator) }.sorted()
        #expect(abs(sorted[2000] - 100) < 5, "median \(sorted[2000])")
    }

    @Test func overSelectionKeepsTheFirstArrivalsAndCountsTheRestLate() throws {
        let c = configuration { $0.devices.overSelection = 1.5 }
        let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        let report = try simulation.run()
        for round in report.rounds {
            #expect(round.selected == 15)
            #expect(round.clients == 10)
            #expect(round.late == 5)
            #expect(round.dropped == 0)
            #expect(round.simulatedSeconds! > 0)
        }
        #expect(report.summary.simulatedSeconds! > 0)
        // The kept ten are the ten fastest: the round lasts as long as the tenth arrival,
        // which is at least as long as a device needs to train its 150 examples at the top speed.
        let slowest = report.rounds.map { $0.simulatedSeconds! }
        #expect(slowest.allSatisfy { $0 < 10_000 })
    }

    @Test func deadlineCutsSlowDevicesAndBoundsTheRound() throws {
        // 150 examples per client; median 100 examples/s: about half the devices need over 1.5 s.
        let c = configuration { $0.devices.roundDeadline = 1.5 }
        let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        let report = try simulation.run()
        #expect(report.rounds.contains { $0.late > 0 })
        for round in report.rounds {
            #expect(round.clients + round.late == 10)
            #expect(round.simulatedSeconds! <= 1.5)
        }
    }

    @Test func droppedAndOfflineDevicesAreNotAggregated() throws {
        let c = configuration { $0.devices.dropout = 0.4; $0.devices.availability = 0.5; $0.rounds = 4 }
        let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        for round in 1...4 {
            let selected = simulation.sampleClients(round: round)
            #expect(selected.allSatisfy { c.devices.isAvailable(client: $0, round: round, seed: c.seed) })
        }
        let report = try simulation.run()
        #expect(report.rounds.reduce(0) { $0 + $1.dropped } > 0)
        for round in report.rounds { #expect(round.clients == round.selected - round.dropped) }
        #expect(report.rounds.last!.testMetric! > 0.5)
    }

    @Test func virtualClockResultsDoNotDependOnThreads() throws {
        func run(threads: Int) throws -> ([Float], [Double?]) {
            let c = configuration { $0.threads = threads; $0.devices.overSelection = 1.3; $0.devices.dropout = 0.2; $0.devices.roundDeadline = 3; $0.codec = try! CodecSpec(parsing: "q8") }
            let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
            let report = try simulation.run()
            return (simulation.global, report.rounds.map(\.simulatedSeconds))
        }
        let one = try run(threads: 1)
        let two = try run(threads: 2)
        #expect(one.0 == two.0)
        #expect(one.1 == two.1)
    }

    @Test func scenarioKeysParseAndAreValidated() throws {
        let c = try SimulationConfiguration.parse("""
            compute_speed = "lognormal:200,0.8"
            uplink_mbps = 2
            downlink_mbps = "uniform:5,50"
            availability = 0.8
            dropout = 0.1
            over_selection = 1.3
            round_deadline = 30
            """, source: "test")
        #expect(c.devices.computeSpeed == Distribution(.logNormal(median: 200, sigma: 0.8)))
        #expect(c.devices.uplinkMbps == Distribution(.constant(2)))
        #expect(c.devices.overSelection == 1.3)
        try c.validate()
        for (text, message) in [
            ("round_deadline = 10", "round_deadline"), ("availability = 0", "availability"), ("dropout = 1", "dropout"),
            ("over_selection = 0.5", "over_selection"), ("compute_speed = \"fast\"", "compute_speed"),
            ("compute_speed = 5\ntransport = \"tcp\"", "transport tcp"),
        ] {
            let error = #expect(throws: ConfigurationError.self) {
                try SimulationConfiguration.parse(text, source: "test").validate()
            }
            #expect(error?.description.contains(message) == true, "\(error?.description ?? "")")
        }
    }

    @Test func bundledDeviceScenarioIsValid() throws {
        let c = try SimulationConfiguration.load(contentsOf: repositoryRoot.appendingPathComponent("Simulations/mnist-2nn-devices.toml"))
        try c.validate()
        #expect(c.devices.hasClock)
    }
}
