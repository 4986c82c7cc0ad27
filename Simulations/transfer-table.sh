#!/usr/bin/env bash
# Federated fine-tuning of a model trained elsewhere, in full or through low-rank adapters
# (LoRA, and FFA-LoRA with A frozen), on two real transfers with the 2NN: MNIST digits 0-4 to digits 5-9, and MNIST to
# Fashion-MNIST. Each base model is trained federated first (the MNIST 2NN scenario, 200
# rounds) and exported; each setting then trains on the new task (100 clients, C = 0.1, E = 1,
# B = 10; learning rate 0.1, and for LoRA's adapters 0.05 (0.02 at rank 1), where they stop
# diverging; FFA-LoRA at 0.1) for 200 rounds, seeds 1-3. Prints a Markdown table and draws reports/transfer/accuracy-per-round.svg; runs
# land in reports/transfer/.
# Usage: Simulations/transfer-table.sh [rounds] [seeds]
# Needs python3 with numpy (the digit split) and dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-200}
seeds=${2:-3}
out=reports/transfer
mkdir -p "$out"
[ -n "${FEDSIM:-}" ] || swift build -c release --product fedsim >/dev/null
fedsim=${FEDSIM:-.build/release/fedsim}
[ -f "$out/mnist-5to9/test_y.npy" ] || python3 Simulations/mnist_digit_split.py Simulations/data/mnist "$out"
# The base models.
[ -f "$out/mnist-0to4.fedmodel" ] || $fedsim --config Simulations/mnist-2nn-iid.toml --data "$out/mnist-0to4" --quiet \
    --export "$out/mnist-0to4.fedmodel" --export-codec fp32 > "$out/mnist-0to4.base.txt"
[ -f "$out/mnist-2nn.fedmodel" ] || $fedsim --config Simulations/mnist-2nn-iid.toml --quiet \
    --export "$out/mnist-2nn.fedmodel" --export-codec fp32 > "$out/mnist-2nn.base.txt"
# The adapter ranks, as scenarios beside the bundled rank-4 one.
for rank in 1 4 16; do
    sed "s/:lora4/:lora$rank/g; s#^base_model = .*##; s#^data = .*##" Simulations/fashion-mnist-2nn-lora.toml > "$out/lora$rank.toml"
done
sed "s/:lora4/:ffa16/g; s#^base_model = .*##; s#^data = .*##" Simulations/fashion-mnist-2nn-lora.toml > "$out/ffa16.toml"
for task in digits fmnist; do
    if [ $task = digits ]; then data=$out/mnist-5to9 base=$out/mnist-0to4.fedmodel target=0.97
    else data=/usr/share/datasets/fashion-mnist base=$out/mnist-2nn.fedmodel target=0.85; fi
    for setting in scratch full lora1 lora4 lora16 ffa16; do
        for seed in $(seq 1 "$seeds"); do
            tag="$out/$task-$setting-seed$seed"
            [ -f "$tag.json" ] && continue
            echo "$task $setting seed $seed" >&2
            [ -f "$tag.failed" ] && continue
            case $setting in
                scratch) args=(--config Simulations/mnist-2nn-iid.toml --lr 0.1) ;;
                full) args=(--config Simulations/mnist-2nn-iid.toml --base-model "$base" --lr 0.1) ;;
                lora1) args=(--config "$out/$setting.toml" --base-model "$base" --lr 0.02) ;;
                lora*) args=(--config "$out/$setting.toml" --base-model "$base" --lr 0.05) ;;
                ffa*) args=(--config "$out/$setting.toml" --base-model "$base" --lr 0.1) ;;
            esac
            # A run that diverges is recorded as such and the table goes on.
            $fedsim "${args[@]}" --data "$data" --rounds "$rounds" --seed "$seed" --target "$target" \
                --quiet --report "$tag.json" > /dev/null 2> "$tag.err" || mv "$tag.err" "$tag.failed"
            rm -f "$tag.err"
        done
    done
done
python3 Simulations/transfer_table.py "$rounds" "$seeds"
