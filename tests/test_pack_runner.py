"""Packed studies: trials asked and told in packs leave the same records as lone trials."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

import hpo
from hpo.study import optimize

SPACE = {"max_epochs": 2, "n_layers": [1, 2], "n_units": [4, 16], "batch_size": [64, 128]}


def test_optimize_packed_trials_match_lone_records() -> None:
    lone = optimize(n_trials=3, space=SPACE, device="cpu", study_name="lone", pruner="none")
    packed = optimize(n_trials=3, space=SPACE, device="cpu", study_name="packed", pruner="none", pack=3)

    assert len(packed.trials) == 3
    for lone_trial, packed_trial in zip(lone.trials, packed.trials, strict=True):
        assert packed_trial.state == optuna.trial.TrialState.COMPLETE
        assert sorted(packed_trial.user_attrs) == sorted(lone_trial.user_attrs)
        assert sorted(packed_trial.params) == sorted(lone_trial.params)
        assert len(packed_trial.intermediate_values) == packed_trial.user_attrs["epochs_run"]
        assert packed_trial.value == max(packed_trial.intermediate_values.values())
        # An accuracy is a count over the 200 validation rows, without float32 rounding.
        assert packed_trial.value * 200 == pytest.approx(round(packed_trial.value * 200), abs=1e-9)


def test_optimize_packed_same_seed_matches_lone_values() -> None:
    # With one trial per pack and no dropout, a packed trial trains as the lone one does.
    space = {**SPACE, "dropout": 0.0}
    lone = optimize(n_trials=2, space=space, device="cpu", study_name="lone", pruner="none")
    packed = optimize(n_trials=2, space=space, device="cpu", study_name="packed", pruner="none", pack=2)

    for lone_trial, packed_trial in zip(lone.trials, packed.trials, strict=True):
        assert packed_trial.params == lone_trial.params
        assert packed_trial.value == pytest.approx(lone_trial.value, abs=1e-3)
        assert packed_trial.user_attrs["train_loss"] == pytest.approx(lone_trial.user_attrs["train_loss"], rel=1e-3)


def test_optimize_packed_pruner_prunes_trials() -> None:
    space = {**SPACE, "max_epochs": 4, "n_layers": 1, "batch_size": 128}
    study = optimize(n_trials=10, space=space, device="cpu", study_name="pruned", pruner="successive-halving", pack=5)

    states = [trial.state for trial in study.trials]
    assert len(states) == 10
    assert optuna.trial.TrialState.PRUNED in states
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert trial.user_attrs["reason"].startswith("pruned at epoch")
            assert trial.user_attrs["epochs_run"] == len(trial.intermediate_values)


def test_optimize_pack_zero_raises() -> None:
    with pytest.raises(hpo.exceptions.InputError, match="pack"):
        optimize(n_trials=1, device="cpu", pack=0)


def test_optimize_pack_auto_runs() -> None:
    study = optimize(n_trials=3, space=SPACE, device="cpu", pack="auto")

    assert len(study.trials) == 3


def test_optimize_pack_with_cv_raises_before_study_exists(tmp_path: Path) -> None:
    with pytest.raises(hpo.exceptions.InputError, match="--cv"):
        optimize(n_trials=1, device="cpu", cv=3, pack=4, storage=f"sqlite:///{tmp_path / 'cv.db'}")

    assert not (tmp_path / "cv.db").exists()


def test_optimize_packed_over_budget_prunes_before_training() -> None:
    study = optimize(n_trials=2, space=SPACE, device="cpu", pack=2, max_params=10)

    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert trial.user_attrs["reason"].startswith("over budget")
        assert trial.user_attrs["epochs_run"] == 0


def test_packed_slow_start_grows_pack() -> None:
    study = optimize(n_trials=5, space=SPACE, device="cpu", study_name="slow", pruner="none", pack=4)
    trials = study.trials

    def overlap_at_start(trial: optuna.trial.FrozenTrial) -> int:
        return sum(1 for other in trials if other.number < trial.number and other.datetime_complete > trial.datetime_start)

    # The first trial trains alone, the second joins once one trial has ended, and so on.
    assert trials[1].datetime_start >= trials[0].datetime_complete
    assert all(overlap_at_start(trial) <= len([t for t in trials if t.datetime_complete <= trial.datetime_start]) for trial in trials)
    assert max(overlap_at_start(trial) for trial in trials) >= 1
