import FedModel
import Foundation

let dir = URL(fileURLWithPath: "Simulations/data/mnist")
let train = try MNIST.load(directory: dir, train: true)
for spec in [ModelSpec.mnist2NN, .mnistCNN] {
  for threads in [1, 2] {
    let net = try Network(spec)
    let trainer = LocalTrainer(network: net, batchCapacity: 10, threads: threads)
    var w = net.initialParameters(seed: 1)
    var g = SeededGenerator(seed: 3)
    let slice = DatasetSlice(dataset: train, indices: Array(0..<600))
    _ = trainer.train(parameters: &w, anchor: nil, data: slice, epochs: 1, batchSize: 10, sgd: SGD(learningRate: 0.05), generator: &g)
    let reps = spec == .mnist2NN ? 10 : 2
    let s = Date()
    var summary: TrainingSummary!
    for _ in 0..<reps {
    summary = trainer.train(parameters: &w, anchor: nil, data: slice, epochs: 1, batchSize: 10, sgd: SGD(learningRate: 0.05), generator: &g)
    }
    let dt = Date().timeIntervalSince(s)
    print(spec.layers.count, threads, "ex/s", Double(600*reps)/dt, "loss", summary.meanLoss)
  }
}
