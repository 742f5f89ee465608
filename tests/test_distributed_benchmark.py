"""benchmarks/distributed_step.py runs in quick mode (2 gloo processes) and prints every row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "distributed_step.py"


def test_quick_distributed_benchmark_prints_a_table():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| global batch | per process | norm | step ms | × synchronized BN |" in out
    for row in (
        "BN, synchronized",
        "NABN everywhere, synchronized",
        "IEBN everywhere, synchronized",
    ):
        assert f"| 4 | 2 | {row} |" in out
    assert out.count("| 4 | 2 |") == 3 and "2 processes (gloo)" in out
