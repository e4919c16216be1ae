"""The strategies: which examples get trained on. One file per strategy; the registry is this module.

`REGISTRY` names each strategy's class by import path ("module:Class"); a class is imported the first
time it is asked for, so the strategy modules never import this one back (no import circle) and a
strategy's module is loaded only when a run uses it. Adding a strategy: one new file beside these
(a `Strategy` subclass from base.py with a `name` and a keyword-only constructor that checks its
keywords with args.py), one line in `REGISTRY`, one config file in conf/strategy/ whose `_target_` is
the class (docs/architecture.md, "Adding a strategy"). A config's `_target_` may also name any
importable `Strategy` subclass outside the package; `register` adds a name for one at run time.

`build_strategy(cfg, batch_size, seed)` builds the class named by the config's `_target_` (or, in
configs without one, by `name`) with every other key as a keyword.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import OmegaConf

from selective_backprop.errors import ConfigError
from selective_backprop.strategies import args as arg
from selective_backprop.strategies.base import Context, Counters, Strategy, TrainBatch

__all__ = ["REGISTRY", "STRATEGIES", "Context", "Counters", "Strategy", "TrainBatch", "build_strategy",
           "options", "register", "strategy_class"]

# strategy name (config `name`, run record `strategy`) -> "module:Class"; the order is the one users see
REGISTRY: dict[str, str] = {
    "traditional": "selective_backprop.strategies.traditional:Traditional",
    "sb": "selective_backprop.strategies.sb:SBStrategy",
    "stale_sb": "selective_backprop.strategies.stale_sb:StaleSB",
    "kath18": "selective_backprop.strategies.kath18:Kath18",
    "uniform": "selective_backprop.strategies.uniform:Uniform",
    "infobatch": "selective_backprop.strategies.infobatch:InfoBatch",
    "composer_sb": "selective_backprop.strategies.composer_sb:ComposerSB",
}


def _load(path: str) -> type[Strategy]:
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class _Strategies(Mapping):
    """Name -> class, read from REGISTRY (importing a class's module on first use)."""

    def __getitem__(self, name: str) -> type[Strategy]:
        return _load(REGISTRY[name])

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


STRATEGIES: Mapping[str, type[Strategy]] = _Strategies()


def register(name: str, target: str) -> None:
    """Add (or replace) a strategy name: `target` is "module:Class" or "module.Class" of a Strategy
    subclass whose `name` is `name`; checked now, so a wrong path fails here and not in a run."""
    path = target if ":" in target else ":".join(target.rsplit(".", 1))
    try:
        cls = _load(path)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"strategy {name!r}: {target!r} cannot be imported ({type(err).__name__}); accepted: "
                          f"module:Class of a Strategy subclass") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)) or cls.name != name:
        raise ConfigError(f"strategy {name!r}: {target!r} is not accepted; accepted: a Strategy subclass "
                          f"whose name is {name!r}")
    REGISTRY[name] = path


def options(cls: type[Strategy]) -> dict[str, inspect.Parameter]:
    """The config keys `cls` takes: its keyword-only constructor arguments (a subclass passing `**options`
    on to its base takes the base's too), in signature order, with their defaults."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        found.update({p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in found})
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return found


def strategy_class(name: Any, target: Any = None) -> type[Strategy]:
    """The class a strategy config names: its `_target_` (an import path), else `STRATEGIES[name]`
    (configs written before `_target_`, hand-built ones); the two must agree when both are given."""
    if target is None:
        if name not in STRATEGIES:
            arg.fail("name", name, " | ".join(STRATEGIES))
        return STRATEGIES[name]
    from hydra.utils import get_class

    try:
        cls = get_class(str(target))
    except Exception as err:              # hydra wraps the import error; keep one line
        example = REGISTRY["sb"].replace(":", ".")
        raise ConfigError(f"strategy._target_={target!r}: cannot be imported ({type(err).__name__}); accepted: "
                          f"a Strategy class path such as {example}") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        arg.fail("_target_", target, f"a subclass of {Strategy.__module__}.{Strategy.__qualname__}")
    if name is not None and name != cls.name:
        raise ConfigError(f"strategy.name={name!r} and strategy._target_={target!r} disagree ({cls.__name__} is "
                          f"strategy {cls.name!r}); accepted: name {cls.name!r}, or the _target_ of {name!r}")
    return cls


def build_strategy(cfg: Any, batch_size: int, seed: int) -> Strategy:
    """The strategy a `strategy` config describes, built once through its constructor (which validates
    every keyword): `_target_` (or `name`) picks the class, every other key is a keyword."""
    config = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    if not isinstance(config, Mapping):
        raise ConfigError(f"strategy={config!r}: not accepted; accepted: a strategy config (a mapping with a name)")
    keywords = dict(config)
    name, target = keywords.pop("name", None), keywords.pop("_target_", None)
    cls = strategy_class(name, target)
    accepted = options(cls)
    for key in keywords:
        if key not in accepted:
            raise ConfigError(f"strategy.{key}: unknown key for strategy {cls.name}; accepted: "
                              f"{', '.join(accepted) or 'no keys besides name'}")
    return cls(batch_size, seed, **keywords)
