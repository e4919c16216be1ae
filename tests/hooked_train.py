"""`sb-train` with test hooks installed: the CLI tests' way to stop a real run at an exact point.

    python tests/hooked_train.py [--pause-at POINT:EPOCH --marker FILE] [--rank-state-dir DIR]
                                 [--patch-md5 ROOT] -- ARGS...
    torchrun --nproc_per_node=2 tests/hooked_train.py [...] -- ARGS...

runs `python -m selective_backprop.train ARGS...` (the same main()) with a `Hooks` object installed
(selective_backprop.engine.hooks), so the library itself reads no test switches:
* --pause-at mid_epoch|eval|checkpoint_write:EPOCH  at that point write FILE, then sleep until a
  SIGTERM/SIGINT sets the preemption flag (or the test kills the process); with --hold the pause
  outlasts the first signal too (a second signal then aborts the run inside it);
* --rank-state-dir DIR  at the end of a finished run every rank saves its model state, its own
  counters and its strategy's state (SB: the loss history) to DIR/rank<r>.pt (outside the run dir);
* --patch-md5 ROOT  point torchvision's md5 tables at the generated dataset files under ROOT
  (tests/datagen.py), so runs read generated CIFAR / SVHN files through the real data path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from selective_backprop.engine import hooks
from selective_backprop.engine.control import PREEMPTION


class TestHooks(hooks.Hooks):
    def __init__(self, pause_at: str | None, marker: str | None, rank_state_dir: str | None,
                 pause_s: float = 600.0, hold: bool = False):
        self.pause_at, self.marker, self.rank_state_dir, self.pause_s = pause_at, marker, rank_state_dir, pause_s
        self.hold = hold

    def pause(self, point: str, epoch: int) -> None:
        if self.pause_at != f"{point}:{epoch}":
            return
        if self.marker:
            Path(self.marker).write_text(f"{point}:{epoch} pid {os.getpid()}\n")
        deadline = time.monotonic() + self.pause_s
        while time.monotonic() < deadline and (self.hold or not PREEMPTION.requested):
            time.sleep(0.05)

    def run_finished(self, trainer) -> None:
        if self.rank_state_dir:
            Path(self.rank_state_dir).mkdir(parents=True, exist_ok=True)
            torch.save({"model": trainer.model.state_dict(), "counters": trainer.counters.snapshot(),
                        "strategy": trainer.strategy.state_dict()},
                       Path(self.rank_state_dir) / f"rank{trainer.dist.rank}.pt")


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pause-at")
    ap.add_argument("--marker")
    ap.add_argument("--rank-state-dir")
    ap.add_argument("--patch-md5", metavar="ROOT")
    ap.add_argument("--hold", action="store_true")
    args = ap.parse_args(argv[:split])
    if args.patch_md5:
        import pytest

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import datagen

        datagen.patch_md5s(pytest.MonkeyPatch(), args.patch_md5)
    hooks.install(TestHooks(args.pause_at, args.marker, args.rank_state_dir, hold=args.hold))
    sys.argv = [sys.argv[0], *argv[split + 1:]]
    from selective_backprop.train import main as train_main
    train_main()


if __name__ == "__main__":
    main()
