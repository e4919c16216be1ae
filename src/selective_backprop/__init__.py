"""Selective-Backprop: accelerate training by backpropagating only the biggest losers."""

__version__ = "0.1.0"
