"""Moved to `selective_backprop.strategies.infobatch` and `selective_backprop.strategies.composer_sb`
(`run_epochs`: `selective_backprop.strategies.base`); these old names are re-exported from there for one
release (README "Changelog"). Import the new paths."""

from selective_backprop.strategies.base import run_epochs  # noqa: F401
from selective_backprop.strategies.composer_sb import (ComposerSB, composer_rank_probabilities,  # noqa: F401
                                                       should_select)
from selective_backprop.strategies.infobatch import InfoBatch  # noqa: F401
