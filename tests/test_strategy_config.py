"""Issue 12.3: config -> strategy object. One constructor per strategy holds the defaults and validates
itself; conf/strategy/*.yaml name the class (`_target_`) and may only repeat those defaults; validation
in validate.py builds no strategy and imports no strategy code. Also: dataset yaml stats = DATASET_INFO."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import CONF, REPO, compose_config
from selective_backprop import strategies
from selective_backprop.data import DATASET_INFO
from selective_backprop.errors import ConfigError
from selective_backprop.record import config_key
from selective_backprop.selection import rules
from selective_backprop.strategies import STRATEGIES, build_strategy, options
from selective_backprop.strategies.composer_sb import ComposerSB
from selective_backprop.strategies.infobatch import InfoBatch
from selective_backprop.strategies.kath18 import Kath18
from selective_backprop.strategies.sb import SBStrategy
from selective_backprop.strategies.stale_sb import StaleSB
from selective_backprop.strategies.traditional import Traditional
from selective_backprop.strategies.uniform import Uniform

NAMES = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml"))
B = 32


@pytest.mark.parametrize("name", NAMES)
def test_yaml_names_its_class_and_repeats_its_defaults(name):
    """Every key of the composed strategy config is a constructor keyword whose default is the yaml value,
    and every keyword is in the yaml (so `strategy.<key>=...` works without `+`)."""
    cfg = OmegaConf.to_container(compose_config([f"strategy={name}"]).strategy, resolve=True)
    cls = strategies.strategy_class(cfg["name"], cfg["_target_"])
    assert cls is STRATEGIES[name] and cls.name == name
    params = options(cls)
    values = {k: v for k, v in cfg.items() if k not in ("name", "_target_")}
    assert set(values) == set(params), name
    for key, value in values.items():
        assert value == params[key].default, f"conf/strategy/{name}.yaml {key}: {value!r} != {params[key].default!r}"


def test_every_strategy_has_a_yaml():
    assert set(NAMES) == set(STRATEGIES)


def test_constructors_are_keyword_typed():
    assert StaleSB(B, 0).staleness == 2 and StaleSB(B, 0).history == 1024
    assert options(StaleSB)["history"].default == 1024 and options(StaleSB)["staleness"].default == 2
    sb = SBStrategy(B, 1, selectivity=0.25, history=64, select_batch_size=8)
    assert (sb.beta, sb.history, sb.select_batch_size, sb.seed) == (3.0, 64, 8, 1)
    assert SBStrategy(B, 0).select_batch_size == B
    assert Kath18(B, 0).presample == 3 * B and Uniform(B, 0).selectivity == pytest.approx(1 / 3)
    assert InfoBatch(B, 0).params() == {"prune_ratio": 0.5, "delta": 0.875, "anneal": 0.125}
    assert ComposerSB(B, 0).select_mode == "train_dropout" and options(Traditional) == {}
    with pytest.raises(TypeError):
        SBStrategy(B, 0, 2.0)                  # options are keyword-only


@pytest.mark.parametrize("cls,key,value,accepted", [
    (SBStrategy, "history", 0, "an integer >= 1"),
    (SBStrategy, "prob_min", 1.5, r"a number in \[0.0, 1.0\]"),
    (SBStrategy, "select_batch_size", 0, "an integer >= 1 or null"),
    (SBStrategy, "select_mode", "infer", "eval | train | train_dropout"),
    (SBStrategy, "select_precision", "fp8", "fp32 | bf16 | fp16"),
    (SBStrategy, "percentile", "median", "strict | inclusive"),
    (SBStrategy, "prime_epochs", -1, "an integer >= 0"),
    (StaleSB, "staleness", 1.5, "an integer >= 1"),
    (StaleSB, "history", "many", "an integer >= 1"),
    (Kath18, "tau_momentum", 1.0, r"a number in \[0.0, 1.0\)"),
    (Kath18, "reweight", "yes", "true or false"),
    (Kath18, "gate_every", "batch", "epoch | step"),
    (Kath18, "closed_tau", "loss", "train | score"),
    (Kath18, "sampling", "uniform", "shuffle | replacement"),
    (InfoBatch, "prune_ratio", 0.95, r"a number in \[0, 0.9\]"),
    (InfoBatch, "delta", 1.5, r"a number in \[0, 1\]"),
    (ComposerSB, "select_precision", "fp64", "train | fp32 | bf16 | fp16"),
])
def test_constructor_refuses_bad_values_in_one_line(cls, key, value, accepted):
    with pytest.raises(ConfigError, match=rf"^strategy\.{key}={value!r}: not accepted; accepted: {accepted}") as info:
        cls(B, 0, **{key: value})
    assert "\n" not in str(info.value)


def test_unknown_key_is_refused_naming_it():
    cfg = compose_config(["strategy=uniform", "+strategy.history=5"]).strategy
    with pytest.raises(ConfigError, match=r"^strategy\.history: unknown key for strategy uniform; "
                                          r"accepted: beta, selectivity$"):
        build_strategy(cfg, B, 0)
    with pytest.raises(ConfigError, match=r"^strategy\.beta: unknown key for strategy traditional"):
        build_strategy({"name": "traditional", "beta": 2.0}, B, 0)


def test_config_without_target_builds_by_name():
    """Configs written before `_target_` (old run records, hand-built ones) still build."""
    stale = build_strategy(OmegaConf.create({"name": "stale_sb", "staleness": 3, "history": 64}), B, 0)
    assert type(stale) is StaleSB and (stale.staleness, stale.history) == (3, 64)
    assert type(build_strategy({"name": "infobatch"}, B, 0)) is InfoBatch
    with pytest.raises(ConfigError, match=r"^strategy\.name='oracle': not accepted; accepted: traditional \| sb"):
        build_strategy({"name": "oracle"}, B, 0)


def test_target_and_name_must_agree_and_import():
    target = "selective_backprop.strategies.stale_sb.StaleSB"
    assert type(build_strategy({"_target_": target}, B, 0)) is StaleSB
    with pytest.raises(ConfigError, match=r"^strategy\.name='sb' and strategy\._target_=.*StaleSB.* disagree"):
        build_strategy({"name": "sb", "_target_": target}, B, 0)
    with pytest.raises(ConfigError, match=r"^strategy\._target_='selective_backprop\.nowhere\.X': cannot be imported"):
        build_strategy({"name": "sb", "_target_": "selective_backprop.nowhere.X"}, B, 0)
    with pytest.raises(ConfigError, match=r"^strategy\._target_='collections\.OrderedDict'.*subclass"):
        build_strategy({"_target_": "collections.OrderedDict"}, B, 0)


def test_old_import_paths_still_work():
    """The paths before strategies/, sources/, distributed.py and timing.py moved out of engine/ (README
    "Changelog"): old `_target_`s build the same classes and the old modules re-export the moved names."""
    from selective_backprop import distributed, timing
    from selective_backprop.engine import peers as old_peers
    from selective_backprop.engine import strategies as old_strategies
    from selective_backprop.sources import device_source, source
    from selective_backprop.strategies import args, base

    assert type(build_strategy({"_target_": "selective_backprop.engine.strategies.StaleSB"}, B, 0)) is StaleSB
    assert type(build_strategy({"_target_": "selective_backprop.engine.peers.InfoBatch"}, B, 0)) is InfoBatch
    for name in ("Context", "Counters", "Strategy", "TrainBatch", "_Packing", "_ExampleStream"):
        assert getattr(old_strategies, name) is getattr(base, name)
    for name, cls in STRATEGIES.items():
        old = old_peers if name in ("infobatch", "composer_sb") else old_strategies
        assert getattr(old, cls.__name__) is cls
    assert (old_strategies.build_strategy, old_strategies.STRATEGIES) == (build_strategy, STRATEGIES)
    assert old_peers.run_epochs is base.run_epochs
    old = {"selective_backprop.engine.source": source, "selective_backprop.engine.device_source": device_source,
           "selective_backprop.engine.distributed": distributed, "selective_backprop.engine.timing": timing,
           "selective_backprop.engine.strategy_args": args}
    for path, module in old.items():
        assert importlib.import_module(path) is module, path


def test_target_does_not_change_the_config_key():
    """Run directories and analyses from before `_target_` keep their configuration key."""
    config = OmegaConf.to_container(compose_config(["strategy=stale_sb"]), resolve=True)
    old = {**config, "strategy": {k: v for k, v in config["strategy"].items() if k != "_target_"}}
    assert config_key(config) == config_key(old)


def test_beta_is_resolved_once_per_build_and_validation_builds_nothing(monkeypatch):
    from selective_backprop.validate import validate_config

    calls = []
    real = rules.resolve_beta
    monkeypatch.setattr(rules, "resolve_beta", lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = compose_config(["strategy=stale_sb", "strategy.selectivity=0.25", "device=cpu"])
    validate_config(cfg)
    assert calls == []
    build_strategy(cfg.strategy, B, 0)
    assert calls == [(None, 0.25)]


def test_validate_imports_no_strategy_code():
    code = ("import sys; from selective_backprop.validate import validate_config; "
            "from hydra import compose, initialize_config_dir; "
            f"initialize_config_dir(config_dir={str(CONF)!r}, version_base='1.3'); "
            "validate_config(compose(config_name='config', overrides=['strategy=kath18', 'device=cpu'])); "
            "bad = [m for m in sys.modules if m.startswith(('selective_backprop.strategies', "
            "'selective_backprop.engine.strategies', 'selective_backprop.engine.peers', "
            "'selective_backprop.engine.trainer'))]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------ datasets

@pytest.mark.parametrize("path", sorted((CONF / "dataset").glob("*.yaml")), ids=lambda p: p.stem)
def test_dataset_yaml_repeats_dataset_info(path):
    """mean/std and the augmentation defaults are DATASET_INFO's (the yaml may only repeat them)."""
    cfg = yaml.safe_load(path.read_text())
    info = DATASET_INFO[cfg["name"]]
    assert tuple(cfg["mean"]) == info.mean and tuple(cfg["std"]) == info.std
    augment = cfg["augment"]
    assert (augment["crop_padding"], augment["hflip"], augment["cutout"]) == (info.crop_padding, info.hflip,
                                                                              info.cutout)


def test_dataset_info_is_the_one_source_of_dataset_facts():
    from selective_backprop.data.fashion_mnist_debian import IDX_FILES
    from selective_backprop.validate import validate_config

    svhn = DATASET_INFO["svhn"]
    assert (svhn.training_examples(), svhn.training_examples(extra=False)) == (604388, 73257)
    assert IDX_FILES["train-images-idx3-ubyte"].size == 16 + 60000 * 28 * 28
    with pytest.raises(ConfigError, match=r"^dataset\.subset: 73258 is out of range.*\[1, 73257\]"):
        validate_config(compose_config(["dataset=svhn", "dataset.extra=false", "dataset.subset=73258", "device=cpu"]))
