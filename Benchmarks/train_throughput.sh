#!/usr/bin/env bash
# Local training throughput: fedbench (plain Swift) next to the same work in PyTorch CPU,
# measured in the same run, with the ratios. MNIST, batch 10, epochs of 600 examples, plain SGD.
#
# The first run creates Benchmarks/.venv and pip-installs torch (about 5 GB, a few minutes).
# Usage: Benchmarks/train_throughput.sh [--threads N]   (default: every core, for both sides)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=$(nproc)
if [ "${1:-}" = "--threads" ]; then threads=$2; fi

if [ ! -x Benchmarks/.venv/bin/python ] || ! Benchmarks/.venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setting up Benchmarks/.venv with torch (one time)..." >&2
    python3 -m venv Benchmarks/.venv
    Benchmarks/.venv/bin/pip install --quiet torch numpy
fi
swift build -c release --product fedbench >/dev/null

echo "== PyTorch $(Benchmarks/.venv/bin/python -c 'import torch; print(torch.__version__)'), $threads threads"
torch_out=$(Benchmarks/.venv/bin/python Benchmarks/torch_reference.py Simulations/data/mnist --threads "$threads")
echo "$torch_out"
echo "== fedbench"
swift_out=$(.build/release/fedbench --threads "$threads")
echo "$swift_out"
echo "== ratio to PyTorch ($threads threads), examples/s"
python3 - "$torch_out" "$swift_out" <<'PY'
import sys
torch = dict(line.split() for line in sys.argv[1].strip().splitlines())
for line in sys.argv[2].strip().splitlines()[1:]:
    mode, model, rate = line.split()
    print(f"{model:<4} {mode:<22} {float(rate):>9.0f} vs {float(torch[model]):>8.0f}  = {float(rate) / float(torch[model]):.2f}x")
PY
