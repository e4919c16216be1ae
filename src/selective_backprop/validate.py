"""Refuse bad input before any work: the composed config, and what the output directory already holds.

`validate_config(cfg)` checks every value the run depends on and raises ConfigError with one line
naming the field and what it accepts. It is cheap (no data, no model) and runs once, at the top of
`train.run()`. A strategy's own parameters are the exception: its constructor checks them
(strategies/), once, when the trainer builds it before building any data. The data files
themselves are checked by `build_data` (missing folder, wrong size, bad header or shape: DataError),
which the trainer calls before it writes anything. `check_run_dir(cfg, output_dir)` says whether the
output directory is fresh, holds this run to resume, or holds this run already finished; it refuses a
directory holding a different run.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from selective_backprop.errors import ConfigError
from selective_backprop.record import CHECKPOINT_FILE, FINISHED, SUMMARY_FILE, config_key

PRECISIONS = ("fp32", "bf16", "fp16")
MAX_SEED = 2 ** 63
_MISSING = object()


# ------------------------------------------------------------------------------------------ helpers

def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    value = OmegaConf.select(cfg, dotted, default=_MISSING) if OmegaConf.is_config(cfg) else _MISSING
    return default if value is _MISSING else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fail(field: str, value: Any, accepted: str) -> None:
    raise ConfigError(f"{field}={value!r}: not accepted; accepted: {accepted}")


def _int_at_least(cfg: Any, field: str, minimum: int, default: Any = None, nullable: bool = False) -> None:
    value = _get(cfg, field, default)
    if value is None and nullable:
        return
    if not _is_int(value) or value < minimum:
        _fail(field, value, f"an integer >= {minimum}" + (" or null" if nullable else ""))


def _positive(cfg: Any, field: str, default: Any = None, nullable: bool = False) -> None:
    value = _get(cfg, field, default)
    if value is None and nullable:
        return
    if not _is_number(value) or value <= 0:
        _fail(field, value, "a number > 0" + (" or null" if nullable else ""))


def _one_of(cfg: Any, field: str, choices: tuple, default: Any = None) -> None:
    value = _get(cfg, field, default)
    if value not in choices:
        _fail(field, value, " | ".join(map(str, choices)))


def _boolean(cfg: Any, field: str, default: Any = None) -> None:
    value = _get(cfg, field, default)
    if not isinstance(value, bool):
        _fail(field, value, "true or false")


def _in_range(cfg: Any, field: str, lo: float, hi: float, hi_open: bool, default: Any = None) -> None:
    value = _get(cfg, field, default)
    ok = _is_number(value) and lo <= value and (value < hi if hi_open else value <= hi)
    if not ok:
        _fail(field, value, f"a number in [{lo}, {hi}{')' if hi_open else ']'}")


# ------------------------------------------------------------------------------------------ sections

def _check_top(cfg: Any) -> None:
    seed = _get(cfg, "seed", 0)
    if not _is_int(seed) or not 0 <= seed < MAX_SEED:
        _fail("seed", seed, "an integer in [0, 2^63) (torch seeds are 64-bit)")
    _boolean(cfg, "deterministic", False)
    device = _get(cfg, "device", "auto")
    name = str(device)
    if not (name in ("auto", "cpu") or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        _fail("device", device, "auto | cpu | cuda | cuda:N")
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r}: no CUDA device is available here; accepted: auto or cpu "
                              f"(or cuda on a machine with a GPU)")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            _fail("device", device, f"cuda:0 .. cuda:{torch.cuda.device_count() - 1} (GPUs present)")


def _check_train(cfg: Any) -> None:
    _int_at_least(cfg, "train.batch_size", 1)
    _int_at_least(cfg, "train.max_epochs", 1, nullable=True)    # epochs are counted: no fractions
    _positive(cfg, "train.max_time_s", nullable=True)
    _int_at_least(cfg, "train.eval_every", 1, 1)
    every_cost = _get(cfg, "train.eval_every_cost")
    if every_cost is not None and every_cost != "epoch" and (not _is_number(every_cost) or every_cost <= 0):
        _fail("train.eval_every_cost", every_cost, "a number > 0 (forward-equivalent cost units), epoch (one "
              "Traditional epoch's cost: N x train.cost.train_example) or null (every train.eval_every epochs)")
    eval_batch = _get(cfg, "train.eval_batch_size", "auto")
    if eval_batch != "auto" and (not _is_int(eval_batch) or eval_batch < 1):
        _fail("train.eval_batch_size", eval_batch, "an integer >= 1 or auto (128 on a CPU, 1024 on a GPU)")
    _one_of(cfg, "train.epoch_unit", ("considered", "backpropped"), "considered")
    _int_at_least(cfg, "train.num_workers", 0, 0)
    _boolean(cfg, "train.channels_last", False)
    _one_of(cfg, "train.precision", PRECISIONS, "fp32")
    _int_at_least(cfg, "train.checkpoint_every", 1, 1)
    progress = _get(cfg, "train.progress", "auto")
    if not (isinstance(progress, bool) or progress == "auto"):
        _fail("train.progress", progress, "auto (bars on a terminal, a log line per epoch otherwise) | true | false")
    factor = _get(cfg, "train.diverge_factor", 100)
    if factor is not None and (not _is_number(factor) or factor <= 1):
        _fail("train.diverge_factor", factor, "a number > 1 (test loss > factor x ln(num_classes) = diverged) or null")
    _boolean(cfg, "train.tensorboard", True)


def _check_optimizer(cfg: Any) -> None:
    if _get(cfg, "optimizer") is None:
        raise ConfigError("optimizer: missing; accepted: a config group option such as optimizer=sgd")
    _positive(cfg, "optimizer.lr")
    for field in ("optimizer.momentum", "optimizer.weight_decay", "optimizer.dampening"):
        value = _get(cfg, field, 0.0)
        if not _is_number(value) or value < 0:
            _fail(field, value, "a number >= 0")
    if _get(cfg, "optimizer.nesterov", False) and (_get(cfg, "optimizer.momentum", 0.0) <= 0
                                                   or _get(cfg, "optimizer.dampening", 0.0) != 0):
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0 and optimizer.dampening = 0")


def _check_lr_schedule(cfg: Any) -> None:
    """Milestones in epochs (index epoch) or budget shares in [0, 1] (index budget); kind linear needs
    index budget (it decays to zero at the budget's end). Whether the run has a budget to be a share of
    is checked with the budgets (_check_budgets)."""
    from selective_backprop.engine.runtime import SCHEDULE_INDEXES, SCHEDULE_KINDS

    _one_of(cfg, "lr_schedule.index", SCHEDULE_INDEXES, "epoch")
    _one_of(cfg, "lr_schedule.kind", SCHEDULE_KINDS, "steps")
    by_budget = _get(cfg, "lr_schedule.index", "epoch") == "budget"
    if _get(cfg, "lr_schedule.kind", "steps") == "linear" and not by_budget:
        raise ConfigError("lr_schedule.kind=linear: needs lr_schedule.index=budget (it decays to zero over the "
                          "run's cost or time budget); accepted: kind steps, or index budget")
    milestones = _get(cfg, "lr_schedule.milestones", [])
    accepted = ("a list of strictly increasing budget shares in [0, 1] (may be empty)" if by_budget
                else "a list of strictly increasing epochs >= 0 (may be empty)")
    if OmegaConf.is_config(milestones):
        milestones = OmegaConf.to_container(milestones)
    if not isinstance(milestones, list) or not all(_is_number(m) and m >= 0 for m in milestones):
        _fail("lr_schedule.milestones", milestones, accepted)
    if any(b <= a for a, b in zip(milestones, milestones[1:])) or (by_budget and any(m > 1 for m in milestones)):
        _fail("lr_schedule.milestones", milestones, accepted)
    _positive(cfg, "lr_schedule.gamma", 1.0)


# Strategies that schedule on the run's length (strategies/base.py run_epochs).
SCHEDULED_ON_MAX_EPOCHS = ("infobatch", "composer_sb")


def _check_strategy(cfg: Any) -> None:
    """What is not the strategy's own business. Its parameters are checked once, by its constructor, when
    the trainer builds it (strategies/__init__.py build_strategy, before any data is built); this module
    does not import the strategies."""
    if _get(cfg, "strategy") is None:
        raise ConfigError("strategy: missing; accepted: a config group option such as strategy=sb")
    name = _get(cfg, "strategy.name")
    if not isinstance(name, str) or not name:
        _fail("strategy.name", name, "a strategy name such as sb (the run records' strategy)")
    budget_fitted = _get(cfg, "lr_schedule.index", "epoch") == "budget"     # then they fit to the budget
    if name in SCHEDULED_ON_MAX_EPOCHS and _get(cfg, "train.max_epochs") is None and not budget_fitted:
        raise ConfigError(f"train.max_epochs=None: not accepted with strategy={name} (it schedules on the "
                          f"run's length); accepted: a number > 0, or a budget-fitted schedule "
                          f"(lr_schedule.index=budget)")


def _check_model(cfg: Any) -> None:
    from selective_backprop.models import MODELS

    name = _get(cfg, "model.name")
    if name not in MODELS:
        _fail("model.name", name, " | ".join(sorted(MODELS)))
    width = _get(cfg, "model.width")
    if width is not None and (not _is_int(width) or width < 1):
        _fail("model.width", width, "an integer >= 1")
    dropout = _get(cfg, "model.dropout")
    if dropout is not None:
        _in_range(cfg, "model.dropout", 0.0, 1.0, True)


def _check_dataset(cfg: Any) -> None:
    from selective_backprop.data.datasets import DATASET_INFO, check_root, parse_options

    if _get(cfg, "dataset") is None:
        raise ConfigError("dataset: missing; accepted: a config group option such as dataset=fashion_mnist")
    opt = parse_options(cfg.dataset)  # name, root, download, subset >= 1, label_noise in [0, 1), stats, augment
    info = DATASET_INFO[opt.name]
    train_size = info.training_examples(opt.extra)
    if opt.subset is not None and opt.subset > train_size:
        raise ConfigError(f"dataset.subset: {opt.subset} is out of range; accepted: an integer in "
                          f"[1, {train_size}] (the {info.title} training set) or null")
    check_root(opt.name, opt.root, opt.download)     # a file, or unwritable where files must be written


def _check_budgets(cfg: Any) -> None:
    """train.max_cost, the cost weights, train.budget_from / budget_axis, and that some budget is set
    (engine/budget.py; resolving budget_from only reads summary.json files)."""
    from selective_backprop.engine.budget import AXES, check_schedule_budget, resolve_budget

    _positive(cfg, "train.max_cost", nullable=True)
    value = _get(cfg, "train.cost.select_forward", 1.0)
    if not _is_number(value) or value < 0:
        _fail("train.cost.select_forward", value, "a number >= 0")
    _positive(cfg, "train.cost.train_example", 3.0)
    _one_of(cfg, "train.budget_axis", AXES, "cost")
    source = _get(cfg, "train.budget_from")
    if source is not None and (not isinstance(source, str) or not source):
        _fail("train.budget_from", source, "a folder of run records, or null")
    check_schedule_budget(resolve_budget(cfg), str(_get(cfg, "lr_schedule.index", "epoch")))


def check_resolvable(cfg: DictConfig) -> None:
    """Raise ConfigError naming the key whose interpolation (`${oc.env:VAR}`, `${a.b}`) cannot be resolved."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        first = (str(err).strip().splitlines() or [""])[0]
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(f"{key}: cannot resolve its interpolation ({first}); accepted: a value, or an "
                          f"interpolation that resolves (e.g. an environment variable that is set)") from None


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line: field and accepted range) for the first unusable value in `cfg`."""
    check_resolvable(cfg)
    _check_top(cfg)
    _check_train(cfg)
    _check_optimizer(cfg)
    _check_lr_schedule(cfg)
    _check_model(cfg)
    _check_dataset(cfg)
    _check_strategy(cfg)
    _check_budgets(cfg)


# ---------------------------------------------------------------------------------- output directory

@dataclass
class RunDirState:
    """What an output directory holds for the run about to start."""

    path: Path
    summary: dict | None          # its summary.json, when that belongs to this run
    checkpoint: Path | None       # its checkpoint.pt, when present

    @property
    def finished(self) -> bool:
        return self.summary is not None and self.summary.get("status") in FINISHED


def _identity(cfg: DictConfig) -> tuple[str, int]:
    return config_key(OmegaConf.to_container(cfg, resolve=True)), int(_get(cfg, "seed", 0))


def check_run_dir(cfg: DictConfig, output_dir: str | Path) -> RunDirState:
    """Inspect `output_dir` before anything is written to it.

    A run record belongs to this run when its config_key (selective_backprop.record: the config without
    machine-only keys) and its seed match. A directory holding another run's record is refused, so
    nothing is written over earlier results.
    """
    from selective_backprop.engine.checkpoint import load_checkpoint

    run_dir = Path(output_dir)
    key, seed = _identity(cfg)
    summary_path, ckpt = run_dir / SUMMARY_FILE, run_dir / CHECKPOINT_FILE
    summary = None
    found: tuple[Any, Any, Any] | None = None
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            raise ConfigError(f"output directory: '{summary_path}' is unreadable ({err}); accepted: an empty "
                              f"directory or one holding this run (move that file away)") from err
        found = (summary.get("config_key"), summary.get("seed"), summary.get("status"))
    elif ckpt.is_file():
        state = load_checkpoint(ckpt)
        found = (state.get("config_key"), state.get("seed"), "checkpointed")
    if found is not None and (found[0], found[1]) != (key, seed):
        raise ConfigError(f"output directory: '{run_dir}' holds a {found[2]} run of a different config "
                          f"(config_key {found[0]}, seed {found[1]}; this run: config_key {key}, seed {seed}); "
                          f"accepted: an empty directory or one holding this same run; "
                          f"set another hydra.run.dir (nothing was overwritten)")
    return RunDirState(run_dir, summary, ckpt if ckpt.is_file() else None)


# ------------------------------------------------------------------------ keys added on the command line

def _yaml_paths(node: Any, prefix: str) -> set[str]:
    """Every dotted key path (inner nodes and leaves) of a parsed yaml mapping, under `prefix`."""
    paths: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "defaults" and not prefix:
                continue
            path = f"{prefix}.{key}" if prefix else str(key)
            paths.add(path)
            paths |= _yaml_paths(value, path)
    return paths


def _option_keys(path: Path, default_package: str) -> set[str]:
    """The key paths a config file defines, placed at its `# @package` (default: its group's path)."""
    import yaml

    text = path.read_text()
    package = default_package
    for line in text.splitlines():
        if line.startswith("# @package"):
            package = line.split(None, 2)[2].strip() if len(line.split()) > 2 else default_package
            break
    package = "" if package == "_global_" else package.replace("_group_", default_package)
    return _yaml_paths(yaml.safe_load(text) or {}, package)


def known_keys(choices: Mapping[str, Any]) -> set[str]:
    """Key paths config.yaml or the selected option of each config group defines (read from the yaml
    files each time, so keys added there are known at once; no list is kept here)."""
    from selective_backprop.conf import CONFIG_DIR

    conf = Path(CONFIG_DIR)
    keys = _option_keys(conf / "config.yaml", "")
    for group, option in choices.items():
        path = conf / str(group) / f"{option}.yaml"
        if option is not None and not str(group).startswith("hydra") and path.is_file():
            keys |= _option_keys(path, str(group).replace("/", "."))
    return keys


def all_known_keys() -> set[str]:
    """Key paths any config file defines (config.yaml and every option of every group): the names a
    misspelt key is compared with before the config is composed."""
    from selective_backprop.conf import CONFIG_DIR

    conf = Path(CONFIG_DIR)
    keys = _option_keys(conf / "config.yaml", "")
    for path in conf.rglob("*.yaml"):
        group = path.parent.relative_to(conf).as_posix()
        if group != "." and not group.startswith("hydra"):
            keys |= _option_keys(path, group.replace("/", "."))
    return keys


def _options_defining(key: str) -> list[str]:
    """`group=option` for each option of `key`'s config group that defines `key` (e.g. strategy.staleness
    -> strategy=stale_sb)."""
    from selective_backprop.conf import CONFIG_DIR

    group = key.split(".")[0]
    folder = Path(CONFIG_DIR) / group
    if not folder.is_dir():
        return []
    return [f"{group}={path.stem}" for path in sorted(folder.glob("*.yaml")) if key in _option_keys(path, group)]


def check_added_keys(overrides: Sequence[str], choices: Mapping[str, Any]) -> None:
    """Refuse a key added with `+key=value` / `++key=value` that no config file defines (a typo such as
    `+train.max_epoch=5` would otherwise be ignored and the run train with the defaults).

    `choices` are the selected option of each config group (HydraConfig's runtime.choices). Keys under
    `hydra.` and config-group selections (`+experiment=...`) are not checked.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from selective_backprop.conf import CONFIG_DIR

    known: set[str] | None = None
    if OmegaConf.is_config(overrides):        # the strings as typed: `${...}` in a value is not resolved here
        overrides = OmegaConf.to_container(overrides, resolve=False)
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if not (override.is_add() or override.is_force_add()) or key.split(".")[0].split("/")[0] == "hydra":
            continue
        if key in choices or (Path(CONFIG_DIR) / key).is_dir():      # a config group, not a key
            continue
        known = known_keys(choices) if known is None else known
        if key not in known:
            others = _options_defining(key)
            if others:
                selected = f"{key.split('.')[0]}={choices.get(key.split('.')[0])}"
                raise ConfigError(f"{key}: not a key of {selected} (added with '+'); it is a key of "
                                  f"{' | '.join(others)}: select that option (e.g. {others[0]} "
                                  f"{key}={override.value()})")
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{key}: unknown key (added with '+'); accepted: a key that config.yaml or "
                              f"the selected config group option defines{hint}")
