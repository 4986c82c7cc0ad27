#!/usr/bin/env bash
# The four best settings of the MNIST 2NN's technique table (README, "Every technique in one
# table") on another model: pruning to 90% and to 95% with q4 updates and a q4 export, and the
# low-rank codecs lowrank:4+q4+ef and lowrank:8+q8+ef, beside dense float32 (fp32+raw updates;
# fp32, q8 and q4 exports). Each run's report and export lines land in Simulations/results/best/
# (kept in git: the MNIST CNN's runs take hours); `python3 Simulations/techniques_table.py
# --scenario NAME` prints their table. A run takes about 3 minutes for the Fashion-MNIST compact
# model and 35 for the MNIST CNN (200 rounds, both cores, nothing else running); each prints
# when it starts, and finished runs are skipped when the script is run again. A run that was
# cut off continues from its database in reports/best/ (fedsim --resume), except the low-rank
# ones: their error feedback lives in memory, so they start again.
# Usage: Simulations/best-settings.sh SCENARIO [rounds] [seeds] [settings]
#   e.g. Simulations/best-settings.sh fashion-mnist-separable-iid 200 "1 2 3"
#   settings: some of dense prune0.9-q4 prune0.95-q4 lowrank4-q4 lowrank8-q8 (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    ""|-h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; [ -n "${1:-}" ]; exit ;;
esac
scenario=$1
rounds=${2:-200}
seeds=${3:-1 2 3}
only=${4:-}
config="Simulations/$scenario.toml"
[ -f "$config" ] || { echo "best-settings.sh: no scenario $config" >&2; exit 1; }
# The scenario's data directory (relative paths are relative to the scenario file).
data=$(python3 -c 'import os, sys, tomllib; c = tomllib.load(open(sys.argv[1], "rb")); print(os.path.join(os.path.dirname(sys.argv[1]), c["data"]))' "$config")
results=Simulations/results/best
scratch=reports/best
mkdir -p "$results" "$scratch"
fedsim=${FEDSIM:-.build/release/fedsim}
fedcoord=${FEDCOORD:-.build/release/fedcoord}
if [ -z "${FEDSIM:-}" ]; then
    swift build -c release --product fedsim >/dev/null
    swift build -c release --product fedcoord >/dev/null
fi
# name, export codecs, fedsim arguments
settings=(
    "dense|fp32 q8 q4|--codec fp32+raw"
    "prune0.9-q4|q8 q4|--prune 0.9 --codec q4"
    "prune0.95-q4|q8 q4|--prune 0.95 --codec q4"
    "lowrank4-q4|fp32|--codec lowrank:4+q4+ef"
    "lowrank8-q8|fp32|--codec lowrank:8+q8+ef"
)
for wanted in $only; do
    known=no
    for setting in "${settings[@]}"; do [ "${setting%%|*}" = "$wanted" ] && known=yes; done
    [ $known = yes ] || { echo "best-settings.sh: no setting $wanted (see --help)" >&2; exit 1; }
done
for seed in $seeds; do
    for setting in "${settings[@]}"; do
        IFS='|' read -r name exports arguments <<< "$setting"
        [ -z "$only" ] || [[ " $only " == *" $name "* ]] || continue
        result="$results/$scenario-$name-r$rounds-seed$seed"
        [ -f "$result.json" ] && [ -f "$result.exports" ] && continue
        tag="$scratch/$scenario-$name-r$rounds-seed$seed"
        resume=()
        if [ -f "$tag.sqlite" ] && [[ $arguments != *+ef* ]] && python3 -c 'import sqlite3, sys; sys.exit(0 if sqlite3.connect(sys.argv[1]).execute("select count(*) from checkpoints").fetchone()[0] else 1)' "$tag.sqlite" 2>/dev/null; then
            resume=(--resume)
        else
            rm -f "$tag.sqlite" "$tag.sqlite-wal" "$tag.sqlite-shm"
        fi
        echo "$(date +%T) $scenario $name seed $seed${resume:+ (resumed)}" >&2
        # shellcheck disable=SC2086
        if ! $fedsim --config "$config" --rounds "$rounds" --seed "$seed" $arguments "${resume[@]}" \
            --quiet --report "$tag.json.tmp" --db "$tag.sqlite" > /dev/null; then
            # A database fedsim cannot continue (for example one an older build wrote): start over.
            [ ${#resume[@]} -gt 0 ] || exit 1
            echo "$(date +%T) $scenario $name seed $seed: cannot resume, starting again" >&2
            rm -f "$tag.sqlite" "$tag.sqlite-wal" "$tag.sqlite-shm"
            # shellcheck disable=SC2086
            $fedsim --config "$config" --rounds "$rounds" --seed "$seed" $arguments \
                --quiet --report "$tag.json.tmp" --db "$tag.sqlite" > /dev/null
        fi
        for export in $exports; do
            echo "$export $($fedcoord export --db "$tag.sqlite" --out "$tag.$export.fedmodel" --codec "$export" --test-data "$data" | tr '\n' ' ')"
        done > "$tag.exports.tmp"
        mv "$tag.exports.tmp" "$result.exports"
        mv "$tag.json.tmp" "$result.json"
        rm -f "$tag.sqlite" "$tag.sqlite-wal" "$tag.sqlite-shm" "$tag".*.fedmodel
    done
done
python3 Simulations/techniques_table.py --scenario "$scenario" --rounds "$rounds"
