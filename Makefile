# Selective-Backprop — `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
RUNS_CPU := results/fashion_mnist_cpu
# TEST_WORKERS: pytest-xdist workers for make test / test-fast (auto: one per core; 0: one process)
TEST_WORKERS ?= auto
# PARETO_ARGS=--keep-flagged keeps the runs the timing audit flags on the time-axis Pareto of report-cpu / report-1gpu
PARETO_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast demo bench gpu-check gpu-check-dry reproduce-regime reproduce-quick report-regime \
	reproduce-table1 reproduce-table1-1gpu report-1gpu reproduce-table1-cpu report-cpu report-paper \
	reproduce-frontier report-frontier regime-search clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

setup: $(PY)  ## create .venv, install the package editable with its dev extras, get Fashion-MNIST
	$(PIP) install -e '.[dev]'
	$(PY) scripts/get_data.py

test:  ## run the test suite (CPU; ~15 min on 2 cores, one pytest-xdist worker per core)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast:  ## the test suite without the slow end-to-end tests
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

demo:  ## the error-vs-budget frontier at demo size: Traditional, SB, uniform at 1/4, 1/2, 1 x Traditional's cost (Fashion-MNIST, resnet8, CPU, a few minutes)
	$(PY) scripts/demo.py --budgets 0.25,0.5,1 --out outputs/demo

BENCH_ARGS ?=

bench:  ## speed benchmark into results/bench/ (CPU ~4 min; GPU: BENCH_ARGS="--device cuda --model resnet18 --synthetic cifar")
	$(PY) scripts/benchmark.py $(BENCH_ARGS)

GPU_CHECK_ARGS ?=

gpu-check:  ## every CUDA path in one run (<= 8 min on one H100) -> results/gpu/<device>.md/.json; no CUDA: one line, exit 0
	$(PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

gpu-check-dry:  ## gpu-check's same checks on the CPU at toy size (~2 min) -> outputs/gpu_check_dry/
	$(PY) scripts/gpu_check.py --dry-run $(GPU_CHECK_ARGS)

PAPER_SWEEPS := table1_cifar10 table1_cifar100 table1_svhn label_noise selectivity staleness
PAPER_OUT := results/paper_scale
SWEEP_ARGS ?=

reproduce-table1:  ## the paper-scale sweeps on a GPU (days), then Table 1 and figures into results/paper_scale/
	@for s in $(PAPER_SWEEPS); do \
	  $(PY) -m selective_backprop.train -m sweep=$$s hydra.sweep.dir=multirun/paper/$$s $(SWEEP_ARGS) || exit 1; \
	done
	$(MAKE) report-paper

report-paper:  ## Table 1, Pareto frontiers and figures from multirun/paper into results/paper_scale/
	$(PY) scripts/make_table1.py multirun/paper --out $(PAPER_OUT)
	$(PY) scripts/plot_pareto.py multirun/paper --out $(PAPER_OUT)
	$(PY) scripts/plot_figures.py multirun/paper --out $(PAPER_OUT)/figures

T1_1GPU_OUT := multirun/table1_1gpu
RUNS_1GPU := results/cifar10_1gpu

reproduce-table1-1gpu:  ## single-GPU Table 1 on real CIFAR10 (ResNet18, 40 epochs, 48 runs; an afternoon on one GPU), then report-1gpu
	PYTHON=$(PY) bash scripts/table1_1gpu.sh $(T1_1GPU_OUT)
	rm -rf $(RUNS_1GPU)/runs
	$(PY) scripts/collect_runs.py $(T1_1GPU_OUT) $(RUNS_1GPU)/runs
	$(MAKE) report-1gpu

report-1gpu:  ## Table 1 (time, cost), strategy comparison, Pareto, figures 1/6/7 from results/cifar10_1gpu/runs
	$(PY) scripts/make_table1.py $(RUNS_1GPU)/runs --out $(RUNS_1GPU)
	$(PY) scripts/make_table1.py $(RUNS_1GPU)/runs --axis cost --out $(RUNS_1GPU)/cost_axis
	$(PY) scripts/compare_strategies.py $(RUNS_1GPU)/runs --out $(RUNS_1GPU)
	$(PY) scripts/plot_pareto.py $(RUNS_1GPU)/runs --out $(RUNS_1GPU) $(PARETO_ARGS)
	$(PY) scripts/plot_figures.py $(RUNS_1GPU)/runs --which fig1,fig6,fig7 --out $(RUNS_1GPU)/figures

T1_CPU_OUT := multirun/table1_cpu

reproduce-table1-cpu:  ## CPU-scale Table 1 (5 seeds, full test set) + peers + Fig 11-13 on real Fashion-MNIST (~3 h 50 min on 2 cores; run nothing else alongside), then report-cpu
	PYTHON=$(PY) bash scripts/table1_cpu.sh $(T1_CPU_OUT)
	rm -rf $(RUNS_CPU)/runs $(RUNS_CPU)/sweeps
	$(PY) scripts/collect_runs.py $(T1_CPU_OUT)/runs $(RUNS_CPU)/runs
	$(PY) scripts/collect_runs.py $(T1_CPU_OUT)/sweeps $(RUNS_CPU)/sweeps
	$(MAKE) report-cpu

report-cpu:  ## Table 1 (time, cost), strategy comparison, Pareto, figures from results/fashion_mnist_cpu/{runs,sweeps}
	$(PY) scripts/make_table1.py $(RUNS_CPU)/runs --out $(RUNS_CPU)
	$(PY) scripts/make_table1.py $(RUNS_CPU)/runs --axis cost --out $(RUNS_CPU)/cost_axis
	$(PY) scripts/compare_strategies.py $(RUNS_CPU)/runs --out $(RUNS_CPU)
	$(PY) scripts/plot_pareto.py $(RUNS_CPU)/runs --out $(RUNS_CPU) $(PARETO_ARGS)
	$(PY) scripts/plot_pareto.py $(RUNS_CPU)/runs --axis cost --out $(RUNS_CPU)/cost_axis
	$(PY) scripts/plot_figures.py $(RUNS_CPU)/runs --which fig1,fig6,fig7 --out $(RUNS_CPU)/figures
	$(PY) scripts/plot_figures.py $(RUNS_CPU)/runs $(RUNS_CPU)/sweeps --which fig11,fig12,fig13 --out $(RUNS_CPU)/figures
	$(PY) scripts/gradient_similarity.py --subset 6000 --epochs 2 --every 10 --out $(RUNS_CPU)/figures

REGIME_OUT := multirun/regime
REGIME_SEEDS ?= 0,1,2
REGIME_STRATEGIES ?= sb,stale_sb,uniform

# The five 2 000-image map points at seeds 0-2 (~2 h on 2 cores); the map's 6 000-image point is the
# Table 1 point, read from $(RUNS_CPU)/runs (make reproduce-table1-cpu).
reproduce-regime:  ## the regime map (CPU, ~2 h): equal-budget points on Fashion-MNIST, then report-regime
	bash scripts/regime_sweep.sh $(REGIME_OUT) $(REGIME_SEEDS) $(REGIME_STRATEGIES) \
	  "lr_schedule=fashion_mnist_e10" "lr_schedule=fashion_mnist_e30" "lr_schedule=fashion_mnist_e30 model.width=8" \
	  "lr_schedule=fashion_mnist_e10 dataset.augment.crop_padding=0 dataset.augment.hflip=false" "lr_schedule=fashion_mnist_e30 dataset.augment.crop_padding=0 dataset.augment.hflip=false"
	$(MAKE) report-regime

report-regime:  ## regime_map.csv/md/png from multirun/regime (+ the Table 1 runs) into results/regime/
	$(PY) scripts/regime_map.py $(REGIME_OUT) $(RUNS_CPU)/runs --out results/regime

reproduce-quick:  ## one regime point (6k images, no augmentation, 10 epochs), SB and uniform vs Traditional (~15 min)
	bash scripts/regime_sweep.sh multirun/quick 0 sb,uniform \
	  "lr_schedule=fashion_mnist_e10 dataset.subset=6000 dataset.test_subset=2000 dataset.augment.crop_padding=0 dataset.augment.hflip=false"
	$(PY) scripts/regime_map.py multirun/quick --out multirun/quick/report

FRONTIER_OUT := multirun/frontier
FRONTIER_RESULTS := results/frontier
FRONTIER_POINTS ?= 6k 60k

reproduce-frontier:  ## the error-vs-budget frontier at the 6k and 60k points (CPU, hours per point; SEEDS, JOBS), then report-frontier
	@for p in $(FRONTIER_POINTS); do \
	  POINT=$$p PYTHON=$(PY) bash scripts/frontier.sh $(FRONTIER_OUT)/$$p || exit 1; \
	  rm -rf $(FRONTIER_RESULTS)/$$p/runs; \
	  $(PY) scripts/collect_runs.py $(FRONTIER_OUT)/$$p $(FRONTIER_RESULTS)/$$p/runs || exit 1; \
	done
	$(MAKE) report-frontier

report-frontier:  ## frontier.md/.csv/.png per point from results/frontier/<point>/runs
	@for p in $(FRONTIER_POINTS); do \
	  $(PY) scripts/frontier.py $(FRONTIER_RESULTS)/$$p/runs --out $(FRONTIER_RESULTS)/$$p || exit 1; \
	done

REGIME_SEARCH_OUT := multirun/regime_search
REGIME_SEARCH_RESULTS := results/regime_search

regime-search:  ## Traditional over training-set size / width / augmentation / epochs (~2 h on 2 cores), table into results/regime_search/
	PYTHON=$(PY) bash scripts/regime_search.sh $(REGIME_SEARCH_OUT)
	rm -rf $(REGIME_SEARCH_RESULTS)/runs
	$(PY) scripts/collect_runs.py $(REGIME_SEARCH_OUT) $(REGIME_SEARCH_RESULTS)/runs
	$(PY) scripts/regime_search.py $(REGIME_SEARCH_RESULTS)/runs --out $(REGIME_SEARCH_RESULTS)

clean:  ## remove caches and local outputs (keeps data/ and results/)
	rm -rf outputs multirun .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
