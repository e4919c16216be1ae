#!/usr/bin/env bash
# Equal-budget runs at one or more regime points (experiment=fashion_mnist_regime):
#   scripts/regime_sweep.sh OUT SEEDS STRATEGIES "POINT OVERRIDES" ["POINT OVERRIDES" ...]
# e.g. scripts/regime_sweep.sh multirun/quick 0 sb,uniform "dataset.subset=2000 lr_schedule=fashion_mnist_e10"
# For each point (a quoted list of Hydra overrides) it first trains Traditional through its schedule for
# every seed (a Hydra multirun), then every other strategy with Traditional's measured cost as its budget
# (train.max_epochs=null train.budget_from=<that point's folder> train.budget_axis=cost). Each point gets
# its own folder OUT/p<k>; re-running the command resumes or skips finished runs. PYTHON and SB_TRAIN may
# be set (default: .venv's python -m selective_backprop.train).
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 OUT SEEDS STRATEGIES 'POINT OVERRIDES'..." >&2; exit 2; }
out=$1 seeds=$2 strategies=$3
shift 3
train=${SB_TRAIN:-"${PYTHON:-.venv/bin/python} -m selective_backprop.train"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
k=0
for point in "$@"; do
  dir=$out/p$k
  k=$((k + 1))
  mkdir -p "$dir"
  echo "$point" > "$dir/POINT"
  # shellcheck disable=SC2086  # the point's overrides are meant to split
  $train -m experiment=fashion_mnist_regime $point strategy=traditional seed="$seeds" device=cpu \
    hydra.sweep.dir="$dir/traditional" hydra.sweep.subdir='s${seed}'
  # shellcheck disable=SC2086
  $train -m experiment=fashion_mnist_regime $point strategy="$strategies" seed="$seeds" device=cpu \
    train.max_epochs=null train.budget_from="$dir/traditional" train.budget_axis=cost \
    hydra.sweep.dir="$dir/selective" hydra.sweep.subdir='${strategy.name}_s${seed}'
done
