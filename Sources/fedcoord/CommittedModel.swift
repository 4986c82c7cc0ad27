import FedCodec
import FedModel
import FedStore
import Foundation

/// The global model of a committed round, read from a run database (`export`, `distill`).
struct CommittedModel {
    let spec: ModelSpec
    let network: Network
    let round: Int
    let parameters: [Float]

    /// `round` nil means the last committed round; its checkpoint must still be kept.
    init(database: String, round: Int?) throws {
        let store = try RunStore(path: database)
        guard let description = try store.runConfiguration() else { throw StoreError("\(database): no run recorded") }
        spec = try ModelSpec(wireDescription: description)
        network = try Network(spec)
        let wanted = try round ?? (store.lastCheckpoint()?.round ?? 0)
        guard let checkpoint = try store.checkpoint(round: wanted) else {
            throw StoreError("\(database): no checkpoint for round \(wanted) (kept: \(try store.checkpointRounds().map(String.init).joined(separator: ", ")))")
        }
        self.round = wanted
        parameters = checkpoint.model
    }
}

/// Runs an offline command's body; what it can meet (a store, codec, data or model error)
/// becomes one line on standard error and exit status 1.
func runReportingErrors(_ body: () throws -> Void) {
    func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("fedcoord: error: \(message)\n".utf8))
        Foundation.exit(1)
    }
    do {
        try body()
    } catch let error as StoreError {
        fail(error.description)
    } catch let error as CodecError {
        fail("codec: \(error.message)")
    } catch let error as DataError {
        fail(error.description)
    } catch let error as ModelError {
        fail(error.description)
    } catch {
        fail("\(error)")
    }
}
