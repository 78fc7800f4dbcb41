"""A small finalized study made once per test session, shared by the report, dashboard and overview tests.

tests/conftest.py imports the ``viewed_study`` fixture, so that every module shares one study.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

STUDY_NAME = "views"
N_API_TRIALS = 4
# Small networks with few epochs, so that a trial takes well under a second on one core.
SMALL_SPACE = {"max_epochs": 3, "n_layers": [1, 2], "n_units": [8, 32], "batch_size": [128]}
ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass(frozen=True)
class ViewedStudy:
    """A study with completed trials, one added pruned trial and a finalized bundle."""

    name: str
    storage: str
    db_path: Path
    folder: Path
    n_trials: int


def run_hpo(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the ``hpo`` CLI in a fresh Python process and return its result."""
    env = {**os.environ, "HPO_STUDY_DIR": str(cwd / "study_db")}
    env.pop("HPO_STORAGE", None)
    return subprocess.run([sys.executable, "-m", "hpo", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def viewed_study(tmp_path_factory: pytest.TempPathFactory) -> ViewedStudy:
    """Optimize a few small trials, add one pruned trial and finalize, on a fresh SQLite file."""
    import hpo

    folder = tmp_path_factory.mktemp("views")
    db_path = folder / "study_db" / f"{STUDY_NAME}.db"
    storage = f"sqlite:///{db_path}"
    hpo.optimize(study_name=STUDY_NAME, storage=storage, n_trials=N_API_TRIALS, space=SMALL_SPACE, device="cpu")
    _add_pruned_trial(STUDY_NAME, storage)
    hpo.finalize(STUDY_NAME, folder / "model", storage=storage, device="cpu")
    return ViewedStudy(STUDY_NAME, storage, db_path, folder, N_API_TRIALS + 1)


def launch_chromium(playwright: object) -> object:
    """Launch Debian's Chromium through Playwright, or skip the test where it is not installed."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found; run 'bash scripts/setup.sh --test' as root to install it")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)  # type: ignore[attr-defined]


def _add_pruned_trial(name: str, storage: str) -> None:
    # The median pruner judges no trial among the first five, so a run this short prunes
    # none. A pruned trial with the attributes that the objective writes stands in for one.
    study = optuna.load_study(study_name=name, storage=storage)
    template = study.trials[0]
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED,
            params=template.params,
            distributions=template.distributions,
            intermediate_values={0: 0.2, 1: 0.25},
            user_attrs={"train_loss": [1.2, 1.1], "epochs_run": 2, "reason": "pruned at epoch 1 with validation accuracy 0.2500"},
        )
    )
