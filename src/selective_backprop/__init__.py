"""Selective-Backprop: accelerate training by backpropagating only the biggest losers."""

from selective_backprop.selection.dropin import SelectiveBackprop

__version__ = "0.1.0"
__all__ = ["SelectiveBackprop", "__version__"]
