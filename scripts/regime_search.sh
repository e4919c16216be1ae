#!/usr/bin/env bash
# The regime search: Traditional alone over a grid of CPU-affordable setups, looking for a paper-shaped
# one, where Traditional's training loss ends low and its test error is still falling in its last LR
# stage (it first reaches its final error x 1.1 only after >= 70 % of its schedule, as in the paper).
#   scripts/regime_search.sh OUT      (make regime-search; the table: scripts/regime_search.py OUT --out DIR)
# env: SEEDS="0" JOBS=2 TEST_SUBSET=null (all 10 000 test images; a number: a fixed subset) EXTRA_OVERRIDES="..."
#      SETUPS (one setup a line, "NAME OVERRIDES...", replacing the default grid), PYTHON / SB_TRAIN.
# Every setup: experiment=fashion_mnist_regime (resnet8, b = 128, SGD 0.1 Nesterov, LR /5 at 30/60/80 % of
# the schedule's epochs), Traditional through its schedule, evaluated after every epoch on the full test set
# (or a fixed TEST_SUBSET-image subset). Knobs: training-set size (up to all 60 000), width, augmentation (none /
# flip only / crop padding 2 + flip), epochs (the schedule). The default grid is about 3.3-3.6 h of one core
# (~1.8 h at JOBS=2): 1.1-1.5 ms per trained example at width 16, ~3.5 ms at width 32, one thread, plus
# ~3 s per evaluation of the 10 000 test images at width 16 (390 evaluations in the grid). JOBS runs at a time (at most the cores), one thread each;
# re-running resumes unfinished runs and skips finished ones. Layout: OUT/<setup>_s<seed>, OUT/logs/.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT   (env: SEEDS='0' JOBS=2 TEST_SUBSET=null SETUPS=...)" >&2; exit 2; }
out=$1
seeds=${SEEDS:-0}
jobs=${JOBS:-2}
train=${SB_TRAIN:-"${PYTHON:-.venv/bin/python} -m selective_backprop.train"}
base="experiment=fashion_mnist_regime strategy=traditional device=cpu dataset.test_subset=${TEST_SUBSET:-null} \
train.eval_every=1 ${EXTRA_OVERRIDES:-}"
none="dataset.augment.crop_padding=0 dataset.augment.hflip=false"
flip="dataset.augment.crop_padding=0 dataset.augment.hflip=true"
crop2="dataset.augment.crop_padding=2 dataset.augment.hflip=true"
e10=lr_schedule=fashion_mnist_e10 e30=lr_schedule=fashion_mnist_e30 e60=lr_schedule=fashion_mnist_e60
default_setups="n6000_w16_none_e30 dataset.subset=6000 model.width=16 $none $e30
n6000_w16_flip_e30 dataset.subset=6000 model.width=16 $flip $e30
n6000_w16_crop2_e30 dataset.subset=6000 model.width=16 $crop2 $e30
n6000_w16_flip_e60 dataset.subset=6000 model.width=16 $flip $e60
n6000_w32_none_e30 dataset.subset=6000 model.width=32 $none $e30
n20000_w16_none_e30 dataset.subset=20000 model.width=16 $none $e30
n20000_w16_flip_e30 dataset.subset=20000 model.width=16 $flip $e30
n20000_w16_crop2_e30 dataset.subset=20000 model.width=16 $crop2 $e30
n60000_w16_none_e10 dataset.subset=null model.width=16 $none $e10
n60000_w16_flip_e10 dataset.subset=null model.width=16 $flip $e10
n60000_w16_crop2_e10 dataset.subset=null model.width=16 $crop2 $e10
n60000_w16_none_e30 dataset.subset=null model.width=16 $none $e30
n60000_w16_flip_e30 dataset.subset=null model.width=16 $flip $e30"
setups=${SETUPS:-$default_setups}
# shellcheck source=scripts/run_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/run_lib.sh"

for s in $seeds; do
  while read -r name overrides; do
    [ -n "$name" ] && echo "$out/${name}_s$s $overrides seed=$s"
  done <<< "$setups"
done | phase
echo "done: $out"
