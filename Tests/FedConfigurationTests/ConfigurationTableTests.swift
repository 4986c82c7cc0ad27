import FedConfiguration
import FedCoordinator
import FedModel
import FedSim
import Foundation
import Testing

/// One reader for every tool: the same names, normalisations and errors in fedsim's
/// scenarios and fedcoord's configuration.
struct ConfigurationTableTests {
    func coordinatorFile(_ text: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("coord-\(UUID().uuidString).toml")
        try (text + "\n[clients]\na = \"fedpk1:\(String(repeating: "ab", count: 32))\"\n").write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    @Test(arguments: ["multi_krum", "multi-krum", "Multi-Krum"]) func bothToolsReadTheSameAggregatorNames(_ name: String) throws {
        let scenario = try SimulationConfiguration.parse("aggregator = \"\(name)\"", source: "s.toml")
        try scenario.validate()
        #expect(scenario.aggregation.rule == .multiKrum)
        let url = try coordinatorFile("aggregator = \"\(name)\"\nnorm_bound_action = \"Refuse\"")
        defer { try? FileManager.default.removeItem(at: url) }
        let (coordinator, _) = try CoordinatorConfiguration.load(contentsOf: url)
        #expect(coordinator.aggregation.rule == .multiKrum)
        #expect(!coordinator.aggregation.clipToNormBound)
    }

    @Test func errorsNameTheFileTheKeyAndTheValue() throws {
        let url = try coordinatorFile("aggregator = \"mean\"")
        defer { try? FileManager.default.removeItem(at: url) }
        let error = #expect(throws: ConfigurationError.self) { try CoordinatorConfiguration.load(contentsOf: url) }
        let text = error?.description ?? ""
        #expect(text.contains(url.path) && text.contains("aggregator") && text.contains("\"mean\"") && text.contains("multi_krum"), "\(text)")
        let typed = #expect(throws: ConfigurationError.self) { try SimulationConfiguration.parse("rounds = \"ten\"", source: "s.toml") }
        #expect(typed?.description == "s.toml: \"rounds\" must be an integer, got \"ten\"", "\(typed?.description ?? "")")
        let attack = #expect(throws: ConfigurationError.self) { try SimulationConfiguration.parse("attack = \"bribe\"", source: "s.toml") }
        #expect(attack?.description == "s.toml: attack must be one of sign_flip, scale, noise or label_flip, got \"bribe\"")
    }

    /// A top-k or error-feedback downlink would ship a model with most weights zeroed; codec
    /// specs with conflicting or out-of-range options are refused naming the option.
    @Test(arguments: [
        ("downlink = \"topk:0.5+fp16\"", "top-k"), ("downlink = \"q8+ef\"", "error feedback"),
        ("codec = \"q8+raw+z3\"", "\"z3\""), ("codec = \"fp16+sr\"", "\"sr\""), ("codec = \"q8+g0\"", "\"g0\""),
    ])
    func badCodecSpecsAreRefusedByBothTools(line: String, named: String) throws {
        let url = try coordinatorFile(line)
        defer { try? FileManager.default.removeItem(at: url) }
        let error = #expect(throws: ConfigurationError.self) { try CoordinatorConfiguration.load(contentsOf: url) }
        #expect(error?.description.contains(named) == true, "\(error?.description ?? "")")
        #expect(throws: (any Error).self) { try SimulationConfiguration.parse(line, source: "s.toml").validate() }
    }

    @Test func choicesAreClosedSets() throws {
        #expect(Transport(configurationName: "TCP") == .tcp)
        #expect(Transport(configurationName: "udp") == nil)
        #expect(Attack(configurationName: "label-flip") == .labelFlip)
        #expect(ServerOptimizer.Kind(configurationName: "FedAdam") == .fedAdam)
        #expect(NormBoundAction(configurationName: "ignore") == nil)
    }

    @Test func pathsAreResolvedAgainstTheFile() throws {
        let table = try ConfigurationTable(parsing: "data = \"mnist\"\nabs = \"/x/y\"", source: "t", directory: URL(fileURLWithPath: "/etc/fed"), knownKeys: ["data", "abs"])
        #expect(try table.path("data") == "/etc/fed/mnist")
        #expect(try table.path("abs") == "/x/y")
        #expect(throws: ConfigurationError.self) { try ConfigurationTable(parsing: "flavour = 1", source: "t", knownKeys: ["data"]) }
        #expect(throws: ConfigurationError.self) { try table.count("data") }
    }

    @Test func theModelIsBuiltByOneFunction() throws {
        let dense = try ModelSpec.configured(model: "2nn", layers: ["dense:50", "relu", "dense:10"])
        #expect(dense.input == .vector(784) && dense.classes == 10)
        let conv = try ModelSpec.configured(model: "2nn", layers: ["conv5x5:4", "maxpool2", "flatten", "dense:10"])
        #expect(conv.input == TensorShape(height: 28, width: 28, channels: 1))
        #expect(try ModelSpec.configured(model: "cnn", layers: []) == .mnistCNN)
        #expect(throws: ConfigurationError.self) { try ModelSpec.configured(model: "resnet", layers: []) }
        #expect(try SimulationConfiguration.parse("layers = [\"dense:10\"]", source: "s").modelSpec() == ModelSpec.configured(model: "2nn", layers: ["dense:10"]))
    }
}
