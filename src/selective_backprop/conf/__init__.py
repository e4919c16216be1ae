"""The Hydra configs, shipped inside the package so every entry point finds them (`pkg://selective_backprop.conf`).

`CONFIG_DIR` is their folder on disk, for `hydra.initialize_config_dir` (tests, scripts, notebooks).
The repository's top-level `conf` is a link to this folder.
"""

from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parent)
