"""The study progress bar counts trials from storage, so trials of other worker processes show up."""

from __future__ import annotations

import fcntl
import io
import os
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import optuna
import pytest

from hpo.progress import StudyProgress, count_trials, describe_counts

_OTHER_WORKER = """
import sys
import optuna
from optuna.distributions import FloatDistribution
study = optuna.load_study(study_name="shared", storage=sys.argv[1])
dist = {"lr": FloatDistribution(1e-5, 1e-1, log=True)}
study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.7, params={"lr": 0.01}, distributions=dist))
study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={"lr": 0.02}, distributions=dist))
"""


def test_study_progress_counts_other_process_trials(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    study = optuna.create_study(study_name="shared", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.5))
    out = io.StringIO()

    with StudyProgress(study, n_trials=3, interval_s=0.1, file=out) as progress:
        subprocess.run([sys.executable, "-c", _OTHER_WORKER, storage], check=True, timeout=120)
        progress.refresh()
        text = out.getvalue()

    # The trial stored before the bar opened does not count toward this run.
    assert "2/3" in text
    assert "best 0.70000 | 2 complete, 1 pruned, 0 failed" in text


def test_count_trials_includes_running_and_failed(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="counts", storage=f"sqlite:///{tmp_path / 'c.db'}", direction="minimize")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.4))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.2))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    study.ask()

    counts = count_trials(study)

    assert (counts.complete, counts.pruned, counts.failed, counts.running) == (2, 0, 1, 1)
    assert counts.best_value == pytest.approx(0.2)
    assert describe_counts(counts) == "best 0.20000 | 2 complete, 0 pruned, 1 failed, 1 running"


def test_study_progress_nonpositive_interval_raises(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'i.db'}")

    with pytest.raises(ValueError, match="interval_s"):
        StudyProgress(study, n_trials=1, interval_s=0)


def test_cli_optimize_on_terminal_shows_study_bar(tmp_path: Path) -> None:
    # The bar is drawn only when stderr is a terminal, so the command gets a pseudo-terminal.
    primary, secondary = os.openpty()
    # A new pseudo-terminal has 0 columns, in which tqdm draws an empty line.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_until_closed, args=(primary, chunks), daemon=True)
    reader.start()
    command = [
        sys.executable, "-m", "hpo", "optimize", "--study", "bar", "--storage", f"sqlite:///{tmp_path / 'bar.db'}", "--n-trials", "2",
        "--max-epochs", "1", "--space", "n_layers=1", "--space", "n_units=8", "--device", "cpu",
    ]
    try:
        result = subprocess.run(command, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary, text=True, timeout=300)
    finally:
        os.close(secondary)
    reader.join(timeout=30)
    os.close(primary)
    terminal = b"".join(chunks).decode(errors="replace")

    assert result.returncode == 0, terminal
    assert "bar:" in terminal
    assert "2/2" in terminal
    assert "2 complete, 0 pruned, 0 failed" in terminal


def _read_until_closed(descriptor: int, chunks: list[bytes]) -> None:
    while True:
        try:
            data = os.read(descriptor, 4096)
        except OSError:  # EIO once the last writer closed the terminal
            return
        if not data:
            return
        chunks.append(data)
