"""docs/architecture.md "Adding a strategy": a strategy written in its own file outside the package
(tests/strategy_every_other.py) and one config file for it train end to end through the real Trainer,
entering by the registry's doors (a config `_target_`, or `register` then the name alone)."""

from __future__ import annotations

import json

import pytest

from conftest import compose_config
from selective_backprop.engine.trainer import Trainer
from selective_backprop.errors import ConfigError
from selective_backprop.strategies import REGISTRY, STRATEGIES, build_strategy, register
from strategy_every_other import EveryOther

BASE = ["dataset.subset=256", "dataset.test_subset=256", "train.batch_size=32", "train.max_epochs=2",
        "device=cpu", "train.progress=false", "model.width=8", "train.tensorboard=false"]


@pytest.fixture
def strategy_config_dir(tmp_path):
    """The one config file a new strategy adds (here in a search-path folder instead of conf/strategy/)."""
    folder = tmp_path / "conf" / "strategy"
    folder.mkdir(parents=True)
    (folder / "every_other.yaml").write_text(
        "name: every_other\n_target_: strategy_every_other.EveryOther\noffset: 1\n")
    return folder.parent


def test_a_new_strategy_trains_end_to_end(tmp_path, fmnist_root, strategy_config_dir):
    cfg = compose_config(BASE + [f"dataset.root={fmnist_root}", f"hydra.searchpath=[file://{strategy_config_dir}]",
                                 "strategy=every_other"])
    trainer = Trainer(cfg, str(tmp_path / "run"))
    summary = trainer.fit()
    assert type(trainer.strategy) is EveryOther and trainer.strategy.offset == 1
    assert summary["strategy"] == "every_other" and summary["strategy_params"] == {"offset": 1}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 256 examples an epoch, every other one trained: 128 backpropped, 4 steps of 32
    assert [(r["examples_considered"], r["examples_backpropped"], r["step"]) for r in rows] == [
        (256, 128, 4), (512, 256, 8)]
    assert all(r["selected_fraction"] == 0.5 for r in rows)


def test_register_adds_a_name():
    try:
        register("every_other", "strategy_every_other:EveryOther")
        assert STRATEGIES["every_other"] is EveryOther and "every_other" in REGISTRY
        built = build_strategy({"name": "every_other", "offset": 1}, 32, 0)
        assert type(built) is EveryOther and built.offset == 1
        with pytest.raises(ConfigError, match=r"^strategy\.offset=2: not accepted; accepted: 0 or 1$"):
            build_strategy({"name": "every_other", "offset": 2}, 32, 0)
    finally:
        REGISTRY.pop("every_other", None)
    with pytest.raises(ConfigError, match=r"^strategy\.name='every_other': not accepted"):
        build_strategy({"name": "every_other"}, 32, 0)


@pytest.mark.parametrize("target", ["strategy_every_other.Nowhere", "collections.OrderedDict",
                                    "strategy_every_other.EveryOther"])
def test_register_refuses_what_is_not_that_strategy(target):
    name = "other_name" if target.endswith("EveryOther") else "every_other"
    with pytest.raises(ConfigError, match=rf"^strategy '{name}': '{target}' (is not accepted|cannot be imported)"):
        register(name, target)
    assert name not in REGISTRY
