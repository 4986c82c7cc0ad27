import ArgumentParser
import FedStore
import Foundation

extension FedCoord {
    struct Report: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the committed rounds of a run database as a table, JSON or CSV.")

        @Option(help: "The run database (fedcoord serve --db).") var db: String
        @Flag(help: "JSON instead of a table.") var json = false
        @Flag(help: "CSV instead of a table.") var csv = false
        @Option(help: "Also draw test accuracy, test loss and bytes per round into this SVG file.") var plot: String?

        func validate() throws {
            if json && csv { throw ValidationError("choose one of --json and --csv") }
            if !FileManager.default.fileExists(atPath: db) { throw ValidationError("no database at \(db)") }
        }

        func run() throws {
            let rounds: [RoundRow]
            do {
                rounds = try RunStore(path: db).rounds()
            } catch let error as StoreError {
                FileHandle.standardError.write(Data("fedcoord: error: \(error)\n".utf8))
                throw ExitCode(1)
            }
            if let plot {
                let svg = RunPlot.svg(rounds: rounds, title: "fedcoord run: \(URL(fileURLWithPath: db).lastPathComponent)")
                do { try svg.write(toFile: plot, atomically: true, encoding: .utf8) } catch {
                    FileHandle.standardError.write(Data("fedcoord: error: cannot write \(plot): \(error.localizedDescription)\n".utf8))
                    throw ExitCode(1)
                }
            }
            func value(_ x: Double?) -> String { x.map { String(format: "%.4f", $0) } ?? "" }
            let metric = rounds.first?.metric ?? "accuracy"
            if json {
                let objects: [[String: Any]] = rounds.map { r in
                    ["round": r.round, "selected": r.selected, "completed": r.completed, "refused": r.refused,
                     "uplink_bytes": r.uplinkBytes, "downlink_bytes": r.downlinkBytes, "training_loss": r.trainingLoss,
                     "metric": r.metric, "test_metric": r.testMetric as Any? ?? NSNull(),
                     "test_accuracy": (r.metric == "accuracy" ? r.testMetric : nil) as Any? ?? NSNull(), "test_loss": r.testLoss as Any? ?? NSNull(),
                     "seconds": r.endedAt.timeIntervalSince(r.startedAt)]
                }
                let data = try JSONSerialization.data(withJSONObject: ["rounds": objects], options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else if csv {
                print("round,selected,completed,refused,uplink_bytes,downlink_bytes,training_loss,test_\(metric),test_loss,seconds")
                for r in rounds {
                    print("\(r.round),\(r.selected),\(r.completed),\(r.refused),\(r.uplinkBytes),\(r.downlinkBytes),\(value(r.trainingLoss)),\(value(r.testMetric)),\(value(r.testLoss)),\(String(format: "%.3f", r.endedAt.timeIntervalSince(r.startedAt)))")
                }
            } else {
                print("round  updates  refused  " + metric.prefix(8).padding(toLength: 8, withPad: " ", startingAt: 0) + "  test loss  train loss   up bytes  down bytes  seconds")
                for r in rounds {
                    print(String(format: "%5d  %3d/%-3d  %7d  %8@  %9@  %10.4f  %9d  %10d  %7.2f",
                                 r.round, r.completed, r.selected, r.refused, value(r.testMetric), value(r.testLoss),
                                 r.trainingLoss, r.uplinkBytes, r.downlinkBytes, r.endedAt.timeIntervalSince(r.startedAt)))
                }
                print("\(rounds.count) committed rounds in \(db)")
                // A model search recorded here (fedsim search --db): its candidates and front.
                let searched = (try? RunStore(path: db).events(kind: "search")) ?? []
                if !searched.isEmpty {
                    print("model search (fedsim search): layers | parameters | exported bytes | rounds | metric")
                    for event in searched { print("  " + event.message) }
                }
                // Device classes by width: the last committed round's metric and updates per width.
                if let last = try? RunStore(path: db).events(kind: "widths").last {
                    print("by width, " + last.message)
                }
            }
        }
    }
}
