#!/usr/bin/env bash
# Kills fedcoord with SIGKILL at random moments of a run and restarts it on the same database
# and port, with two real fedclient processes training throughout; then checks the database.
#
#   Benchmarks/chaos-kill.sh [TRIALS] [SEED]      (defaults: 20 trials, seed 1)
#
# The moments come from SEED (printed, so a failure can be replayed). Prints one line per
# trial (when the kill came, the last committed round before it, seconds from the restart to
# the next committed round) and a summary: trials, rounds committed, rounds lost (a gap in the
# committed round numbers: must be 0), rounds duplicated (a round number committed twice:
# must be 0), and the median and worst time from a restart to the next committed round.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:-20}
SEED=${2:-1}
swift build -c release --product fedcoord >/dev/null
swift build -c release --product fedclient >/dev/null
BIN=.build/release
WORK=$(mktemp -d /tmp/fedchaos.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# The two example devices whose keys are published in Configs/ (never use them for real).
SECRET1=$(sed -n 's/^secret = "\(fedsk1:[0-9a-f]*\)".*/\1/p' Configs/client.toml)
SECRET2=fedsk1:cb6fe2191277cbc0b04644237b8cf027dd2eec955d5b68179492e9cab89daffc
KEY1=$(sed -n 's/^device-1 = "\(fedpk1:[0-9a-f]*\)".*/\1/p' Configs/coordinator.toml)
KEY2=$(sed -n 's/^device-2 = "\(fedpk1:[0-9a-f]*\)".*/\1/p' Configs/coordinator.toml)
cat > "$WORK/coordinator.toml" <<EOF
port = 0
rounds = 1000000
min_clients = 2
clients_per_round = 2
over_selection = 1.0
round_deadline = 10
database = "$WORK/run.sqlite"
[clients]
device-1 = "$KEY1"
device-2 = "$KEY2"
EOF

# Seeded uniform draws in [0, 1): a small LCG, so the moments replay exactly.
STATE=$SEED
draw() { STATE=$(( (STATE * 6364136223846793005 + 1442695040888963407) & 0x7fffffffffffffff )); RANDOM_UNIT=$(awk -v s=$STATE 'BEGIN { printf "%.4f", (s % 1000003) / 1000003 }'); }

committed() { "$BIN/fedcoord" report --db "$WORK/run.sqlite" --csv 2>/dev/null | tail -n +2 | cut -d, -f1; }
last_round() { committed | tail -1; }

start_coordinator() {
    "$BIN/fedcoord" serve --config "$WORK/coordinator.toml" ${PORT:+--port $PORT} > "$WORK/coordinator-$1.log" 2>&1 &
    COORDINATOR=$!
    for _ in $(seq 200); do
        grep -q "fedcoord: listening on" "$WORK/coordinator-$1.log" 2>/dev/null && break
        sleep 0.05
    done
    PORT=$(sed -n 's/^fedcoord: listening on 127.0.0.1:\([0-9]*\)$/\1/p' "$WORK/coordinator-$1.log")
}

echo "chaos-kill: $TRIALS trials, seed $SEED, work directory $WORK"
start_coordinator 0
"$BIN/fedclient" --coordinator "127.0.0.1:$PORT" --id device-1 --secret "$SECRET1" --data Simulations/data/mnist --examples "0..<1000" > "$WORK/client-1.log" 2>&1 &
"$BIN/fedclient" --coordinator "127.0.0.1:$PORT" --id device-2 --secret "$SECRET2" --data Simulations/data/mnist --examples "1000..<2000" > "$WORK/client-2.log" 2>&1 &
RECOVERIES=()
for trial in $(seq "$TRIALS"); do
    # Let the run go on for 0.2 to 2 s, then kill it outright.
    draw
    sleep "$(awk -v u="$RANDOM_UNIT" 'BEGIN { printf "%.3f", 0.2 + 1.8 * u }')"
    kill -KILL "$COORDINATOR"
    wait "$COORDINATOR" 2>/dev/null || true
    before=$(last_round); before=${before:-0}
    restarted=$(date +%s.%N)
    start_coordinator "$trial"
    # Time to the next committed round after the restart.
    recovery=""
    deadline=$(( $(date +%s) + 60 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        now=$(last_round); now=${now:-0}
        if [ "$now" -gt "$before" ]; then
            recovery=$(awk -v a="$restarted" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
            break
        fi
        sleep 0.05
    done
    RECOVERIES+=("${recovery:-timeout}")
    printf 'trial %3d: killed after %.2f s more, last committed round %d, next round committed %s s after the restart\n' \
        "$trial" "$(awk -v u="$RANDOM_UNIT" 'BEGIN { print 0.2 + 1.8 * u }')" "$before" "${recovery:-(none within 60 s)}"
done
kill -TERM "$COORDINATOR"; wait "$COORDINATOR" 2>/dev/null || true

ROUNDS=$(committed)
COUNT=$(echo "$ROUNDS" | grep -c . || true)
LAST=$(echo "$ROUNDS" | tail -1)
DUPLICATED=$(echo "$ROUNDS" | sort -n | uniq -d | grep -c . || true)
LOST=$(( ${LAST:-0} - $(echo "$ROUNDS" | sort -nu | grep -c . || true) ))
SORTED=$(printf '%s\n' "${RECOVERIES[@]}" | grep -v timeout | sort -n)
MEDIAN=$(echo "$SORTED" | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
WORST=$(echo "$SORTED" | tail -1)
TIMEOUTS=$(printf '%s\n' "${RECOVERIES[@]}" | grep -c timeout || true)
echo "chaos-kill: trials $TRIALS, rounds committed $COUNT (1 to ${LAST:-0}), lost $LOST, duplicated $DUPLICATED, restart to next committed round: median ${MEDIAN} s, worst ${WORST:--} s, not recovered within 60 s: $TIMEOUTS"
[ "$LOST" -eq 0 ] && [ "$DUPLICATED" -eq 0 ] && [ "$TIMEOUTS" -eq 0 ]
