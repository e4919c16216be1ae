"""Selection rules, their state, and the drop-in API."""

from selective_backprop.selection.dropin import SelectiveBackprop
from selective_backprop.selection.packer import BatchPacker
from selective_backprop.selection.selector import LossSelector, SeededGenerator, selection_forward

__all__ = ["SelectiveBackprop", "BatchPacker", "LossSelector", "SeededGenerator", "selection_forward"]
