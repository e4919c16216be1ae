"""Moved to `selective_backprop.distributed`; this old path is an alias of that module, kept for one release
(README "Changelog"). Import the new path."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("selective_backprop.distributed")
