import FedModel
import Foundation
import Testing
@testable import FedSim

@Suite struct AttackTests {
    func run(_ change: (inout SimulationConfiguration) -> Void) throws -> (Simulation, SimulationReport) {
        var c = SimulationConfiguration()
        c.clients = 20
        c.fraction = 0.5
        c.rounds = 4
        c.learningRate = 0.1
        c.seed = 5
        change(&c)
        let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        return (simulation, try simulation.run())
    }

    @Test func attackersAreAFixedSeededFraction() throws {
        let (simulation, _) = try run { $0.attackers = 0.2; $0.rounds = 1 }
        #expect(simulation.attackers.count == 4)
        let (again, _) = try run { $0.attackers = 0.2; $0.rounds = 1 }
        #expect(again.attackers == simulation.attackers)
    }

    @Test func scaledUpdatesWreckFedAvgButNotTheRobustRules() throws {
        let clean = try run { _ in }.1.summary.finalAccuracy!
        let attacked = try run { $0.attackers = 0.2; $0.attack = .scale; $0.attackScale = 10 }.1.summary.finalAccuracy!
        #expect(attacked < clean - 0.1, "FedAvg under attack \(attacked), clean \(clean)")
        for rule in ["median", "trimmed_mean", "multi_krum"] {
            let robust = try run { $0.attackers = 0.2; $0.attack = .scale; $0.aggregator = rule; $0.aggregation.byzantine = 2; $0.aggregation.trimBeta = 0.2 }
            #expect(robust.1.summary.finalAccuracy! > attacked + 0.1, "\(rule): \(robust.1.summary.finalAccuracy!) vs FedAvg \(attacked)")
        }
        let bounded = try run { $0.attackers = 0.2; $0.attack = .scale; $0.aggregation.normBound = 2 }
        #expect(bounded.1.summary.finalAccuracy! > attacked + 0.1)
    }

    @Test(arguments: ["sign_flip", "noise", "label_flip"])
    func everyAttackRunsAndIsReproducible(attack: String) throws {
        let (a, reportA) = try run { $0.attackers = 0.2; $0.attack = Attack(configurationName: attack)!; $0.aggregator = "median"; $0.rounds = 2 }
        let (b, _) = try run { $0.attackers = 0.2; $0.attack = Attack(configurationName: attack)!; $0.aggregator = "median"; $0.rounds = 2; $0.threads = 1 }
        #expect(a.global == b.global)
        #expect(reportA.rounds.allSatisfy { $0.clients == 10 })
    }

    @Test func theTrustRuleLeavesOutSignFlippersAndKeepsTheHonest() throws {
        let clean = try run { _ in }.1.summary.finalAccuracy!
        let fedAvg = try run { $0.attackers = 0.2; $0.attack = .signFlip }.1.summary.finalAccuracy!
        let (simulation, report) = try run { $0.attackers = 0.2; $0.attack = .signFlip; $0.aggregator = "trust"; $0.trustedExamples = 500 }
        let records = simulation.ledger.records
        #expect(!records.isEmpty)
        for (client, record) in records {
            if simulation.attackers.contains(simulation.clientIDs.firstIndex(of: client)!) {
                #expect(record.trust < 0, "attacker \(client): \(record)")
            } else {
                #expect(record.trust > 0, "honest \(client): \(record)")
            }
        }
        let trusted = report.summary.finalAccuracy!
        #expect(trusted > fedAvg, "trust \(trusted), FedAvg under attack \(fedAvg)")
        #expect(trusted > clean - 0.05, "trust \(trusted), clean \(clean)")
    }

    @Test func sleepersAttackFromTheirRoundAndLoseTheirTrust() throws {
        // Attackers honest for two rounds, then flipping: their trust is positive after round 2
        // and, for each one sampled since, lower; negative once it has sent two flipped updates.
        let (before, _) = try run { $0.attackers = 0.2; $0.attack = .signFlip; $0.aggregator = "trust"; $0.trustedExamples = 500; $0.attackFromRound = 3; $0.rounds = 2 }
        let (after, _) = try run { $0.attackers = 0.2; $0.attack = .signFlip; $0.aggregator = "trust"; $0.trustedExamples = 500; $0.attackFromRound = 3 }
        let sleepers = before.attackers.map { before.clientIDs[$0] }
        #expect(sleepers.allSatisfy { (before.ledger.records[$0]?.trust ?? 1) > 0 })
        var attacked = 0
        for sleeper in sleepers {
            let earlier = before.ledger.records[sleeper] ?? TrustLedger.Record()
            guard let later = after.ledger.records[sleeper], later.updates > earlier.updates else { continue }
            attacked += 1
            #expect(later.trust < (earlier.updates > 0 ? earlier.trust : 0), "\(sleeper): \(earlier) then \(later)")
            if later.updates - earlier.updates >= 2 { #expect(later.trust < 0, "\(sleeper): \(later)") }
        }
        #expect(attacked > 0)
        // Until round 3 the run is the honest one.
        let (honest, _) = try run { $0.aggregator = "trust"; $0.trustedExamples = 500; $0.rounds = 2 }
        #expect(honest.global == before.global)
    }

    @Test func centralDPRunsAndCostsAccuracyWithMoreNoise() throws {
        let light = try run { $0.aggregation.dpClip = 1; $0.aggregation.dpNoiseMultiplier = 0.01 }.1.summary.finalAccuracy!
        let heavy = try run { $0.aggregation.dpClip = 1; $0.aggregation.dpNoiseMultiplier = 1 }.1.summary.finalAccuracy!
        #expect(light > 0.7)
        #expect(heavy < light - 0.1, "noise 1: \(heavy), noise 0.01: \(light)")
    }

    @Test func badSettingsAreConfigurationErrors() {
        for (text, message) in [
            ("aggregator = \"mean\"", "aggregator must be one of"), ("attack = \"bribe\"", "attack must be one of"),
            ("attackers = 1.5", "attackers"), ("trim_beta = 0.5", "trim_beta"), ("dp_noise_multiplier = 1", "dp_clip"),
            ("norm_bound_action = \"ignore\"", "norm_bound_action"), ("attackers = 0.1\ntransport = \"tcp\"", "memory transport"),
            ("aggregator = \"trust\"\ntransport = \"tcp\"", "memory transport"), ("trusted_examples = 0", "trusted_examples"),
            ("trust_threshold = 1", "trust_threshold"), ("trust_decay = 1.5", "trust_decay"), ("attack_from_round = 0", "attack_from_round"),
        ] {
            let error = #expect(throws: ConfigurationError.self) { try SimulationConfiguration.parse(text, source: "t").validate() }
            #expect(error?.description.contains(message) == true, "\(error?.description ?? "")")
        }
    }
}
