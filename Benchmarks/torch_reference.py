#!/usr/bin/env python3
"""PyTorch CPU reference for fedbench: the same local training work (MNIST, batch 10,
one epoch of 600 examples, plain SGD) on the 2NN and the CNN, printed as examples/s.

Usage: torch_reference.py MNIST_DIR [--threads N] [--epochs N]
Prints one line per model: "<model> <examples_per_second>".

With --layers, instead times each kind of layer's forward and backward pass on a batch of 10,
on the shapes `fedbench --layers` uses (same names), and prints "<layer> <examples_per_second>".
"""
import argparse
import gzip
import struct
import time

import numpy as np
import torch
import torch.nn as nn


def load_images(path, count):
    with gzip.open(path, "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 2051
        data = np.frombuffer(f.read(count * rows * cols), dtype=np.uint8)
    return torch.from_numpy(data.astype(np.float32).reshape(count, 1, rows, cols) / 255.0)


def load_labels(path, count):
    with gzip.open(path, "rb") as f:
        magic, n = struct.unpack(">II", f.read(8))
        assert magic == 2049
        data = np.frombuffer(f.read(count), dtype=np.uint8)
    return torch.from_numpy(data.astype(np.int64))


def two_nn():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 7 * 64, 512), nn.ReLU(), nn.Linear(512, 10))


def epoch(model, optimizer, loss_fn, x, y, batch):
    perm = torch.randperm(x.shape[0])
    for start in range(0, x.shape[0], batch):
        idx = perm[start:start + batch]
        optimizer.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()


class LastState(nn.Module):
    """A one-layer GRU over a batch-first sequence, giving its last hidden state (fedbench's gru:H)."""

    def __init__(self, features, hidden):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)

    def forward(self, x):
        return self.gru(x)[1][0]


def layer_cases():
    """(name, input shape NCHW without the batch, module): fedbench --layers' cases."""
    return [
        ("dense784x200", (784,), nn.Linear(784, 200)),
        ("conv5x5-1x32", (1, 28, 28), nn.Conv2d(1, 32, 5, padding=2)),
        ("conv5x5-32x64", (32, 14, 14), nn.Conv2d(32, 64, 5, padding=2)),
        ("conv3x3-1x32", (1, 28, 28), nn.Conv2d(1, 32, 3, padding=1)),
        ("conv3x3s2-32x64", (32, 28, 28), nn.Conv2d(32, 64, 3, stride=2, padding=1)),
        ("conv1x1-32x64", (32, 14, 14), nn.Conv2d(32, 64, 1)),
        ("dwconv3x3-64", (64, 14, 14), nn.Conv2d(64, 64, 3, padding=1, groups=64)),
        ("dwconv3x3s2-32", (32, 28, 28), nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32)),
        ("maxpool2-32", (32, 28, 28), nn.MaxPool2d(2)),
        ("avgpool2-32", (32, 28, 28), nn.AvgPool2d(2)),
        ("globalavgpool-64", (64, 7, 7), nn.AdaptiveAvgPool2d(1)),
        ("groupnorm8-32", (32, 14, 14), nn.GroupNorm(8, 32)),
        ("relu-32", (32, 28, 28), nn.ReLU()),
        ("dropout0.25-32", (32, 14, 14), nn.Dropout(0.25)),
        ("embedding80x64-T20", (20,), nn.Embedding(80, 64)),
        ("gru64x128-T20", (20, 64), LastState(64, 128)),
    ]


def time_layers():
    """Forward and backward (input and parameter gradients) per layer, batch 10: the best of
    three timed runs of at least 0.2 s each."""
    for name, shape, module in layer_cases():
        module.train()
        if isinstance(module, nn.Embedding):
            x = torch.randint(0, module.num_embeddings, (10,) + shape)
        else:
            x = torch.rand((10,) + shape, requires_grad=True)
        with torch.no_grad():
            upstream = torch.rand_like(module(x))

        def step():
            if x.is_floating_point():
                x.grad = None
            module.zero_grad(set_to_none=True)
            module(x).backward(upstream)

        for _ in range(3):
            step()
        best = 0.0
        for _ in range(3):
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < 0.2:
                for _ in range(5):
                    step()
                count += 5
            best = max(best, count * 10 / (time.perf_counter() - start))
        print(f"{name} {best:.1f}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mnist_dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs-2nn", type=int, default=10)
    parser.add_argument("--epochs-cnn", type=int, default=2)
    parser.add_argument("--layers", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    if args.layers:
        time_layers()
        return
    x = load_images(f"{args.mnist_dir}/train-images-idx3-ubyte.gz", 600)
    y = load_labels(f"{args.mnist_dir}/train-labels-idx1-ubyte.gz", 600)
    for name, build, epochs in (("2nn", two_nn, args.epochs_2nn), ("cnn", cnn, args.epochs_cnn)):
        model = build()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        loss_fn = nn.CrossEntropyLoss()
        epoch(model, optimizer, loss_fn, x, y, 10)  # warm-up
        start = time.perf_counter()
        for _ in range(epochs):
            epoch(model, optimizer, loss_fn, x, y, 10)
        elapsed = time.perf_counter() - start
        print(f"{name} {600 * epochs / elapsed:.1f}", flush=True)


if __name__ == "__main__":
    main()
