#!/usr/bin/env bash
# The single-GPU Table 1 (conf/sweep/table1_1gpu.yaml; make reproduce-table1-1gpu):
#   scripts/table1_1gpu.sh OUT        (SEEDS=0,1,2 by default)
# Real CIFAR10 in dataset.root (default ./data; fetch it once with
# `python -m selective_backprop.data.download cifar10 --root data`), ResNet18, 40-epoch schedule and its
# 0.8x analogue, eight strategies, the device loader, bf16 AMP and channels_last.
# Phase 1 trains the Traditional references (both schedules x seeds); phase 2 runs the whole grid, in
# which every other strategy takes its Traditional run's measured cost as budget (train.budget_from =
# OUT, searched recursively) and the finished Traditional runs return at once. Each phase is one Hydra
# multirun into OUT/<schedule>/<experiment>_s<seed>, so a parallel launcher works too
# (SWEEP_ARGS="hydra/launcher=slurm_gpu ..."); re-running resumes unfinished runs and skips finished ones.
# EXTRA_OVERRIDES="key=value ..." is appended to every run (toy sizes in the tests and in gpu-check);
# SB_TRAIN replaces the training command (default: $PYTHON -m selective_backprop.train).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT   (env: SEEDS=0,1,2 PYTHON=.venv/bin/python SWEEP_ARGS= EXTRA_OVERRIDES=)" >&2; exit 2; }
out=$1
seeds=${SEEDS:-0,1,2}
train=${SB_TRAIN:-"${PYTHON:-.venv/bin/python} -m selective_backprop.train"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$out"

# shellcheck disable=SC2086
$train -m sweep=table1_1gpu experiment=cifar10_1gpu_traditional seed="$seeds" hydra.sweep.dir="$out" \
  ${SWEEP_ARGS:-} ${EXTRA_OVERRIDES:-}
# shellcheck disable=SC2086
$train -m sweep=table1_1gpu seed="$seeds" hydra.sweep.dir="$out" ${SWEEP_ARGS:-} ${EXTRA_OVERRIDES:-}
echo "done: $out"
