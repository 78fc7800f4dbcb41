"""Smoke run of scripts/bench_workers.py with tiny settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_workers.py"


def test_bench_workers_sqlite_row_passes_checks() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--storages", "sqlite", "--workers", "1", "--n-trials", "3"],
        capture_output=True, text=True, timeout=240,
    )

    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| sqlite |")]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[:5] == ["sqlite", "1", "1", "3", "0"]
    assert float(cells[6]) > 0
    assert cells[-1] == "ok"
