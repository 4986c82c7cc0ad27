import FedFuzz
import Testing

/// A short budget of the fuzzer that `fedbench --fuzz 1000000` runs at length: no parser may
/// answer a hostile input with anything but its typed error, or decode it to non-finite values.
@Suite struct FuzzTests {
    @Test(arguments: [1, 2, 3] as [UInt64])
    func decodersSurviveRandomAndMutatedInputs(seed: UInt64) {
        var driver = FuzzDriver(seed: seed)
        let report = driver.run(inputs: 20_000)
        #expect(report.findings.isEmpty, "\(report.findings.prefix(5))")
        #expect(report.inputs == 20_000)
        // Both targets ran, and both outcomes occurred: the corpus is not all garbage.
        #expect(report.perTarget["frames"] == 10_000 && report.perTarget["shards"] == 10_000)
        #expect(report.accepted > 500 && report.refused > 500, "\(report)")
        #expect(report.slowestInputSeconds < 1, "\(report)")
    }
}
