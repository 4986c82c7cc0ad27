#!/usr/bin/env bash
# Peak memory and seconds per round of fedsim as the population grows (2NN, IID, E=1, B=10),
# measured with /usr/bin/time -v. Prints a Markdown table.
# Usage: Simulations/scale-table.sh [rounds]   (default 5 rounds per row)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
swift build -c release --product fedsim >/dev/null
mkdir -p reports
echo "| clients | per round | examples per round | transport | peak RSS | s/round |"
echo "| ---: | ---: | ---: | --- | ---: | ---: |"
# clients, fraction, transport
while read -r k fraction transport; do
    out=reports/scale-$k-$fraction-$transport
    /usr/bin/time -v .build/release/fedsim --config Simulations/mnist-2nn-iid.toml --clients "$k" --fraction "$fraction" \
        --rounds "$rounds" --transport "$transport" --quiet --report "$out.json" 2> "$out.time" > /dev/null
    rss=$(awk '/Maximum resident set size/ {printf "%.0f MB", $6 / 1024}' "$out.time")
    python3 - "$out.json" "$k" "$transport" "$rss" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rounds = r["rounds"]
# The first round also pays for connecting (tcp) and warming up; report the rest.
steady = rounds[1:] or rounds
k, m = int(sys.argv[2]), r['config']['clients_per_round']
print(f"| {k} | {m} | {60000 // k * m} | {sys.argv[3]} | {sys.argv[4]} | {sum(x['seconds'] for x in steady) / len(steady):.2f} |")
PY
done <<'ROWS'
100 0.1 memory
1000 0.01 memory
1000 0.1 memory
10000 0.001 memory
10000 0.1 memory
100 0.1 tcp
1000 0.01 tcp
1000 0.1 tcp
ROWS
