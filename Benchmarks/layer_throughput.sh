#!/usr/bin/env bash
# Each kind of layer's forward and backward pass (batch 10, a training pass), fedbench next to
# PyTorch CPU on the same shapes, measured in the same run, with the ratios.
#
# Uses the Benchmarks/.venv that train_throughput.sh creates (torch).
# Usage: Benchmarks/layer_throughput.sh [--threads N]   (default: 1 core for both sides; a device
#        training one client per core is the common case)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=1
if [ "${1:-}" = "--threads" ]; then threads=$2; fi
if [ ! -x Benchmarks/.venv/bin/python ] || ! Benchmarks/.venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setting up Benchmarks/.venv with torch (one time)..." >&2
    python3 -m venv Benchmarks/.venv
    Benchmarks/.venv/bin/pip install --quiet torch numpy
fi
swift build -c release --product fedbench >/dev/null
torch_out=$(Benchmarks/.venv/bin/python Benchmarks/torch_reference.py Simulations/data/mnist --threads "$threads" --layers)
swift_out=$(.build/release/fedbench --layers --threads "$threads")
echo "== layers, batch 10, forward + backward, $threads thread(s), examples/s"
python3 - "$torch_out" "$swift_out" <<'PY'
import sys
torch = dict(line.split() for line in sys.argv[1].strip().splitlines())
print(f"{'layer':<18} {'Swift':>10} {'PyTorch':>10}  ratio")
for line in sys.argv[2].strip().splitlines()[1:]:
    name, rate = line.split()
    print(f"{name:<18} {float(rate):>10.0f} {float(torch[name]):>10.0f}  {float(rate) / float(torch[name]):.2f}x")
PY
