#!/usr/bin/env python
"""Every CUDA code path of the project, checked in one run with one report (`make gpu-check`).

    python scripts/gpu_check.py [--out results/gpu] [--work outputs/gpu_check] [--only CHECK,...] [--bundle]
    python scripts/gpu_check.py --dry-run        # the same checks on the CPU at toy size (the tests run it)

The checks, in this order, each in its own process under a time limit (together <= 8 minutes on one H100):

  cuda_tests  `pytest -m cuda`: every CUDA test (tests/test_cuda.py: each strategy's training steps under
              torch.cuda.set_sync_debug_mode("error"), CUDA-event phase times against the wall time, AMP
              bf16 / fp16 with the grad scaler, the device loader against the CPU path, exact resume).
  models      each paper model (wrn28_10, wrn16_8, resnet18, densenet121, mobilenetv2) trains Traditional
              and SB for a short run on generated CIFAR10-shaped data with the device loader, bf16 AMP
              and channels_last: images/s, peak memory (torch.cuda.max_memory_allocated), SB ÷
              Traditional training time against the ideal from the same runs' phase costs (the cost
              model of scripts/benchmark.py).
  ddp_nccl    with two or more GPUs, a two-rank torchrun SB run over NCCL whose ranks agree on the global
              loss history, step counts and weights (the `nccl` test of tests/test_cuda.py); one GPU:
              "skipped: 1 GPU".
  bench       `make bench` on the GPU (resnet18, synthetic CIFAR10, bf16, channels_last, shortened).
  table1      `make reproduce-table1-1gpu` at one seed and a few minutes' size (3 epochs on 5 000
              images of real CIFAR10 from --cifar-root, else of generated CIFAR10 files): runs ->
              tables -> figures.

Writes OUT/<device>.md and OUT/<device>.json (device, torch / CUDA versions, each check's result with
its figure and seconds, the paper models' table, the projected GPU-hours of the full single-GPU Table 1
from the measured resnet18 throughput), prints one line per check, and exits 1 if a check failed.
Scratch (runs, logs, the benchmark's and the small Table 1's reports) goes to --work; --bundle also
packs it into OUT/<device>-artifacts.tar.gz. Without CUDA and without --dry-run it prints one line,
"no CUDA device: nothing to check", and exits 0.

--dry-run runs the same sequence on the CPU (CUDA hidden from every process it starts) at toy size:
the CUDA tests are collected and all skipped, the models are toy versions of the paper models (same
code path, a fraction of the width or depth), NCCL is skipped, the benchmark and the small Table 1
run at toy size. It writes the same report (default --out outputs/gpu_check_dry).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

from selective_backprop.cli_errors import check_output_dir, exits_on_bad_input  # noqa: E402
from selective_backprop.errors import ConfigError  # noqa: E402
from selective_backprop.record import FINISHED, SUMMARY_FILE  # noqa: E402

NO_CUDA = "no CUDA device: nothing to check"
CHECKS = ("cuda_tests", "models", "ddp_nccl", "bench", "table1")
MODELS = ("wrn28_10", "wrn16_8", "resnet18", "densenet121", "mobilenetv2")
STATUSES = ("pass", "fail", "skipped")
NCCL_TEST = "nccl"            # -k expression selecting tests/test_cuda.py's two-rank NCCL test

# Sizes. GPU: what fits the 8 minutes on one H100 with room to spare (the limits are the ceilings);
# dry run: toy sizes for 2 CPU cores.
GPU = {
    "total_s": 480,
    "limits": {"cuda_tests": 150, "models": 150, "ddp_nccl": 100, "bench": 110, "table1": 150},
    "models": {"n_train": 10240, "n_test": 2048, "epochs": 2, "batch": 128, "precision": "bf16",
               "channels_last": True, "warmup": 1024},
    "bench": ["--device", "cuda", "--model", "resnet18", "--synthetic", "cifar", "--subset", "10240",
              "--test-subset", "2048", "--epochs", "3", "--rounds", "1", "--train-precision", "bf16",
              "--channels-last", "--budget-s", "0.5", "--reps", "3", "--timing-budget-s", "10",
              "--quality-examples", "4096"],
    "table1": {"per_batch": 1000, "n_test": 1000, "epochs": 3, "overrides": []},
}
DRY = {
    "total_s": 900,
    "limits": {"cuda_tests": 180, "models": 240, "ddp_nccl": 60, "bench": 240, "table1": 300},
    "models": {"n_train": 128, "n_test": 32, "epochs": 1, "batch": 16, "precision": "fp32",
               "channels_last": True, "warmup": 0},
    "bench": ["--device", "cpu", "--model", "resnet8", "--synthetic", "cifar", "--subset", "256",
              "--test-subset", "64", "--epochs", "1", "--rounds", "1", "--batch-size", "32",
              "--select-batch-sizes", "64", "--precisions", "fp32", "--quality-examples", "128",
              "--budget-s", "0.2", "--reps", "2", "--timing-budget-s", "2", "model.width=8"],
    "table1": {"per_batch": 32, "n_test": 64, "epochs": 1,
               "overrides": ["model=resnet8", "model.width=4", "train.batch_size=16", "device=cpu",
                             "train.precision=fp32", "train.channels_last=false"]},
}
# Dry run: the paper models at toy size (the same model code, a fraction of the width or depth).
# resnet8 runs at width 8, not 4, wherever it trains channels_last: torch 2.14.1's CPU weight gradient of
# a channels_last 1x1 stride-2 convolution with 4 input channels segfaults on one thread on AVX2-only
# CPUs (seen on an AMD EPYC; resnet8's first downsampling shortcut at width 4 is exactly that).
TOY_MODELS = {
    "wrn28_10": (["model.name=wide_resnet", "+model.depth=10", "+model.widen_factor=1"], "wide_resnet 10-1"),
    "wrn16_8": (["model.name=wide_resnet", "+model.depth=10", "+model.widen_factor=2"], "wide_resnet 10-2"),
    "resnet18": (["model.name=resnet8", "+model.width=8"], "resnet8 width 8"),
    "densenet121": (["model.growth_rate=2"], "densenet121 growth 2"),
    "mobilenetv2": ([], "mobilenetv2"),
}


# ------------------------------------------------------------------------------------- shared

def profile(dry: bool) -> dict:
    return DRY if dry else GPU


def child_env(dry: bool) -> dict:
    """The environment of every process a check starts: this checkout's package first on the path
    (no install needed), one CPU thread on a dry run, and CUDA hidden on a dry run."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    if dry:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["OMP_NUM_THREADS"] = "1"
    return env


def outcome(status: str, figure: str, **details) -> dict:
    assert status in STATUSES, status
    return {"status": status, "figure": figure, "details": details}


def run_command(cmd: list[str], env: dict, cwd: Path = REPO) -> int:
    """Run `cmd` with this process's stdout / stderr (the check's log); returns its exit code."""
    print("$ " + shlex.join(cmd), flush=True)
    return subprocess.run(cmd, cwd=cwd, env=env).returncode


def make_cmd(target: str, **variables: str) -> list[str]:
    make = shutil.which("make")
    if make is None:
        raise ConfigError(f"make: not found on PATH; accepted: GNU make installed (gpu-check runs `make {target}`)")
    return [make, "--no-print-directory", "-C", str(REPO), target, *(f"{k}={v}" for k, v in variables.items())]


def junit_counts(path: Path) -> dict:
    """{tests, passed, failed, skipped, failures: [(test, first line)]} from pytest's JUnit XML."""
    if not path.exists():
        return {"tests": 0, "passed": 0, "failed": 0, "skipped": 0, "failures": []}
    counts = {"tests": 0, "failed": 0, "skipped": 0}
    failures = []
    for case in ET.parse(path).getroot().iter("testcase"):
        counts["tests"] += 1
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            counts["failed"] += 1
            message = (bad.get("message") or "").strip().splitlines()
            failures.append((f"{case.get('classname')}::{case.get('name')}", message[0][:200] if message else ""))
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
    counts["passed"] = counts["tests"] - counts["failed"] - counts["skipped"]
    return {**counts, "failures": failures}


def cuda_test_files() -> list[str]:
    """The test files holding CUDA tests (marked `cuda`, or its alias `gpu`): collecting only these keeps
    a machine without the notebook tests' packages (a bare GPU image) from failing at collection."""
    marks = ("mark.cuda", "mark.gpu")
    return [str(p) for p in sorted((REPO / "tests").glob("test_*.py")) if any(m in p.read_text() for m in marks)]


def pytest_cuda(ctx: dict, selection: str, name: str) -> dict:
    xml = Path(ctx["work"]) / f"{name}.xml"
    xml.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-k", selection, "-q", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={xml}", *cuda_test_files()]
    rc = run_command(cmd, child_env(ctx["dry"]))
    return {"rc": rc, **junit_counts(xml)}


# ------------------------------------------------------------------------------------- checks

def check_cuda_tests(ctx: dict) -> dict:
    res = pytest_cuda(ctx, f"not {NCCL_TEST}", "cuda_tests")
    failed = "; ".join(f"{name}: {msg}" for name, msg in res["failures"][:5])
    if ctx["dry"]:
        if res["rc"] == 0 and res["tests"] > 0 and res["skipped"] == res["tests"]:
            return outcome("skipped", f"dry run: {res['tests']} CUDA tests collected, all skipped without CUDA", **res)
        return outcome("fail", f"dry run: exit {res['rc']}, {res['tests']} collected, {res['passed']} ran "
                               f"without CUDA{': ' + failed if failed else ''}", **res)
    ok = res["rc"] == 0 and res["failed"] == 0 and res["passed"] > 0
    figure = f"{res['passed']} passed, {res['failed']} failed, {res['skipped']} skipped"
    return outcome("pass" if ok else "fail", figure + (f" ({failed})" if failed else ""), **res)


def model_overrides(model: str, ctx: dict) -> tuple[list[str], str]:
    if ctx["dry"]:
        extra, label = TOY_MODELS[model]
        return extra, f"{label} (toy {model})"
    return [], model


def model_row(model: str, ctx: dict) -> dict:
    """Traditional and SB on generated CIFAR10-shaped data: throughput, peak memory, SB ÷ Traditional."""
    import benchmark as bench
    from selective_backprop.engine.trainer import Trainer

    size = profile(ctx["dry"])["models"]
    extra, label = model_overrides(model, ctx)
    cuda = not ctx["dry"]
    args = bench.parse_args(["--device", "cuda" if cuda else "cpu", "--model", model, "--synthetic", "cifar10",
                             "--subset", str(size["n_train"]), "--test-subset", str(size["n_test"]),
                             "--epochs", str(size["epochs"]), "--batch-size", str(size["batch"]),
                             "--train-precision", size["precision"],
                             *(["--channels-last"] if size["channels_last"] else []), *extra])
    work = Path(ctx["work"]) / "models" / model
    shutil.rmtree(work, ignore_errors=True)
    start = time.perf_counter()
    if size["warmup"]:           # cuDNN autotuning and allocations, outside the timed runs
        Trainer(bench.compose_cfg(args, "sb", ["train.max_epochs=1", "train.eval_every=1"]), str(work / "warmup"),
                data_bundle=bench.synthetic_bundle("cifar10", size["warmup"], size["warmup"], seed=1)).fit()
    data = bench.synthetic_bundle("cifar10", size["n_train"], size["n_test"])
    summaries, peaks, losses, evals = {}, {}, {}, {}
    for name in ("traditional", "sb"):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(bench.compose_cfg(args, name), str(work / name), data_bundle=data)
        summaries[name] = trainer.fit()
        peaks[name] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        losses[name] = trainer.eval_rows[-1]["train_loss"]
        evals[name] = size["n_test"] * len(trainer.eval_rows) / max(trainer.timer.eval_s, 1e-9)
        del trainer
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    costs = bench.round_costs(summaries)
    trad, sb = costs["traditional"], costs["sb"]
    ok = all(s["status"] == "completed" for s in summaries.values()) and all(map(math.isfinite, losses.values()))
    return {"model": model, "label": label, "ok": ok, "seconds": round(time.perf_counter() - start, 1),
            "status": {k: s["status"] for k, s in summaries.items()}, "final_train_loss": losses,
            "trad_img_s": trad["backpropped"] / trad["train_s"], "sb_img_s": sb["considered"] / sb["train_s"],
            "eval_img_s": evals["traditional"], "peak_mib": peaks, "kept_share": sb["s"],
            "sb_ratio": sb["ratio"], "ideal": sb["ideal"], "ratio_vs_ideal": sb["ratio_vs_ideal"],
            "load_normalised": sb["load_normalised"], "c_sel_over_c_train": sb["c_sel"] / sb["c_train"]}


def check_models(ctx: dict) -> dict:
    rows = []
    for model in MODELS:
        try:
            rows.append(model_row(model, ctx))
        except Exception as err:            # one model's failure is reported, the others still run
            rows.append({"model": model, "ok": False, "error": f"{type(err).__name__}: {err}"[:300]})
        write_result(ctx, "models", outcome("fail", f"partial: {len(rows)}/{len(MODELS)} models", rows=rows))
    done = [r for r in rows if "sb_ratio" in r]
    bad = [r["model"] + (f" ({r['error']})" if "error" in r else "") for r in rows if not r["ok"]]
    figure = f"{len(MODELS) - len(bad)}/{len(MODELS)} models trained"
    if done:
        figure += (f"; SB ÷ Trad {min(r['sb_ratio'] for r in done):.2f}–{max(r['sb_ratio'] for r in done):.2f} "
                   f"vs ideal {min(r['ideal'] for r in done):.2f}–{max(r['ideal'] for r in done):.2f}")
    if bad:
        figure += "; failed: " + ", ".join(bad)
    return outcome("fail" if bad else "pass", figure, rows=rows, setup=profile(ctx["dry"])["models"])


def check_ddp_nccl(ctx: dict) -> dict:
    if ctx["dry"]:
        return outcome("skipped", "skipped (dry run: NCCL needs two GPUs; the gloo path is tests/test_distributed.py)")
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return outcome("skipped", f"skipped: {gpus} GPU", gpus=gpus)
    res = pytest_cuda(ctx, NCCL_TEST, "ddp_nccl")
    ok = res["rc"] == 0 and res["passed"] == 1 and res["failed"] == 0
    failures = "; ".join(f"{n}: {m}" for n, m in res["failures"]) or "no test passed"
    figure = (f"2 ranks over NCCL agree on loss history, steps and weights ({gpus} GPUs)" if ok else
              f"exit {res['rc']}: {failures}")
    return outcome("pass" if ok else "fail", figure, gpus=gpus, **res)


def check_bench(ctx: dict) -> dict:
    out = Path(ctx["work"]) / "bench"
    shutil.rmtree(out, ignore_errors=True)
    args = [*profile(ctx["dry"])["bench"], "--out", str(out), "--work", str(Path(ctx["work"]) / "bench_runs")]
    rc = run_command(make_cmd("bench", PY=sys.executable, BENCH_ARGS=shlex.join(args)), child_env(ctx["dry"]))
    reports = sorted(out.glob("*.json"))
    if rc != 0 or not reports:
        return outcome("fail", f"make bench exited {rc}" + ("" if reports else ", no report written"), rc=rc)
    res = json.loads(reports[0].read_text())
    marks = ", ".join(f"{t['target'].split('.')[0]} {'n/a' if t['met'] is None else 'met' if t['met'] else 'NOT met'}"
                      for t in res["targets"])
    sb = res["epoch"]["sb"]
    figure = f"targets {marks}; SB ÷ Trad {sb['ratio']:.2f} (ideal {sb['ideal']:.2f})"
    return outcome("pass", figure, report=str(reports[0].with_suffix(".md")), targets=res["targets"],
                   sb_ratio=sb["ratio"], ideal=sb["ideal"])


def sweep_grid() -> dict:
    """The single-GPU Table 1 grid (conf/sweep/table1_1gpu.yaml): experiments, schedules, seeds, epochs."""
    from hydra import compose, initialize_config_dir

    from selective_backprop.conf import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        params = compose(config_name="config", overrides=["sweep=table1_1gpu"], return_hydra_config=True
                         ).hydra.sweeper.params
        grid = {k: str(params[k]).split(",") for k in ("experiment", "lr_schedule", "seed")}
        cfg = compose(config_name="config", overrides=[f"experiment={grid['experiment'][0]}"])
        grid["epochs"] = int(cfg.lr_schedule.epochs)
        grid["dataset"] = str(cfg.dataset.name)
    return grid


def cifar_data(ctx: dict) -> tuple[Path, bool]:
    """(CIFAR10 root, generated?): real files under --cifar-root, else generated ones (tests/datagen.py)."""
    real = Path(ctx["cifar_root"])
    if (real / "cifar-10-batches-py" / "data_batch_1").exists():
        return real, False
    sys.path.insert(0, str(REPO / "tests"))
    import datagen

    size = profile(ctx["dry"])["table1"]
    root = Path(ctx["work"]) / "table1" / "cifar"
    shutil.rmtree(root, ignore_errors=True)
    datagen.make_cifar10(root, n_train_per_batch=size["per_batch"], n_test=size["n_test"])
    return root, True


def check_table1(ctx: dict) -> dict:
    size = profile(ctx["dry"])["table1"]
    grid = sweep_grid()
    root, generated = cifar_data(ctx)
    base = Path(ctx["work"]) / "table1"
    runs, report = base / "runs", base / "report"
    shutil.rmtree(runs, ignore_errors=True)
    shutil.rmtree(report, ignore_errors=True)
    overrides = [f"dataset.root={root}", f"++lr_schedule.epochs={size['epochs']}", "train.tensorboard=false",
                 *size["overrides"]]
    if not generated:
        overrides += [f"dataset.subset={5 * size['per_batch']}", f"dataset.test_subset={size['n_test']}"]
    env = {**child_env(ctx["dry"]), "SEEDS": "0", "EXTRA_OVERRIDES": " ".join(overrides), "PYTHON": sys.executable}
    if generated:       # generated files: torchvision's md5 tables pointed at them (tests/hooked_train.py)
        env["SB_TRAIN"] = f"{sys.executable} {REPO / 'tests' / 'hooked_train.py'} --patch-md5 {root} --"
    # A few-minute run's seconds per cost unit are dominated by start-up, so the timing audit may flag
    # any of them; this check is about the pipeline, so the time-axis Pareto keeps flagged runs.
    rc = run_command(make_cmd("reproduce-table1-1gpu", PY=sys.executable, T1_1GPU_OUT=str(runs),
                              RUNS_1GPU=str(report), PARETO_ARGS="--keep-flagged"), env)
    expected = len(grid["experiment"]) * len(grid["lr_schedule"])
    summaries = [json.loads(p.read_text()) for p in sorted(runs.rglob(SUMMARY_FILE))]
    finished = [s for s in summaries if s.get("status") in FINISHED]
    files = ["table1.md", "cost_axis/table1.md", "comparison.md", f"pareto_{grid['dataset']}.png",
             "figures/fig1.png", "figures/fig6.png", "figures/fig7.png"]
    missing = [f for f in files if not (report / f).exists()]
    trad = {s["lr_schedule"]: s["final_test_error"] for s in finished if s["strategy"] == "traditional"}
    data = "real CIFAR10" if not generated else "generated CIFAR10 files"
    figure = (f"{len(finished)}/{expected} runs finished ({data}, equal cost budgets), Traditional final error "
              + " / ".join(f"{100 * e:.1f} %" for e in trad.values()) + f"; {len(files) - len(missing)}/{len(files)} "
              "report files")
    ok = rc == 0 and len(finished) == expected and not missing
    if not ok:
        figure += f"; exit {rc}" + (f", missing {', '.join(missing)}" if missing else "")
    comparison = report / "comparison.md"
    return outcome("pass" if ok else "fail", figure, rc=rc, runs=str(runs), report=str(report), data=data,
                   expected=expected, finished=len(finished), missing=missing,
                   comparison=comparison.read_text() if comparison.exists() else None)


CHECK_FUNCS = {"cuda_tests": check_cuda_tests, "models": check_models, "ddp_nccl": check_ddp_nccl,
               "bench": check_bench, "table1": check_table1}


# -------------------------------------------------------------------------- one check, one process

def result_path(ctx: dict, name: str) -> Path:
    return Path(ctx["work"]) / "results" / f"{name}.json"


def write_result(ctx: dict, name: str, result: dict) -> None:
    path = result_path(ctx, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float) + "\n")
    tmp.replace(path)


def worker(name: str, ctx: dict) -> int:
    """Run one check in this process and write its result (the parent reads it)."""
    if ctx["dry"]:
        torch.set_num_threads(1)      # shared CPU cores: one intra-op thread (results/bench/cpu.md)
    try:
        result = CHECK_FUNCS[name](ctx)
    except Exception as err:
        result = outcome("fail", f"{type(err).__name__}: {' '.join(str(err).split())}"[:400])
    write_result(ctx, name, result)
    return 0


def run_check(name: str, ctx: dict, timeout: float) -> dict:
    """The check in a child process (its own session, killed whole at the time limit); its result."""
    path = result_path(ctx, name)
    path.unlink(missing_ok=True)
    log = Path(ctx["work"]) / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--work", ctx["work"],
           "--cifar-root", ctx["cifar_root"], *(["--dry-run"] if ctx["dry"] else [])]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(ctx["dry"]), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    seconds = time.perf_counter() - start
    result = json.loads(path.read_text()) if path.exists() else None
    if rc is None:
        partial = f" ({result['figure']})" if result else ""
        result = outcome("fail", f"timed out after {timeout:.0f} s{partial}", **(result or {}).get("details", {}))
    elif result is None:
        result = outcome("fail", f"the check's process exited {rc} without a result (see {log})")
    result.update(name=name, seconds=round(seconds, 1), log=str(log))
    return result


# ------------------------------------------------------------------------------------- report

def environment(dry: bool) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "host": platform.node(), "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "commit": git_commit(), "dry_run": dry}
    if dry:
        env.update(device_name=f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (dry run)",
                   gpus=0, memory_gib=None)
    else:
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                   memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count)
    return env


def git_commit() -> str | None:
    """This checkout's commit; $SB_GIT_COMMIT where the copy has no .git (a machine the tree was copied to)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        out = None
    return (out.stdout.strip() if out and out.returncode == 0 else "") or os.environ.get("SB_GIT_COMMIT") or None


def slug(env: dict) -> str:
    if env["dry_run"]:
        return "dry-run-cpu"
    return re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-") or "cuda"


def projection(results: dict, dry: bool) -> dict | None:
    """GPU-hours of the full single-GPU Table 1 from the measured resnet18 throughput: every run has
    Traditional's cost budget, so each takes about Traditional's time (InfoBatch and Composer-SB stop
    earlier); per-run start-up is not counted."""
    rows = (results.get("models") or {}).get("details", {}).get("rows", [])
    row = next((r for r in rows if r.get("model") == "resnet18" and "trad_img_s" in r), None)
    if row is None:
        return None
    from selective_backprop.data import DATASET_INFO

    grid = sweep_grid()
    info = DATASET_INFO[grid["dataset"]]
    runs = len(grid["experiment"]) * len(grid["lr_schedule"]) * len(grid["seed"])
    per_run = grid["epochs"] * (info.train_size / row["trad_img_s"] + info.test_size / row["eval_img_s"])
    return {"runs": runs, "epochs": grid["epochs"], "trad_img_s": row["trad_img_s"], "eval_img_s": row["eval_img_s"],
            "hours_per_run": per_run / 3600, "gpu_hours": runs * per_run / 3600, "dry_run": dry}


def markdown(report: dict) -> str:
    env, results = report["env"], report["results"]
    out = [f"# GPU check: {env['device_name']}", "",
           "`" + shlex.join(["python", "scripts/gpu_check.py", *report["argv"]]) + "`", "",
           f"{env['date']} · torch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}) · Python "
           f"{env['python']} · {env['gpus']} GPU(s)" + (f", {env['memory_gib']} GiB" if env.get("memory_gib") else "")
           + f" · commit {env['commit'] or 'unknown'} · {report['seconds']:.0f} s in all", ""]
    if env["dry_run"]:
        out += ["**Dry run**: the checks on the CPU at toy size; no figure here says anything about a GPU.", ""]
    out += ["| check | result | figure | seconds |", "|---|---|---|---|"]
    out += [f"| {r['name']} | {r['status']} | {r['figure']} | {r['seconds']:.0f} |" for r in results.values()]
    models = (results.get("models") or {}).get("details", {})
    rows, setup = models.get("rows", []), models.get("setup")
    if rows:
        how = (f"{setup['n_train']} generated CIFAR10-shaped images × {setup['epochs']} epoch(s), b = "
               f"{setup['batch']}, the device loader, train.precision {setup['precision']}, channels_last "
               f"{setup['channels_last']}" if setup else "generated CIFAR10-shaped data")
        out += ["", "## Paper models", "",
                f"Traditional and SB (prime_epochs=0, selectivity 1/3) on {how}; one process, the runs one after the "
                "other. *ideal* = (c_sel + s·c_train) / c_train from the SB run's own phase costs; "
                "*overhead-normalised* = SB's time over its compute phases ÷ Traditional's "
                "(scripts/benchmark.py).", "",
                "| model | Trad img/s | SB img/s (considered) | eval img/s | peak MiB Trad / SB | SB ÷ Trad | ideal "
                "| actual ÷ ideal | overhead-normalised | c_sel ÷ c_train | kept share | status |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "sb_ratio" not in r:
                out.append(f"| {r['model']} | | | | | | | | | | | {r.get('error', 'failed')} |")
                continue
            peak = " / ".join("–" if v is None else f"{v:.0f}" for v in r["peak_mib"].values())
            out.append(f"| {r['label']} | {r['trad_img_s']:.0f} | {r['sb_img_s']:.0f} | {r['eval_img_s']:.0f} | {peak} "
                       f"| {r['sb_ratio']:.3f} | {r['ideal']:.3f} | {r['ratio_vs_ideal']:.3f} "
                       f"| {r['load_normalised']:.3f} | {r['c_sel_over_c_train']:.2f} | {r['kept_share']:.3f} "
                       f"| {'ok' if r['ok'] else 'FAILED'} |")
    proj = report.get("projection")
    if proj:
        out += ["", "## Projected single-GPU Table 1", "",
                f"`make reproduce-table1-1gpu`: {proj['runs']} runs × {proj['epochs']} epochs of CIFAR10 at the "
                f"measured resnet18 rates ({proj['trad_img_s']:.0f} training / {proj['eval_img_s']:.0f} evaluation "
                "images/s): "
                f"about **{proj['gpu_hours']:.1f} GPU-hours** ({60 * proj['hours_per_run']:.1f} min per run; every run "
                "has Traditional's cost budget, InfoBatch and Composer-SB stop earlier; start-up not counted)."
                + (" Dry run: CPU toy figures, not a projection." if proj["dry_run"] else "")]
    t1 = (results.get("table1") or {}).get("details", {})
    if t1.get("comparison"):
        out += ["", f"## Small single-GPU Table 1 (one seed, {t1.get('data')})", "", t1["comparison"].strip()]
    bad = [r for r in results.values() if r["status"] == "fail"]
    if bad:
        out += ["", "## Failures", ""]
        for r in bad:
            tail = Path(r["log"]).read_text(errors="replace").splitlines()[-15:] if Path(r["log"]).exists() else []
            out += [f"### {r['name']}", "", r["figure"], "", "```", *tail, "```", ""]
    return "\n".join(out).rstrip() + "\n"


def bundle_artifacts(work: Path, target: Path) -> None:
    """Logs, results, the benchmark's and the small Table 1's reports (no checkpoints) in one tarball."""
    keep = ("logs", "results", "bench", "table1/report")
    with tarfile.open(target, "w:gz") as tar:
        for part in keep:
            for path in sorted((work / part).rglob("*")) if (work / part).exists() else []:
                if path.is_file() and path.suffix not in (".pt", ".pdf"):
                    tar.add(path, arcname=str(path.relative_to(work)))
        for path in sorted(work.glob("*.xml")):
            tar.add(path, arcname=path.name)


# -------------------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same checks on the CPU at toy size")
    p.add_argument("--out", default=None, help="report folder (default results/gpu; dry run outputs/gpu_check_dry)")
    p.add_argument("--work", default=None, help="scratch folder (default outputs/gpu_check[_dry])")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(CHECKS)}")
    p.add_argument("--cifar-root", default=os.environ.get("SB_DATA_ROOT", "data"),
                   help="real CIFAR10 for the table1 check if it holds cifar-10-batches-py (else generated files)")
    p.add_argument("--time-limit-s", type=float, default=None, help="the whole run (default 480 GPU, 900 dry run)")
    p.add_argument("--bundle", action="store_true", help="also write OUT/<device>-artifacts.tar.gz")
    p.add_argument("--worker", choices=CHECKS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.out = args.out or ("outputs/gpu_check_dry" if args.dry_run else "results/gpu")
    args.work = args.work or ("outputs/gpu_check_dry" if args.dry_run else "outputs/gpu_check")
    return args


def selected_checks(only: str | None) -> list[str]:
    if not only:
        return list(CHECKS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        raise ConfigError(f"--only={only!r}: unknown check {', '.join(unknown) or '(none given)'}; accepted: "
                          f"a comma-separated subset of {', '.join(CHECKS)}")
    return [n for n in CHECKS if n in names]


@exits_on_bad_input
def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = {"dry": args.dry_run, "work": str(Path(args.work).absolute()), "cifar_root": str(Path(args.cifar_root))}
    if args.worker:
        return worker(args.worker, ctx)
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    checks = selected_checks(args.only)
    out = check_output_dir(args.out)
    check_output_dir(args.work, "--work")
    Path(ctx["work"]).mkdir(parents=True, exist_ok=True)
    size = profile(args.dry_run)
    deadline = time.perf_counter() + (args.time_limit_s or size["total_s"])
    start = time.perf_counter()
    env = environment(args.dry_run)
    results = {}
    for name in checks:
        left = deadline - time.perf_counter()
        if left < 20:
            results[name] = {**outcome("fail", "not run: the time limit of the whole check was spent"),
                             "name": name, "seconds": 0.0, "log": ""}
        else:
            results[name] = run_check(name, ctx, min(size["limits"][name], left - 5))
        r = results[name]
        print(f"gpu-check {name:<10} {r['status'].upper():<7} {r['figure']} ({r['seconds']:.0f} s)", flush=True)
    report = {"env": env, "argv": sys.argv[1:] if argv is None else list(argv), "results": results,
              "seconds": time.perf_counter() - start, "ok": all(r["status"] != "fail" for r in results.values())}
    report["projection"] = projection(results, args.dry_run)
    out.mkdir(parents=True, exist_ok=True)
    name = slug(env)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out / f"{name}.md").write_text(markdown(report))
    if args.bundle:
        bundle_artifacts(Path(ctx["work"]), out / f"{name}-artifacts.tar.gz")
    proj = report["projection"]
    if proj and not args.dry_run:
        print(f"gpu-check projection: make reproduce-table1-1gpu ≈ {proj['gpu_hours']:.1f} GPU-hours here "
              f"({proj['runs']} runs, resnet18 at {proj['trad_img_s']:.0f} img/s)")
    failed = [n for n, r in results.items() if r["status"] == "fail"]
    listed = ": " + ", ".join(failed) if failed else ""
    print(f"gpu-check report: {out / (name + '.md')} ({len(failed)} failed{listed})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
