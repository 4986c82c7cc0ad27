#!/usr/bin/env bash
# The device side of width classes (HeteroFL) with the real processes: one fedcoord with
# widths = [0.25, 0.5, 1] and three fedclient processes whose memory budgets fit a quarter,
# half and the whole MNIST 2NN (or CNN), each holding 6,000 training examples (E = 1, B = 10).
# Prints each device's width, the model it was given, its peak resident memory (GNU time) and
# its median seconds from task to update (the coordinator's record). Runs in a temporary
# directory.
# Usage: Benchmarks/width-device.sh [rounds] [2nn|cnn]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
model=${2:-2nn}
# Budgets: 16 bytes per parameter of the width's sub-model, and none (the whole model). The
# sub-models' parameters: fedsim --widths 0.25,0.5,1 prints them (WidthTests checks the 2NN's).
case "$model" in
    2nn) quarter=42310; half=89610 ;;
    cnn) quarter=105194; half=417482 ;;
    *) echo "width-device.sh: model must be 2nn or cnn, got $model" >&2; exit 1 ;;
esac
swift build -c release --product fedcoord >/dev/null
swift build -c release --product fedclient >/dev/null
bin=$PWD/.build/release
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/coordinator.toml" <<EOF
port = 0
model = "$model"
rounds = $rounds
min_clients = 3
clients_per_round = 3
over_selection = 1.0
min_updates = 3
codec = "fp32"
widths = [0.25, 0.5, 1]
database = "run.sqlite"
test_data = "$PWD/Simulations/data/mnist"
EOF
declare -A budget=([quarter]=$((16 * quarter)) [half]=$((16 * half)) [full]=0)
declare -A range=([quarter]="0..<6000" [half]="6000..<12000" [full]="12000..<18000")
for id in quarter half full; do
    secret=$("$bin/fedcoord" clients add "$id" --db "$dir/run.sqlite" 2>/dev/null | sed -n 's/^secret = //p')
    cat > "$dir/$id.toml" <<EOF
id = "$id"
secret = $secret
data = "$PWD/Simulations/data/mnist"
examples = "${range[$id]}"
memory_budget = ${budget[$id]}
state_file = "$dir/$id.residual"
EOF
done
(cd "$dir" && "$bin/fedcoord" serve --config coordinator.toml > coordinator.log 2>&1) &
coordinator=$!
port=""
for _ in $(seq 1 200); do
    port=$(sed -n 's/^fedcoord: listening on .*:\([0-9]*\)$/\1/p' "$dir/coordinator.log" | head -1)
    [ -n "$port" ] && break
    sleep 0.05
done
[ -n "$port" ] || { echo "fedcoord did not start:"; cat "$dir/coordinator.log"; exit 1; }
for id in quarter half full; do
    /usr/bin/time -f "%M" -o "$dir/$id.rss" "$bin/fedclient" --config "$dir/$id.toml" --coordinator "127.0.0.1:$port" > "$dir/$id.log" 2>&1 &
done
wait $coordinator
wait
python3 - "$dir" <<'PY'
import re, sqlite3, statistics, sys
d = sys.argv[1]
db = sqlite3.connect(f"{d}/run.sqlite")
log = open(f"{d}/coordinator.log").read()
widths = {m.group(1): m.group(2) for m in re.finditer(r"client=(\w+).*?width=([0-9.]+)", log)}
print("| device | width | peak memory (MB) | seconds from task to update, median | updates |")
print("| --- | ---: | ---: | ---: | ---: |")
for client in ("quarter", "half", "full"):
    rss = int(open(f"{d}/{client}.rss").read().split()[-1]) / 1024
    rows = [r[0] for r in db.execute("SELECT duration_seconds FROM participations WHERE client = ? AND state = 'accepted'", (client,))]
    print(f"| {client} | {widths.get(client, '?')} | {rss:.1f} | {statistics.median(rows):.3f} | {len(rows)} |")
last = db.execute("SELECT message FROM events WHERE kind = 'widths' ORDER BY rowid DESC LIMIT 1").fetchone()
print("\nby width, " + (last[0] if last else "no record"))
PY
