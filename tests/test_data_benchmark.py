"""benchmarks/data_loading.py runs in quick mode and reports every cell."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data_loading.py"


def test_quick_benchmark_prints_a_table(capsys):
    spec = importlib.util.spec_from_file_location("data_loading_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--quick"])
    assert {(r["dataset"], r["batch_size"]) for r in rows} == {
        (d, b) for d in ("digits@32", "cifar-sized") for b in (8, 32)
    }
    assert all(r[key] > 0 for r in rows for key in ("fast", "loader", "plain"))
    out = capsys.readouterr().out
    assert "| dataset | batch | fast path (img/s)" in out and "| digits@32 | 8 |" in out
