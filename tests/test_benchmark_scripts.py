"""Smoke runs of the benchmark and GPU check scripts with tiny settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_benchmark_tiny_run_prints_table(ocean_small_csv: Path) -> None:
    result = _run(
        "benchmark.py", "--data", str(ocean_small_csv), "--n-trials", "2",
        "--example-epochs", "1", "--full-batch-epochs", "2", "--hpo-max-epochs", "1",
    )

    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    names = [row.split("|")[1].strip() for row in rows]
    assert any(name.startswith("a. Optuna example") for name in names)
    assert any(name.startswith("e. hpo, --pack auto") for name in names)
    assert any(name.startswith("f. hpo, --workers") for name in names)
    assert any(name.startswith("hpo, pack of 8") for name in names)
    assert "Arithmetic floor" in result.stdout


@pytest.mark.slow
def test_gpu_check_on_cpu_prints_table(ocean_small_csv: Path) -> None:
    result = _run(
        "gpu_check.py", "--data", str(ocean_small_csv), "--device", "cpu", "--seconds", "0.1",
        "--workers", "1", "--packs", "1,4", "--batch-sizes", "512",
    )

    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 1 + 2 * 2
