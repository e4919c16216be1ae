#!/usr/bin/env bash
# The error-vs-budget frontier: every strategy at budgets of 1/4, 1/2, 3/4 and 1 x Traditional's
# full-schedule cost, each run with its LR schedule fitted to its own budget (make reproduce-frontier):
#   POINT=6k scripts/frontier.sh OUT        POINT=60k scripts/frontier.sh OUT
# env: SEEDS="0 1 2" JOBS=2 FRACTIONS="0.25 0.5 0.75 1" SCHEDULE=budget_steps (or budget_linear)
#      STRATEGIES="traditional sb stale_sb_n2 stale_sb_n3 kath18 uniform infobatch composer_sb"
#      REF_SCHEDULE (the point's epoch schedule), REF_SEED=0, PYTHON / SB_TRAIN (default .venv's
#      python -m selective_backprop.train), EXTRA_OVERRIDES="key=value ..." (appended to every run).
# Points (decision; Fashion-MNIST, resnet8 width 16, b = 128, SGD 0.1 Nesterov, no augmentation):
#   6k   experiment=fashion_mnist_regime dataset.subset=6000 (the committed Table 1 point); reference
#        schedule fashion_mnist_e30 (30 epochs, LR /5 at 9/18/24)
#   60k  the full 60 000-image training set; reference schedule fashion_mnist_e10 (10 epochs, /5 at 3/6/8)
# Phase 1: Traditional through the reference epoch schedule (seed REF_SEED) measures the full-schedule
# cost C (forward-equivalent units: 3 x examples x epochs, the same for every seed). Phase 2: every
# strategy, fraction f and seed with train.max_cost = f x C, train.max_epochs=null and
# lr_schedule=$SCHEDULE (LR /5 at 30/60/80 % of the budget, or linear to zero; InfoBatch's annealing and
# Composer-SB's window are fitted to the budget too, engine/peers.py). Every run is evaluated once, at its
# end, on the full 10 000-image test set (train.eval_every=1000000). JOBS runs at a time (at most the cores), one thread each;
# re-running resumes unfinished runs and skips finished ones. Layout:
#   OUT/reference/traditional_s<seed>     OUT/runs/b<f>/<label>_s<seed>     OUT/logs/
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: POINT=6k|60k $0 OUT   (env: SEEDS='0 1 2' JOBS=2 FRACTIONS='0.25 0.5 0.75 1')" >&2; exit 2; }
out=$1
point=${POINT:-6k}
seeds=${SEEDS:-"0 1 2"}
jobs=${JOBS:-2}
fractions=${FRACTIONS:-"0.25 0.5 0.75 1"}
schedule=${SCHEDULE:-budget_steps}
strategies=${STRATEGIES:-"traditional sb stale_sb_n2 stale_sb_n3 kath18 uniform infobatch composer_sb"}
python=${PYTHON:-.venv/bin/python}
train=${SB_TRAIN:-"$python -m selective_backprop.train"}
case $point in
  6k)  setup="dataset.subset=6000"; ref_schedule=${REF_SCHEDULE:-fashion_mnist_e30} ;;
  60k) setup="dataset.subset=null"; ref_schedule=${REF_SCHEDULE:-fashion_mnist_e10} ;;
  *) echo "POINT=$point: not a frontier point; accepted: 6k | 60k" >&2; exit 2 ;;
esac
base="experiment=fashion_mnist_regime $setup dataset.test_subset=null dataset.augment.crop_padding=0 \
dataset.augment.hflip=false device=cpu train.eval_every=1000000 ${EXTRA_OVERRIDES:-}"
# shellcheck source=scripts/run_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/run_lib.sh"

strategy_overrides() {  # the overrides of a strategy label
  case $1 in
    stale_sb_n2) echo "strategy=stale_sb strategy.staleness=2" ;;
    stale_sb_n3) echo "strategy=stale_sb strategy.staleness=3" ;;
    traditional|sb|kath18|uniform|infobatch|composer_sb) echo "strategy=$1" ;;
    *) echo "STRATEGIES: unknown label '$1'" >&2; return 2 ;;
  esac
}

for label in $strategies; do strategy_overrides "$label" > /dev/null || exit 2; done
ref_seed=${REF_SEED:-0}
ref=$out/reference/traditional_s$ref_seed
echo "$ref lr_schedule=$ref_schedule strategy=traditional seed=$ref_seed" | phase
[ -f "$ref/summary.json" ] || { echo "no reference run in $ref (see $out/logs)" >&2; exit 1; }
full_cost=$("$python" -c 'import json, sys; s = json.load(open(sys.argv[1])); assert s["status"] == "completed", s["status"]; print(repr(float(s["cost"])))' "$ref/summary.json") \
  || { echo "the reference run $ref did not complete its schedule" >&2; exit 1; }
echo "Traditional's full-schedule cost ($ref_schedule): $full_cost"

lines=()
for s in $seeds; do
  for f in $(printf '%s\n' $fractions | sort -gr); do
    max_cost=$("$python" -c 'import sys; print(repr(float(sys.argv[1]) * float(sys.argv[2])))' "$f" "$full_cost")
    for label in $strategies; do
      lines+=("$out/runs/b$f/${label}_s$s $(strategy_overrides "$label") seed=$s lr_schedule=$schedule \
train.max_epochs=null train.max_cost=$max_cost")
    done
  done
done
printf '%s\n' "${lines[@]}" | phase
echo "done: $out"
