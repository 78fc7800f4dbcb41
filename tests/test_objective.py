"""The objective: one report per epoch, pruning, failure reasons and trial attributes."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

from hpo.data import SplitSpec, load_table, split_rows
from hpo.engine import DeviceData
from hpo.objective import REASON_ATTR, Objective
from hpo.prepare import prepare
from hpo.space import SearchSpace

TINY_SPACE = SearchSpace.from_dict({"n_layers": [1, 2], "n_units": [8, 32], "max_epochs": 4, "patience": 10, "batch_size": [64, 128]})


@pytest.fixture(scope="module")
def device_data() -> DeviceData:
    table = load_table("synthetic")
    prepared = prepare(table, split_rows(table, SplitSpec()))
    return DeviceData.from_arrays(
        prepared.x_train, prepared.y_train, prepared.x_val, prepared.y_val,
        n_classes=prepared.n_classes, device=torch.device("cpu"),
    )


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_objective_reports_each_epoch(device_data: DeviceData) -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())

    study.optimize(Objective(TINY_SPACE, device_data, seed=0), n_trials=2)

    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert sorted(trial.intermediate_values) == list(range(trial.user_attrs["epochs_run"]))
        assert trial.value == pytest.approx(max(trial.intermediate_values.values()))
        assert trial.user_attrs["best_epoch"] in trial.intermediate_values
        assert len(trial.user_attrs["train_loss"]) == trial.user_attrs["epochs_run"]
        for key in ("seed", "n_params", "train_seconds", "device", "config"):
            assert key in trial.user_attrs


def test_objective_pruned_trial_stores_reason(device_data: DeviceData) -> None:
    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())

    study.optimize(Objective(TINY_SPACE, device_data, seed=0), n_trials=1)

    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs[REASON_ATTR].startswith("pruned at epoch 0")
    assert list(trial.intermediate_values) == [0]


def test_objective_non_finite_loss_fails_trial_and_study_goes_on(device_data: DeviceData) -> None:
    x_train = device_data.x_train.clone()
    x_train[0, 0] = float("nan")
    broken = DeviceData(x_train, device_data.y_train, device_data.x_val, device_data.y_val, device_data.n_classes)
    study = optuna.create_study(direction="maximize")

    study.optimize(Objective(TINY_SPACE, broken, seed=0), n_trials=2, catch=(Exception,))

    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    assert study.trials[0].user_attrs[REASON_ATTR] == "non-finite loss at epoch 0"


def test_objective_same_seed_same_result(device_data: DeviceData) -> None:
    values = []
    for _ in range(2):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=5))
        study.optimize(Objective(TINY_SPACE, device_data, seed=7), n_trials=1)
        values.append((study.trials[0].value, study.trials[0].user_attrs["train_loss"]))

    assert values[0] == values[1]


def test_objective_patience_stops_early(device_data: DeviceData) -> None:
    space = SearchSpace.from_dict({"n_layers": 1, "n_units": 8, "max_epochs": 40, "patience": 1, "lr": 1e-5, "optimizer": "sgd", "batch_size": 1024})
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())

    study.optimize(Objective(space, device_data, seed=0), n_trials=1)

    trial = study.trials[0]
    assert trial.user_attrs["epochs_run"] < 40
    assert trial.user_attrs["epochs_run"] - 1 - trial.user_attrs["best_epoch"] == 1
    assert np.isfinite(trial.value)
