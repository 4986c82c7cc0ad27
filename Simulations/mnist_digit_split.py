"""Splits MNIST by digit for the transfer figure: writes DIR/mnist-0to4 and DIR/mnist-5to9, each
with train_x.npy (uint8, N x 784), train_y.npy, test_x.npy and test_y.npy (labels kept as the
digits, so both tasks use the 10-output 2NN). Usage: mnist_digit_split.py MNIST_DIR OUT_DIR"""
import gzip, os, sys
import numpy as np

source, out = sys.argv[1], sys.argv[2]


def idx(name):
    with gzip.open(os.path.join(source, name)) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


splits = {
    "train": (idx("train-images-idx3-ubyte.gz").reshape(-1, 784), idx("train-labels-idx1-ubyte.gz")),
    "test": (idx("t10k-images-idx3-ubyte.gz").reshape(-1, 784), idx("t10k-labels-idx1-ubyte.gz")),
}
for name, digits in (("mnist-0to4", range(0, 5)), ("mnist-5to9", range(5, 10))):
    directory = os.path.join(out, name)
    os.makedirs(directory, exist_ok=True)
    for split, (x, y) in splits.items():
        keep = np.isin(y, list(digits))
        np.save(os.path.join(directory, f"{split}_x.npy"), x[keep])
        np.save(os.path.join(directory, f"{split}_y.npy"), y[keep].astype(np.uint8))
    print(name, {split: int(np.isin(y, list(digits)).sum()) for split, (_, y) in splits.items()})
