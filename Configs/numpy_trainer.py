#!/usr/bin/env python3
"""An external trainer for fedclient, in NumPy: what a device that already trains with its own
framework (PyTorch, TensorFlow, JAX) does, in the fewest lines. fedclient runs it once per
task with FEDL_TASK naming the task file (README, "External training code"):

    fedclient --trainer "python3 Configs/numpy_trainer.py" --data DEVICE_DIR ...

It reads the task (round, epochs, batch size, learning rate, which shards to train, the model
and its loss), the global model (one .npy per shard in model_dir), and the device's data
(x.npy and y.npy in the task's data directory); runs plain minibatch SGD; and writes each
trained shard to output_dir under the same name and result.json with the examples it trained
on and its mean loss. Models of dense and relu layers, with the softmax or mse loss.
"""
import json
import os
import sys

import numpy as np


def load_data(directory):
    for prefix in ("", "train_"):
        x_path = os.path.join(directory, f"{prefix}x.npy")
        if os.path.exists(x_path):
            x = np.load(x_path).astype(np.float32)
            y = np.load(os.path.join(directory, f"{prefix}y.npy"))
            return x.reshape(len(x), -1), y
    sys.exit(f"numpy_trainer: no x.npy in {directory}")


def main():
    task = json.load(open(os.environ["FEDL_TASK"]))
    layers = task["model"].split("|")[2].split(",")
    params = {s["name"]: np.load(os.path.join(task["model_dir"], s["name"] + ".npy")) for s in task["shards"]}
    dense = [name[: -len(".weight")] for name in params if name.endswith(".weight")]
    if any(not (layer.startswith("dense:") or layer == "relu") for layer in layers):
        sys.exit(f"numpy_trainer: only dense and relu layers, got {task['model']}")
    x, y = load_data(task["data"])
    regression = task["loss"] == "mse"
    y = y.astype(np.float32).reshape(len(y), -1) if regression else y.astype(np.int64)
    lr, batch = task["learning_rate"], task["batch_size"]
    rng = np.random.default_rng(task["round"])
    loss_sum, seen = 0.0, 0
    for _ in range(task["epochs"]):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            # Forward, keeping each dense layer's input.
            inputs, h = [], x[idx]
            for i, name in enumerate(dense):
                inputs.append(h)
                h = h @ params[name + ".weight"] + params[name + ".bias"]
                if i < len(dense) - 1:
                    h = np.maximum(h, 0)
            n = len(idx)
            if regression:
                err = h - y[idx]
                loss_sum += float((err ** 2).mean(axis=1).sum())
                grad = 2 * err / (n * h.shape[1])
            else:
                z = h - h.max(axis=1, keepdims=True)
                p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
                loss_sum += float(-np.log(p[np.arange(n), y[idx]] + 1e-12).sum())
                grad = p
                grad[np.arange(n), y[idx]] -= 1
                grad /= n
            seen += n
            # Backward and the SGD step, last layer first; only the shards the task names move.
            for i in reversed(range(len(dense))):
                name = dense[i]
                w = params[name + ".weight"]
                dw, db = inputs[i].T @ grad, grad.sum(axis=0)
                if i > 0:
                    grad = (grad @ w.T) * (inputs[i] > 0)
                if name + ".weight" in task["train"]:
                    params[name + ".weight"] = w - lr * dw
                if name + ".bias" in task["train"]:
                    params[name + ".bias"] = params[name + ".bias"] - lr * db
    for name in task["train"]:
        np.save(os.path.join(task["output_dir"], name + ".npy"), params[name].astype(np.float32))
    json.dump({"examples": int(len(x)), "loss": loss_sum / max(1, seen)}, open(task["result"], "w"))


if __name__ == "__main__":
    main()
