"""Training entry point: `python -m selective_backprop.train [overrides]` or `sb-train [overrides]`."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from selective_backprop.errors import ConfigError

log = logging.getLogger("selective_backprop")


def run(cfg: DictConfig, output_dir: str) -> float:
    """Train one run described by `cfg`, writing its record to `output_dir`; returns the final test error."""
    from selective_backprop.engine.trainer import Trainer

    trainer = Trainer(cfg, output_dir)
    log.info("run dir: %s | %s on %s, %s, strategy %s %s", output_dir, cfg.model.name, cfg.dataset.name,
             trainer.device, trainer.strategy.name, trainer.strategy.params())
    summary = trainer.fit()
    log.info("finished (%s): final test error %.4f, train %.1fs, run dir %s", summary["status"],
             summary["final_test_error"], summary["train_s"], output_dir)
    return float(summary["final_test_error"])


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry: returns the final test error (what a sweeper optimises)."""
    output_dir = HydraConfig.get().runtime.output_dir
    try:
        return run(cfg, output_dir)
    except ConfigError as err:
        log.error("%s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
