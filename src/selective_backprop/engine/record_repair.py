"""A finished run's metrics.jsonl made whole again from its checkpoint.pt.

The final checkpoint of a run (written after its last evaluation) holds every evaluation row in
`history`, so a `metrics.jsonl` that was truncated, damaged, deleted or appended to after the run
finished is rewritten from it when the run is started again. Without a checkpoint holding them the
evaluations cannot be recovered: `repair_metrics` says exactly what is missing and how to redo the run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from selective_backprop.engine import checkpoint as ckpt
from selective_backprop.engine.writer import RunRecorder
from selective_backprop.errors import ConfigError
from selective_backprop.record import METRICS_FILE, read_metrics

log = logging.getLogger(__name__)


def _canonical(rows: list[dict]) -> list[str]:
    return [json.dumps(r, sort_keys=True) for r in rows]


def _ends_at(rows: list[dict], steps: int | None) -> bool:
    """`rows` reach the run's last step, each evaluation after the previous one."""
    if not rows:
        return False
    marks = [r.get("step") for r in rows]
    ordered = all(isinstance(a, int) and isinstance(b, int) and a < b for a, b in zip(marks, marks[1:]))
    return ordered and (steps is None or marks[-1] == steps)


def _what_is_there(path: Path, rows: list[dict], damage: str | None) -> str:
    if damage is not None:
        return f"'{path}' is damaged ({damage})"
    if not path.exists():
        return f"'{path}' is missing"
    last = f", the last at step {rows[-1].get('step')}" if rows else ""
    return f"'{path}' holds {len(rows)} evaluation(s){last}"


def repair_metrics(run_dir: str | Path, summary: dict) -> bool:
    """Make the metrics.jsonl of the finished run in `run_dir` (whose summary.json is `summary`) whole;
    True when it was rewritten from checkpoint.pt. ConfigError (one line: what is missing, how to redo
    the run) when it is incomplete and the checkpoint cannot rebuild it."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    steps = summary.get("steps")
    try:
        rows, damage = read_metrics(path), None
    except (ValueError, OSError) as err:
        rows, damage = [], " ".join(str(err).split())
    if damage is None and _ends_at(rows, steps):
        return False
    history, why_not = _checkpoint_history(run_dir)
    if history is not None and _ends_at(history, steps if steps is not None else history[-1].get("step")):
        if _canonical(rows) != _canonical(history) or damage is not None:
            found = _what_is_there(path, rows, damage)
            RunRecorder(run_dir, tensorboard=False).start(history)
            log.warning("%s: rebuilt it with the %d evaluations checkpoint.pt holds", found, len(history))
            return True
        return False
    raise ConfigError(f"{_what_is_there(path, rows, damage)}, but the run finished at step {steps} and "
                      f"{why_not or 'checkpoint.pt does not hold all its evaluations'}, so its evaluations cannot be rebuilt; "
                      f"accepted: move '{run_dir}' away and re-run the same command to redo the run")


def _checkpoint_history(run_dir: Path) -> tuple[list[dict] | None, str | None]:
    """The evaluation rows checkpoint.pt holds, or (None, why not)."""
    path = ckpt.checkpoint_path(run_dir)
    if not path.is_file():
        return None, f"'{path}' is missing"
    try:
        state = ckpt.load_checkpoint(path)
    except ConfigError as err:
        return None, str(err)
    history = state.get("history")
    if not isinstance(history, list) or not history:
        return None, f"'{path}' holds no evaluations"
    return [dict(r) for r in history], None
