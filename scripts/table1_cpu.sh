#!/usr/bin/env bash
# The CPU-scale Table 1 in the best regime the regime map found (issue 14), and the runs behind the
# staleness / label-noise / selectivity figures:
#   scripts/table1_cpu.sh OUT          (SEEDS="0 1 2 3 4" JOBS=2 by default; make reproduce-table1-cpu)
# EXTRA_OVERRIDES="key=value ..." is appended to every run (tests run the whole script at toy size).
# Setup (decision): Fashion-MNIST, a seeded 6 000-image training subset, no augmentation, resnet8 width 16,
# b = 128, SGD 0.1 Nesterov; evaluation on the full 10 000-image test set on a fixed cost grid
# (train.eval_every_cost=epoch: each time a run has spent another Traditional epoch's cost), so every
# strategy is measured at the same cost points and evaluation weighs on each alike.
# Two schedule analogues: fashion_mnist_e30 (LR /5 at 9/18/24, Traditional 30 epochs) and
# fashion_mnist_e30_s2 (0.8x: 7/14/19). Per schedule and seed, Traditional trains through its schedule
# first; then every other strategy gets Traditional's measured cost (forward-equivalent units) as its
# budget (train.max_epochs=null train.budget_from=... train.budget_axis=cost) and holds the final LR past
# the schedule. InfoBatch and Composer-SB schedule on the run's length, so they run their own 30-epoch
# schedule (train.max_epochs=30) with the same cost cap - as their authors use them, they finish early.
# Timing (the time axis): the phases run one after another and never overlap - 1 the Traditional
# references, 2 the other Table 1 runs, 3 the staleness / selectivity sweeps, 4-5 the label-noise sweep -
# each with at most JOBS runs at a time, one thread each (JOBS is capped at the cores / OMP_NUM_THREADS).
# Every run records its load averages and CPU time (summary.json `timing`, docs/run_record.md) and the
# analysis checks them: do NOT run other heavy work (the test suite, other training) alongside.
# Re-running resumes unfinished runs and skips finished ones. Layout:
#   OUT/runs/<schedule>/<label>_s<seed>      Table 1, Pareto, figures 6/7/10 (all seeds)
#   OUT/sweeps/...                           Fig 11 (staleness 4), 12 (label noise), 13 (selectivity); seed 0
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT   (env: SEEDS='0 1 2 3 4' JOBS=2 PYTHON=.venv/bin/python)" >&2; exit 2; }
out=$1
seeds=${SEEDS:-"0 1 2 3 4"}
jobs=${JOBS:-2}
train=${SB_TRAIN:-"${PYTHON:-.venv/bin/python} -m selective_backprop.train"}
base="experiment=fashion_mnist_regime dataset.subset=6000 train.eval_every_cost=epoch \
dataset.augment.crop_padding=0 dataset.augment.hflip=false device=cpu ${EXTRA_OVERRIDES:-}"
budget="train.max_epochs=null train.budget_axis=cost"
# shellcheck source=scripts/run_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/run_lib.sh"

# 1: the Traditional references of Table 1
{
  for s in $seeds; do
    for sch in fashion_mnist_e30 fashion_mnist_e30_s2; do
      echo "$out/runs/$sch/traditional_s$s lr_schedule=$sch strategy=traditional seed=$s"
    done
  done
} | phase

# 2: the other strategies of Table 1, at their Traditional's cost
{
  for s in $seeds; do
    for sch in fashion_mnist_e30 fashion_mnist_e30_s2; do
      d=$out/runs/$sch
      from="train.budget_from=$d"
      echo "$d/sb_s$s lr_schedule=$sch strategy=sb seed=$s $budget $from"
      echo "$d/stale_sb_n2_s$s lr_schedule=$sch strategy=stale_sb strategy.staleness=2 seed=$s $budget $from"
      echo "$d/stale_sb_n3_s$s lr_schedule=$sch strategy=stale_sb strategy.staleness=3 seed=$s $budget $from"
      echo "$d/kath18_s$s lr_schedule=$sch strategy=kath18 seed=$s $budget $from"
      echo "$d/uniform_s$s lr_schedule=$sch strategy=uniform seed=$s $budget $from"
      echo "$d/infobatch_s$s lr_schedule=$sch strategy=infobatch seed=$s train.max_epochs=30 train.budget_axis=cost $from"
      echo "$d/composer_sb_s$s lr_schedule=$sch strategy=composer_sb seed=$s train.max_epochs=30 train.budget_axis=cost $from"
    done
  done
} | phase

# 3: Figures 11 and 13 at schedule e30, seed 0 (SB at s = 1/3 and Stale-SB n = 2, 3 come from runs/)
{
  d=$out/runs/fashion_mnist_e30
  w=$out/sweeps
  echo "$w/stale_sb_n4_s0 lr_schedule=fashion_mnist_e30 strategy=stale_sb strategy.staleness=4 seed=0 $budget train.budget_from=$d"
  for sel in 0.2 0.5 0.65; do
    echo "$w/sb_sel${sel}_s0 lr_schedule=fashion_mnist_e30 strategy=sb strategy.selectivity=$sel seed=0 $budget train.budget_from=$d"
  done
} | phase

# 4-5: Figure 12, UniformFlip label noise 1 / 10 / 20 %, Traditional then SB at its cost, seed 0
{
  for noise in 0.01 0.1 0.2; do
    w=$out/sweeps/noise$noise
    echo "$w/traditional_s0 lr_schedule=fashion_mnist_e30 strategy=traditional seed=0 dataset.label_noise=$noise"
  done
} | phase
{
  for noise in 0.01 0.1 0.2; do
    w=$out/sweeps/noise$noise
    echo "$w/sb_s0 lr_schedule=fashion_mnist_e30 strategy=sb seed=0 dataset.label_noise=$noise $budget train.budget_from=$w"
  done
} | phase
echo "done: $out"
