"""`scripts/demo.py` through its door: equal budgets, the verdict line, the table and the plot (real data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_demo_gives_every_strategy_traditionals_cost(tmp_path: Path, fmnist_root: Path) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(out), "--subset", "512",
           "--test-subset", "300", "--width", "8", f"dataset.root={fmnist_root}", "train.diverge_factor=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    first = proc.stdout.splitlines()[0]
    assert first.startswith(("SB did NOT pay off here", "SB reached Traditional's final error x 1.2")), first
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "strategy" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["traditional", "sb", "uniform"]
    assert (out / "table.md").read_text().splitlines()[0] == first
    assert (out / "error_vs_cost.png").stat().st_size > 0
    summaries = {s: json.loads((out / s / "summary.json").read_text()) for s in ("traditional", "sb", "uniform")}
    budget = summaries["traditional"]["cost"]
    assert summaries["traditional"]["status"] == "completed" and summaries["traditional"]["epochs"] == 10
    for name in ("sb", "uniform"):
        s = summaries[name]
        assert s["status"] == "budget" and s["budget"]["max_cost"] == budget
        assert budget <= s["cost"] <= budget + 2 * 128 * 3      # stopped within one step past the budget
        assert s["epochs"] > 10                                    # cheaper epochs: more of them
