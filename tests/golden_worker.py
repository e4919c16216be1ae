"""Run every golden case of tests/test_golden.py with portable CPU kernels; write {case: rows} as JSON.

    ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        python tests/golden_worker.py DATA_ROOT OUT_JSON [CASE ...]

test_golden.py starts it in a fresh process with that environment (PORTABLE_ENV), because kernel
choice is made when torch loads: the same float32 run differs in its last bits between an AVX-512 and an
AVX2-only CPU, and a few epochs at LR 0.1 amplify that into different selections. Pinned here: ATen's
non-vectorised ("default") kernels, MKL's conditional-numerical-reproducibility path that gives the same
results on every x86-64 CPU (COMPATIBLE), oneDNN and NNPACK off (their kernels are chosen per CPU), one
thread.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

KERNELS = {"aten_cpu_capability": "DEFAULT", "mkl_cbwr": "COMPATIBLE", "mkldnn": False, "nnpack": False,
           "threads": 1}


def pin_kernels() -> dict:
    """Apply the in-process part of the pin and return the settings in effect (KERNELS when pinned)."""
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    torch.set_num_threads(1)
    return {"aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl_cbwr": os.environ.get("MKL_CBWR"), "mkldnn": torch.backends.mkldnn.enabled,
            "nnpack": bool(getattr(torch._C, "_get_nnpack_enabled", lambda: False)()),
            "threads": torch.get_num_threads()}


def main(argv: list[str]) -> int:
    root, out, *cases = argv
    in_effect = pin_kernels()
    if in_effect != KERNELS:
        print(f"golden_worker: kernels not pinned ({in_effect}; wanted {KERNELS}): start it with "
              "test_golden.PORTABLE_ENV", file=sys.stderr)
        return 2
    from conftest import tiny_config
    from selective_backprop.data import build_data
    from selective_backprop.engine.trainer import Trainer
    from test_golden import BASE, CASES, untimed

    base = tiny_config(Path(root), BASE)
    bundle = build_data(base.dataset, int(base.seed))
    results = {}
    for case in cases or sorted(CASES):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            Trainer(tiny_config(Path(root), BASE + CASES[case]), str(run_dir), data_bundle=bundle).fit()
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        results[case] = untimed(rows)
    Path(out).write_text(json.dumps({"kernels": in_effect, "torch": torch.__version__, "cases": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
