"""Moved to `selective_backprop.strategies` (one module per strategy, the registry in its __init__);
these old names are re-exported from there for one release (README "Changelog"). Import the new paths."""

from selective_backprop.strategies import STRATEGIES, build_strategy, options, strategy_class  # noqa: F401
from selective_backprop.strategies.base import (Context, Counters, Strategy, TrainBatch,  # noqa: F401
                                                _ExampleStream, _Packing)
from selective_backprop.strategies.kath18 import Kath18  # noqa: F401
from selective_backprop.strategies.sb import SBStrategy  # noqa: F401
from selective_backprop.strategies.stale_sb import StaleSB  # noqa: F401
from selective_backprop.strategies.traditional import Traditional  # noqa: F401
from selective_backprop.strategies.uniform import Uniform  # noqa: F401
