"""Every config option composes and instantiates."""

from __future__ import annotations

import re

import pytest
import torch
from hydra.utils import instantiate

from conftest import CONF, compose_config
from selective_backprop.data import DATASET_INFO
from selective_backprop.strategies import build_strategy
from selective_backprop.models import build_model

OPTIONS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
           for group in ("dataset", "model", "strategy", "lr_schedule", "optimizer", "experiment")}


def test_every_group_has_options():
    assert set(OPTIONS["strategy"]) == {"traditional", "sb", "stale_sb", "kath18", "uniform",
                                        "infobatch", "composer_sb"}
    assert {"cifar10", "cifar100", "svhn", "fashion_mnist"} <= set(OPTIONS["dataset"])
    assert {"wrn28_10", "wrn16_8", "resnet18", "densenet121", "mobilenetv2", "resnet8"} <= set(OPTIONS["model"])
    assert len(OPTIONS["experiment"]) >= 13


@pytest.mark.parametrize("name", OPTIONS["dataset"])
def test_dataset_configs_compose(name):
    cfg = compose_config([f"dataset={name}"])
    info = DATASET_INFO[cfg.dataset.name]
    assert len(cfg.dataset.mean) == len(cfg.dataset.std) == info.in_channels
    assert cfg.dataset.augment.cutout >= 0


@pytest.mark.parametrize("name", OPTIONS["model"])
def test_model_configs_instantiate(name):
    cfg = compose_config([f"model={name}"])
    kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
    model = build_model(cfg.model.name, num_classes=10, in_channels=1, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", OPTIONS["strategy"])
def test_strategy_configs_instantiate(name):
    cfg = compose_config([f"strategy={name}"])
    strategy = build_strategy(cfg.strategy, cfg.train.batch_size, cfg.seed)
    assert strategy.name == name
    if name in ("sb", "stale_sb", "uniform"):
        assert strategy.params()["beta"] == pytest.approx(2.0)
        assert strategy.params()["selectivity"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("name", OPTIONS["lr_schedule"])
def test_lr_schedules_are_increasing(name):
    cfg = compose_config([f"lr_schedule={name}"])
    milestones = list(cfg.lr_schedule.milestones)
    assert milestones == sorted(set(milestones))
    assert 0 < cfg.lr_schedule.gamma <= 1


def test_optimizer_instantiates():
    cfg = compose_config([])
    opt = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.1, 0.9, True, 5e-4)


# the paper's setups, {dataset}_{strategy} (the single-GPU Table 1's cifar10_1gpu_* are not among them)
PAPER_EXPERIMENTS = [n for n in OPTIONS["experiment"]
                     if re.fullmatch(r"(cifar10|cifar100|svhn)_(traditional|sb|stale_sb|kath18)", n)]


@pytest.mark.parametrize("name", OPTIONS["experiment"])
def test_experiments_compose(name):
    cfg = compose_config([f"experiment={name}"])
    build_strategy(cfg.strategy, cfg.train.batch_size, cfg.seed)
    if name in PAPER_EXPERIMENTS:
        expected_model = "wrn16_8" if name.startswith("svhn") else "wrn28_10"
        assert cfg.model.name == expected_model
        assert cfg.dataset.name == name.rsplit("_", 1)[0].replace("_stale", "")
        assert cfg.train.max_time_s in (43200, 345600)


def test_paper_selectivities():
    """Table 1's selectivities: SB 33/50/25 %, Kath18 33/50/33 %."""
    expect = {"cifar10_sb": 1 / 3, "cifar100_sb": 0.5, "svhn_sb": 0.25, "svhn_stale_sb": 0.25,
              "cifar10_kath18": 1 / 3, "cifar100_kath18": 0.5, "svhn_kath18": 1 / 3}
    for name, s in expect.items():
        cfg = compose_config([f"experiment={name}"])
        assert cfg.strategy.selectivity == pytest.approx(s), name




def test_paper_experiments_stop_on_time_alone():
    """Issue 11: max_epochs null, the paper's max_time_s, the same for every strategy of a dataset."""
    from selective_backprop.engine.budget import resolve_budget

    budgets: dict[str, set] = {}
    for name in PAPER_EXPERIMENTS:
        cfg = compose_config([f"experiment={name}"])
        assert cfg.train.max_epochs is None and cfg.train.get("max_cost") is None, name
        budget = resolve_budget(cfg)              # composes into a valid budget: time alone
        assert (budget.max_epochs, budget.max_cost) == (None, None), name
        budgets.setdefault(cfg.dataset.name, set()).add(budget.max_time_s)
    assert budgets == {"cifar10": {43200.0}, "cifar100": {43200.0}, "svhn": {345600.0}}


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "svhn"])
def test_accelerated_schedules_are_08x_schedule1(dataset):
    sched1 = compose_config([f"lr_schedule={dataset}_sched1"]).lr_schedule
    fast = compose_config([f"lr_schedule={dataset}_accelerated"]).lr_schedule
    assert list(fast.milestones) == [round(0.8 * m) for m in sched1.milestones]
    assert fast.gamma == sched1.gamma
