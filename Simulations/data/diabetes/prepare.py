"""Writes the diabetes regression task (Efron et al. 2004, as shipped with scikit-learn) as
NumPy files for fedsim and fedclient: 442 patients, 10 baseline measurements each, and a
measure of disease progression one year later (25 to 346).

The split is fixed (seed 7): 353 patients for training, 89 for testing. Features are
standardised with the training split's mean and standard deviation; the target is kept in
its own units, so RMSE and MAE read as points of disease progression.

Run once with scikit-learn installed (`pip install scikit-learn`); the output is committed.
"""
import gzip
import os

import numpy as np
import sklearn

here = os.path.dirname(os.path.abspath(__file__))
source = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "data")
with gzip.open(os.path.join(source, "diabetes_data_raw.csv.gz"), "rt") as f:
    x = np.loadtxt(f)
with gzip.open(os.path.join(source, "diabetes_target.csv.gz"), "rt") as f:
    y = np.loadtxt(f)
assert x.shape == (442, 10) and y.shape == (442,)

order = np.random.default_rng(7).permutation(len(y))
train, test = order[:353], order[353:]
mean, std = x[train].mean(axis=0), x[train].std(axis=0)
scaled = ((x - mean) / std).astype(np.float32)
for name, rows in (("train", train), ("test", test)):
    np.save(os.path.join(here, f"{name}_x.npy"), scaled[rows])
    np.save(os.path.join(here, f"{name}_y.npy"), y[rows].astype(np.float32))
print("train", len(train), "test", len(test), "target mean", y[train].mean())
