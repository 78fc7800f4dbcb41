"""A short study on the built-in default data, through the Python API."""

from __future__ import annotations

import optuna

import hpo


def test_optimize_default_data_completes_trials() -> None:
    study = hpo.optimize(n_trials=3, space={"max_epochs": 3}, device="cpu")

    states = [t.state for t in study.trials]
    assert len(states) == 3
    assert optuna.trial.TrialState.COMPLETE in states
    assert 0.0 < study.best_value <= 1.0
