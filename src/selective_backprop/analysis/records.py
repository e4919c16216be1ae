"""The one loader of run records (``summary.json`` + ``metrics.jsonl``, see docs/run_record.md).

Every table, figure and notebook goes through :func:`load_runs`. It walks the given paths
recursively (Hydra multirun layout: ``<sweep>/<date>/<time>/<job>/``); a *run directory* is any
directory holding a ``summary.json`` or a ``metrics.jsonl``.

A run is **usable** when its ``summary.json`` exists and its ``status`` is ``completed`` or
``budget``. Every other run (no ``summary.json``, status ``running`` / ``preempted`` /
``diverged`` / ``failed``, unreadable files) is *incomplete/failed*: all of them are named,
with their status, in ONE warning, and left out of ``runs`` and ``evals`` (they are kept in
``RunSet.skipped`` for inspection only).

A usable run whose ``metrics.jsonl`` is missing or holds no evaluation is left out the same way (it
cannot be placed on any curve; counted in, it would read as "never reached the target").

A configuration is the set of runs sharing ``config_key`` (runs differing only in ``seed``). Each run
also carries its **setup** (dataset, training subset, augmentation, model, width and test subset: what
every strategy of a comparison shares) and its **point** (the setup plus the LR schedule), so that
runs of different setups are never pooled (:func:`point_of`).

**Duplicates.** The same run recorded twice — two records with the same ``config_key`` and seed (e.g.
``collect_runs.py`` copies of one sweep read together), or a copy whose ``config_key`` differs (an
older record format) but with the same dataset, strategy, seed, step and backward counts and
test-error curve, and no strategy parameter or (where both have a config) setup that differs — is
counted once: one warning names each duplicate and the record kept (the one with a recorded
``config_key``, then the first in path order).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from selective_backprop.errors import ConfigError
from selective_backprop.record import (DEFAULT_SELECT_FORWARD, DEFAULT_TRAIN_EXAMPLE, FINISHED, METRICS_FILE, PHASES,
                                       SUMMARY_FILE, CostWeights, cost_from_record, eval_cost_step,  # noqa: F401
                                       read_metrics)

logger = logging.getLogger(__name__)

USABLE_STATUSES = FINISHED
#: canonical display order of strategies (others follow alphabetically)
STRATEGY_ORDER = ("traditional", "sb", "stale_sb", "kath18", "uniform", "infobatch", "composer_sb")
STRATEGY_LABELS = {
    "traditional": "Traditional",
    "sb": "SB",
    "stale_sb": "Stale-SB",
    "kath18": "Kath18",
    "uniform": "Uniform",
    "infobatch": "InfoBatch",
    "composer_sb": "Composer-SB",
}
#: the x axes of Table 1 and the Pareto frontier: CLI name -> evaluation column
AXES = {"time": "train_s", "time_eval": "train_eval_s", "cost": "cost"}
AXIS_LABELS = {"time": "training time (s, evaluation excluded)",
               "time_eval": "training + evaluation time (s)",
               "cost": "cost (forward-equivalent units, evaluation excluded)"}
#: seed-mean curves are rounded to this many decimals to remove float noise from averaging
CURVE_DECIMALS = 12
#: the columns of an empty seed-mean curve frame
CURVE_COLUMNS = ["dataset", "strategy", "config_key", "epoch", "train_s", "test_error", "step"]

RUN_COLUMNS = [
    "run_dir", "status", "dataset", "model", "strategy", "lr_schedule", "config_key", "seed",
    "label_noise", "final_test_error", "best_test_error", "train_s", "epochs", "steps",
    "examples_forwarded", "examples_backpropped", "cost", "train_eval_s",
    "train_subset", "augment", "width", "test_subset", "setup", "point", "device",
]
#: the run's timing conditions (``summary.json`` ``timing``, absent in older records), flattened
TIMING_COLUMNS = ["timing_load_start", "timing_load_end", "timing_cpu_s", "timing_wall_s", "timing_threads",
                  "timing_cpu_count", "timing_host"]
# the strategy parameter that tells two configurations of a strategy apart in a label: (key, short
# name, default); a configuration at the default is labelled by the strategy alone (None: always named)
LABEL_PARAMS = {"stale_sb": ("staleness", "n", None), "sb": ("selectivity", "s", 1 / 3),
                "uniform": ("selectivity", "s", 1 / 3), "infobatch": ("prune_ratio", "r", 0.5),
                "composer_sb": ("keep", "keep", 0.5)}
SKIPPED_COLUMNS = ["run_dir", "status", "reason", "n_evals"]


class NoUsableRunsError(ConfigError):
    """No usable (completed / budget) run was found under the given paths."""


@dataclass
class RunSet:
    """Loaded run records.

    ``runs``: one row per usable run — ``run_dir, status, dataset, model, strategy,
    lr_schedule, config_key, seed, label_noise, final_test_error, best_test_error, train_s,
    epochs, steps, examples_forwarded, examples_backpropped``, the strategy parameters
    flattened as columns (``beta``, ``selectivity``, ``staleness``, …; prefixed ``param_`` only
    if a name collides) and the final phase seconds as ``phase_<name>``.

    ``evals``: one row per ``metrics.jsonl`` line of a usable run — ``run_dir, config_key,
    dataset, strategy, seed, label_noise, eval_idx`` then the metrics keys, with ``phase_s``
    flattened to ``phase_<name>`` columns.

    ``skipped``: the incomplete/failed runs — ``run_dir, status, reason, n_evals``.
    """

    runs: pd.DataFrame
    evals: pd.DataFrame
    skipped: pd.DataFrame

    def __len__(self) -> int:
        return len(self.runs)

    @property
    def datasets(self) -> list[str]:
        return sorted(self.runs["dataset"].unique()) if len(self.runs) else []

    def subset(self, mask: pd.Series) -> RunSet:
        """The runs selected by a boolean mask over ``runs`` (evals follow)."""
        runs = self.runs[mask.to_numpy()].reset_index(drop=True)
        evals = self.evals[self.evals["run_dir"].isin(set(runs["run_dir"]))].reset_index(drop=True)
        return RunSet(runs=runs, evals=evals, skipped=self.skipped)

    def with_schedules(self, suffixes: Iterable[str] | None) -> RunSet:
        """Runs whose ``lr_schedule`` name is one of ``suffixes`` or ends in ``_<suffix>`` (e.g.
        ``sched1`` keeps ``cifar10_sched1``); all runs when ``suffixes`` is empty or None."""
        wanted = [s for s in (suffixes or []) if s]
        if not wanted:
            return self
        names = self.runs["lr_schedule"].astype(str)
        return self.subset(names.map(lambda n: any(n == w or n.endswith(f"_{w}") for w in wanted)))

    def clean(self) -> RunSet:
        """Runs without label noise (``config.dataset.label_noise`` 0 or absent)."""
        return self.subset(self.runs["label_noise"].fillna(0.0) == 0.0)


def strategy_sort_key(name: str) -> tuple[int, str]:
    """Sort key putting strategies in :data:`STRATEGY_ORDER`, unknown ones after, alphabetically."""
    try:
        return (STRATEGY_ORDER.index(name), name)
    except ValueError:
        return (len(STRATEGY_ORDER), name)


def strategy_label(name: str) -> str:
    return STRATEGY_LABELS.get(name, name)


def config_label(strategy: str, params: dict[str, Any]) -> str:
    """e.g. ``Stale-SB n=2``, ``SB s=0.5``; a configuration at the strategy's default is its plain label."""
    label = strategy_label(strategy)
    key, short, default = LABEL_PARAMS.get(strategy, (None, None, None))
    value = params.get(key) if key else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return label
    if default is not None and abs(float(value) - default) < 1e-6:
        return label
    return f"{label} {short}={value:g}" if isinstance(value, float) else f"{label} {short}={value}"


def _augmented(dataset: dict[str, Any]) -> bool:
    aug = dataset.get("augment") or {}
    return bool(aug.get("crop_padding") or aug.get("hflip") or aug.get("cutout"))


def point_of(config: dict[str, Any], names: dict[str, Any] | None = None) -> dict[str, Any]:
    """The regime point of a run's resolved config: dataset, subset, augmentation, model, width, schedule
    and test subset. ``names`` (the summary's top-level ``dataset`` / ``model`` / ``lr_schedule``) fill
    in what an older or partial config lacks."""
    names = names or {}
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    schedule = config.get("lr_schedule") if isinstance(config.get("lr_schedule"), dict) else {}
    return {"dataset": dataset.get("name") or names.get("dataset"), "n_train": dataset.get("subset"),
            "augment": _augmented(dataset), "model": model.get("name") or names.get("model"),
            "width": model.get("width"), "lr_schedule": schedule.get("name") or names.get("lr_schedule"),
            "n_test": dataset.get("test_subset")}


def setup_label(point: dict[str, Any]) -> str:
    """e.g. ``fashion_mnist n2000 resnet8-w16 aug`` (`` test2000`` appended when the errors come from a
    test subset): what every strategy and schedule of a comparison shares."""
    n = "full" if point["n_train"] is None else f"n{point['n_train']}"
    width = "" if point["width"] is None else f"-w{point['width']}"
    test = "" if point.get("n_test") is None else f" test{point['n_test']}"
    return f"{point['dataset']} {n} {point['model']}{width} {'aug' if point['augment'] else 'noaug'}{test}"


def point_label(point: dict[str, Any]) -> str:
    """e.g. ``fashion_mnist n2000 resnet8-w16 fashion_mnist_e30 aug`` (`` test2000`` appended when the
    errors come from a test subset: such a point is not merged with a full-test-set one)."""
    n = "full" if point["n_train"] is None else f"n{point['n_train']}"
    width = "" if point["width"] is None else f"-w{point['width']}"
    test = "" if point.get("n_test") is None else f" test{point['n_test']}"
    return (f"{point['dataset']} {n} {point['model']}{width} {point['lr_schedule']} "
            f"{'aug' if point['augment'] else 'noaug'}{test}")


def _natural_key(path: Path) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))]


def find_run_dirs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """All run directories under ``paths`` (recursively), in natural sort order, deduplicated."""
    found: set[Path] = set()
    for p in paths:
        root = Path(p)
        if not root.exists():
            logger.warning("run path does not exist: %s", root)
            continue
        if root.is_file():
            root = root.parent
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in (".hydra", "tb", "__pycache__")]
            if SUMMARY_FILE in filenames or METRICS_FILE in filenames:
                found.add(Path(dirpath))
    return sorted(found, key=_natural_key)


def _read_summary(path: Path) -> dict[str, Any]:
    with path.open("r", encoding="utf-8") as f:
        summary = json.load(f)
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: not a JSON object")
    return summary


def _as_float(x: Any) -> float:
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _label_noise(config: dict[str, Any]) -> float:
    ds = config.get("dataset")
    if isinstance(ds, dict):
        v = _as_float(ds.get("label_noise"))
        return 0.0 if math.isnan(v) else v
    return 0.0


def _name(summary: dict[str, Any], key: str) -> Any:
    """Config name from the summary's top-level key, else from ``config.<key>.name``."""
    v = summary.get(key)
    if v is None:
        node = (summary.get("config") or {}).get(key)
        v = node.get("name") if isinstance(node, dict) else node
    return v


def _fallback_config_key(summary: dict[str, Any], row: dict[str, Any]) -> str:
    """A configuration key for a summary without ``config_key`` (the contract says it is always there).

    The config without its seed alone is not enough: a summary with a partial or missing ``config``
    would merge strategies (and schedules) into one configuration. The names from the summary's top
    level (dataset, model, strategy, lr_schedule) and its ``strategy_params`` are part of the key too.
    """
    config = summary.get("config") or {}
    key = {"config": {k: v for k, v in config.items() if k != "seed"},
           **{name: row.get(name) for name in ("dataset", "model", "strategy", "lr_schedule")},
           "strategy_params": summary.get("strategy_params") or {}}
    return json.dumps(key, sort_keys=True, default=str)


def _run_row(run_dir: Path, summary: dict[str, Any], evals: list[dict[str, Any]]) -> dict[str, Any]:
    config = summary.get("config") or {}
    final = _as_float(summary.get("final_test_error"))
    if math.isnan(final) and evals:
        final = _as_float(evals[-1].get("test_error"))
    best = _as_float(summary.get("best_test_error"))
    if math.isnan(best) and evals:
        best = min(_as_float(e.get("test_error")) for e in evals)
    seed = summary.get("seed", config.get("seed"))
    row: dict[str, Any] = {
        "run_dir": str(run_dir),
        "status": summary.get("status"),
        "dataset": _name(summary, "dataset"),
        "model": _name(summary, "model"),
        "strategy": _name(summary, "strategy"),
        "lr_schedule": _name(summary, "lr_schedule"),
        "config_key": summary.get("config_key"),
        "seed": seed,
        "label_noise": _label_noise(config),
        "final_test_error": final,
        "best_test_error": best,
        "train_s": _as_float(summary.get("train_s")),
        "epochs": _as_float(summary.get("epochs")),
        "steps": summary.get("steps"),
        "examples_forwarded": summary.get("examples_forwarded"),
        "examples_backpropped": summary.get("examples_backpropped"),
        "cost": _cost(summary, config),
        "train_eval_s": _as_float(summary.get("train_s")) + _as_float((evals[-1] if evals else {}).get("eval_s")),
    }
    point = point_of(config if isinstance(config, dict) else {}, row)
    row.update({"train_subset": point["n_train"], "augment": point["augment"], "width": point["width"],
                "test_subset": point["n_test"], "setup": setup_label(point), "point": point_label(point),
                "device": summary.get("device_name")})
    row.update(_timing(summary.get("timing")))
    if row["config_key"] is None:
        row["config_key"] = _fallback_config_key(summary, row)
        logger.info("%s: summary.json has no config_key; grouping by its config, strategy, lr_schedule "
                    "and strategy parameters", run_dir)
    for k, v in (summary.get("strategy_params") or {}).items():
        col = k if k not in row and not k.startswith("phase_") else f"param_{k}"
        row[col] = v
    for k, v in (summary.get("phase_s") or {}).items():
        row[f"phase_{k}"] = _as_float(v)
    return row


def _timing(timing: Any) -> dict[str, Any]:
    """``summary.json``'s ``timing`` object flattened into :data:`TIMING_COLUMNS` (NaN / None when the
    record has none); load averages are the 1-minute values."""
    timing = timing if isinstance(timing, dict) else {}

    def first(value: Any) -> float:
        return _as_float(value[0] if isinstance(value, (list, tuple)) and value else value)

    return {"timing_load_start": first(timing.get("loadavg_start")),
            "timing_load_end": first(timing.get("loadavg_end")),
            "timing_cpu_s": _as_float(timing.get("cpu_s")), "timing_wall_s": _as_float(timing.get("wall_s")),
            "timing_threads": _as_float(timing.get("threads")),
            "timing_cpu_count": _as_float(timing.get("cpu_count")), "timing_host": timing.get("host")}


def _cost(record: dict[str, Any], config: dict[str, Any]) -> float:
    """A metrics row's or summary's ``cost``; for records made before it existed, computed from
    the counters (select-forwarded = forwarded − backpropped) with the run's ``train.cost``
    weights (defaults 1 / 3). NaN when neither is there."""
    if record.get("cost") is not None:
        return _as_float(record["cost"])
    try:
        value = cost_from_record(record, _weights(config))
    except (TypeError, ValueError):
        return math.nan
    return math.nan if value is None else float(value)


def _train_config(config: Any) -> dict[str, Any]:
    return (config.get("train") or {}) if isinstance(config, dict) else {}


def _weights(config: Any) -> CostWeights:
    """The run's ``train.cost`` weights (defaults 1 / 3); ValueError / TypeError when they are not numbers."""
    weights = _train_config(config).get("cost") or {}
    return CostWeights(float(weights.get("select_forward", DEFAULT_SELECT_FORWARD)),
                       float(weights.get("train_example", DEFAULT_TRAIN_EXAMPLE)))


def _grid_step(summary: dict[str, Any], config: Any) -> float | None:
    """The cost between two evaluations of a run on a cost grid (``train.eval_every_cost``: ``epoch`` is
    the run's training examples x the train_example weight); None for a run on the epoch grid, or
    when the record does not say enough to compute it."""
    setting = _train_config(config).get("eval_every_cost")
    if setting is None:
        return None
    try:
        step = eval_cost_step(setting, int(summary.get("n_train") or 0), _weights(config))
    except (TypeError, ValueError):
        return None
    return step if step is not None and step > 0 else None


def _grid_points(costs: list[float], step: float | None) -> list[float]:
    """Each evaluation's point on its run's cost grid: k for the evaluation made once the cost passed
    k x step; the run's last evaluation, when it came off the grid (the budget or the schedule ended
    between two points, so it repeats the previous k), is its end, ``inf``. NaN everywhere on the
    epoch grid (or for an evaluation without a cost)."""
    if step is None:
        return [math.nan] * len(costs)
    points: list[float] = []
    for i, cost in enumerate(costs):
        k = float(math.floor(cost / step + 1e-9)) if math.isfinite(cost) else math.nan
        if math.isfinite(k) and k in points:
            k = math.inf if i == len(costs) - 1 else math.nan
        points.append(k)
    return points


def _eval_rows(run: dict[str, Any], evals: list[dict[str, Any]],
               config: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per evaluation, with ``cost`` (computed for older records), ``train_eval_s`` and
    ``grid_point`` (:func:`_grid_points`)."""
    out = []
    for i, rec in enumerate(evals):
        row = {
            "run_dir": run["run_dir"],
            "config_key": run["config_key"],
            "dataset": run["dataset"],
            "strategy": run["strategy"],
            "seed": run["seed"],
            "label_noise": run["label_noise"],
            "eval_idx": i,
        }
        for k, v in rec.items():
            if k == "phase_s" and isinstance(v, dict):
                for pk, pv in v.items():
                    row[f"phase_{pk}"] = _as_float(pv)
            elif k not in row:
                row[k] = v
        row["cost"] = _cost(rec, config or {})
        row["train_eval_s"] = _as_float(rec.get("train_s")) + _as_float(rec.get("eval_s"))
        out.append(row)
    for row, point in zip(out, _grid_points([r["cost"] for r in out], run.get("_grid_step"))):
        row["grid_point"] = point
    return out


def load_runs(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> RunSet:
    """Load every run record under ``paths`` (files or directories, walked recursively).

    Incomplete/failed runs are reported in ONE warning (run dir and status each) and excluded.
    Returns a :class:`RunSet` (possibly empty; callers decide whether that is an error).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    run_rows: list[dict[str, Any]] = []
    eval_rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for run_dir in find_run_dirs(paths):
        evals: list[dict[str, Any]] = []
        metrics_error = None
        if (run_dir / METRICS_FILE).exists():
            try:
                evals = read_metrics(run_dir / METRICS_FILE)
            except (OSError, ValueError) as exc:
                metrics_error = str(exc)
        summary_path = run_dir / SUMMARY_FILE
        if not summary_path.exists():
            skipped.append({"run_dir": str(run_dir), "status": "incomplete",
                            "reason": "no summary.json", "n_evals": len(evals)})
            continue
        try:
            summary = _read_summary(summary_path)
        except (OSError, ValueError) as exc:
            skipped.append({"run_dir": str(run_dir), "status": "unreadable",
                            "reason": f"summary.json: {exc}", "n_evals": len(evals)})
            continue
        status = summary.get("status")
        if status not in USABLE_STATUSES:
            reason = summary.get("error") or f"status {status!r}"
            skipped.append({"run_dir": str(run_dir), "status": str(status),
                            "reason": str(reason), "n_evals": len(evals)})
            continue
        if metrics_error is not None:
            skipped.append({"run_dir": str(run_dir), "status": "corrupt",
                            "reason": metrics_error, "n_evals": 0})
            continue
        if not evals:
            missing = not (run_dir / METRICS_FILE).exists()
            skipped.append({"run_dir": str(run_dir), "status": "incomplete",
                            "reason": f"status {status}, but {'no ' + METRICS_FILE if missing else METRICS_FILE + ' holds no evaluation'}",
                            "n_evals": 0})
            continue
        row = _run_row(run_dir, summary, evals)
        row["_has_key"] = summary.get("config_key") is not None
        row["_curve"] = tuple(_as_float(e.get("test_error")) for e in evals)
        row["_params"] = summary.get("strategy_params") if isinstance(summary.get("strategy_params"), dict) else {}
        row["_has_config"] = isinstance(summary.get("config"), dict) and bool(summary.get("config"))
        row["_grid_step"] = _grid_step(summary, summary.get("config"))
        run_rows.append((row, evals, summary.get("config") or {}))

    if skipped:
        listing = "; ".join(f"{s['run_dir']} ({s['status']}: {s['reason']})" for s in skipped)
        logger.warning("skipping %d incomplete/failed run(s): %s", len(skipped), listing)
    kept = _drop_duplicates([r for r, _, _ in run_rows])
    for row, evals, config in run_rows:
        if row["run_dir"] in kept:
            eval_rows.extend(_eval_rows(row, evals, config))
    runs = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")}
                         for r, _, _ in run_rows if r["run_dir"] in kept])
    if runs.empty:
        runs = pd.DataFrame(columns=RUN_COLUMNS)
    else:
        extra = [c for c in runs.columns if c not in RUN_COLUMNS]
        runs = runs[RUN_COLUMNS + extra]
    evals_df = pd.DataFrame(eval_rows)
    if evals_df.empty:
        evals_df = pd.DataFrame(columns=["run_dir", "config_key", "dataset", "strategy", "seed",
                                         "label_noise", "eval_idx", "epoch", "step", "train_s",
                                         "test_error"])
    return RunSet(runs=runs.reset_index(drop=True), evals=evals_df,
                  skipped=pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Why ``b`` is a second record of the run ``a`` (None when it is another run)."""
    if str(a["seed"]) != str(b["seed"]):
        return None
    if a["config_key"] == b["config_key"] and a["seed"] is not None:
        return "same configuration and seed"
    same = (all(a[k] == b[k] for k in ("dataset", "strategy", "steps", "examples_backpropped"))
            and a["_curve"] == b["_curve"]
            and all(a["_params"][k] == b["_params"][k] for k in set(a["_params"]) & set(b["_params"]))
            and (a["point"] == b["point"] or not (a["_has_config"] and b["_has_config"])))
    return "same strategy, seed, steps and test-error curve" if same else None


def _drop_duplicates(rows: list[dict[str, Any]]) -> set[str]:
    """The run dirs to keep: of several records of one run, the one with a recorded ``config_key``, then
    the first in path order; one warning names every record left out and the one kept."""
    order = sorted(range(len(rows)), key=lambda i: (not rows[i]["_has_key"], i))
    kept: list[dict[str, Any]] = []
    dropped: list[str] = []
    for i in order:
        row = rows[i]
        twin = next(((k, why) for k in kept if (why := _same_run(k, row))), None)
        if twin is None:
            kept.append(row)
        else:
            dropped.append(f"{row['run_dir']} ({twin[1]} as {twin[0]['run_dir']}, kept)")
    if dropped:
        logger.warning("left out %d duplicate run record(s), each counted once: %s", len(dropped),
                       "; ".join(dropped))
    return {r["run_dir"] for r in kept}


def require_runs(runset: RunSet, paths: Iterable[Any]) -> RunSet:
    """Raise :class:`NoUsableRunsError` (one line) when ``runset`` holds no usable run."""
    if len(runset) == 0:
        where = ", ".join(str(p) for p in paths)
        n = len(runset.skipped)
        extra = f" ({n} incomplete/failed run(s) skipped)" if n else ""
        raise NoUsableRunsError(f"no usable run records (summary.json with status completed or "
                                f"budget) found under {where}{extra}")
    return runset


def configurations(runset: RunSet) -> pd.DataFrame:
    """One row per configuration (``config_key``): identifying columns (first run's values),
    ``n_seeds``, ``seeds`` and seed means of ``final_test_error``, ``train_s``,
    ``examples_forwarded``, ``examples_backpropped``, ``steps``, ``cost``, ``train_eval_s``."""
    runs = runset.runs
    if runs.empty:
        return pd.DataFrame(columns=["config_key", "dataset", "strategy", "n_seeds"])
    id_cols = [c for c in runs.columns if c not in (
        "run_dir", "status", "seed", "final_test_error", "best_test_error", "train_s", "epochs",
        "steps", "examples_forwarded", "examples_backpropped", "cost", "train_eval_s")
        and not c.startswith("phase_")]
    mean_cols = ["final_test_error", "best_test_error", "train_s", "epochs", "steps",
                 "examples_forwarded", "examples_backpropped", "cost", "train_eval_s"]
    rows = []
    for key, g in runs.groupby("config_key", sort=False):
        row = {c: g[c].iloc[0] for c in id_cols}
        row["n_seeds"] = len(g)
        row["seeds"] = tuple(sorted(g["seed"].tolist(), key=str))
        for c in mean_cols:
            row[c] = pd.to_numeric(g[c], errors="coerce").mean()
        rows.append(row)
    out = pd.DataFrame(rows)
    return _sort_frame(out)


def _sort_frame(df: pd.DataFrame, extra: list[str] | None = None) -> pd.DataFrame:
    keys = ["dataset", "strategy"] + (extra or [])
    keys = [k for k in keys if k in df.columns]
    if df.empty or not keys:
        return df.reset_index(drop=True)
    order = df.assign(_s=df["strategy"].map(lambda s: strategy_sort_key(str(s))))
    sort_by = ["dataset", "_s"] + [k for k in keys if k not in ("dataset", "strategy")]
    if "config_key" in df.columns and "config_key" not in sort_by:
        sort_by.append("config_key")
    return order.sort_values(sort_by, kind="stable").drop(columns="_s").reset_index(drop=True)


def seed_mean_curves(runset: RunSet) -> pd.DataFrame:
    """Each configuration's seed-mean evaluation curve.

    Seeds are aligned on their evaluation points: the point on the cost grid (``grid_point``) for
    runs evaluated on one (``train.eval_every_cost``; their epochs differ by seed), else ``epoch``
    (rounded to 6 decimals); only points present in every seed of the configuration are kept.
    Columns: ``dataset, strategy, lr_schedule, label_noise, config_key, n_seeds, epoch`` (on a cost
    grid: the seeds' mean epoch there) and the seed means of ``step, train_s, eval_s, train_eval_s,
    cost, test_error, examples_forwarded, examples_backpropped``, ``selected_fraction``,
    ``selected_noisy_fraction`` (when present) and the ``phase_*`` columns — rounded to
    :data:`CURVE_DECIMALS` decimals.
    """
    ev = runset.evals
    if ev.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    value_cols = [c for c in ("step", "train_s", "eval_s", "train_eval_s", "cost", "test_error",
                              "test_loss", "examples_forwarded", "examples_backpropped",
                              "selected_fraction", "selected_noisy_fraction") if c in ev.columns]
    value_cols += [c for c in ev.columns if c.startswith("phase_")]
    runs = runset.runs.set_index("run_dir")
    grid = ev["grid_point"] if "grid_point" in ev.columns else pd.Series(math.nan, index=ev.index)
    ev = ev.assign(_ep=ev["epoch"].astype(float).round(6), _grid=pd.to_numeric(grid, errors="coerce"))
    pieces = []
    for key, g in ev.groupby("config_key", sort=False):
        on_grid = bool(g["_grid"].notna().all())
        align = "_grid" if on_grid else "_ep"
        n_seeds = g["run_dir"].nunique()
        counts = g.groupby(align)["run_dir"].nunique()
        common = counts.index[counts == n_seeds]
        if len(common) < len(counts):
            logger.debug("%s: %d evaluation points not present in every seed dropped from the "
                         "seed-mean curve", key, len(counts) - len(common))
        g = g[g[align].isin(common)]
        if g.empty:
            continue
        num = g[value_cols].apply(pd.to_numeric, errors="coerce")
        mean = num.groupby(g[align]).mean().round(CURVE_DECIMALS)
        epoch = g.groupby(align)["_ep"].mean().round(6) if on_grid else mean.index.to_series()
        mean.insert(0, "epoch", epoch.to_numpy())
        mean = mean.reset_index(drop=True)
        first = runs.loc[g["run_dir"].iloc[0]]
        mean.insert(0, "config_key", key)
        mean.insert(0, "n_seeds", n_seeds)
        for c in ("label_noise", "lr_schedule", "strategy", "dataset"):
            mean.insert(0, c, first[c])
        pieces.append(mean)
    if not pieces:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    out = pd.concat(pieces, ignore_index=True)
    return _sort_frame(out, ["config_key", "epoch"])
