"""Every failed or pruned trial stores why; non-finite values fail; the finalizer picks finite trials."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

import hpo.objective
from hpo.engine import DeviceData
from hpo.finalizer import best_trial
from hpo.objective import REASON_ATTR, Objective, checked_value
from hpo.space import SearchSpace

# Every parameter fixed, so each trial trains the same network whatever the sampler picks.
TINY = SearchSpace.from_dict({
    "max_epochs": 2, "n_layers": 1, "n_units": 8, "batch_size": 32, "optimizer": "adam", "activation": "relu",
    "dropout": 0.0, "weight_decay": 0, "lr": 0.01, "class_weight": "none",
})


def _device_data(*, n_classes: int = 2, label_offset: int = 0) -> DeviceData:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + label_offset
    return DeviceData.from_arrays(x, y, x, y, n_classes=n_classes, device=torch.device("cpu"))


def _run(objective: Objective, tmp_path: Path) -> optuna.trial.FrozenTrial:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'reasons.db'}", direction="maximize")
    study.optimize(objective, n_trials=1, catch=(Exception,))
    return study.trials[0]


def test_objective_exception_stores_type_and_message(tmp_path: Path) -> None:
    # Labels 1 and 2 with two output classes: cross-entropy rejects label 2.
    trial = _run(Objective(TINY, _device_data(label_offset=1), seed=0), tmp_path)

    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs[REASON_ATTR].startswith("IndexError: Target 2 is out of bounds")


def test_objective_diverging_loss_stores_epoch(tmp_path: Path) -> None:
    space = SearchSpace.from_dict({**TINY.to_dict(), "optimizer": "sgd", "lr": 10.0, "momentum": 0.99, "max_epochs": 30})
    data = _device_data()
    scaled = DeviceData(data.x_train * 1e6, data.y_train, data.x_val, data.y_val, n_classes=2)

    trial = _run(Objective(space, scaled, seed=0), tmp_path)

    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs[REASON_ATTR].startswith("non-finite loss at epoch ")


def test_objective_out_of_memory_stores_batch_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def exhaust_memory(*args: object, **kwargs: object) -> None:
        # NOTE: stands in for the engine, since a real allocation failure cannot be forced on CPU.
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(hpo.objective, "train", exhaust_memory)
    trial = _run(Objective(TINY, _device_data(), seed=0), tmp_path)

    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs[REASON_ATTR] == "out of memory at batch size 32"


def test_objective_interrupt_stores_reason(tmp_path: Path) -> None:
    space = SearchSpace.from_dict({**TINY.to_dict(), "max_epochs": 100_000, "patience": 100_000})
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'reasons.db'}", direction="maximize")
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            study.optimize(Objective(space, _device_data(), seed=0), n_trials=1, catch=(Exception,))
    finally:
        timer.cancel()

    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs[REASON_ATTR].startswith("interrupted at epoch ")


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_checked_value_non_finite_fails_trial(tmp_path: Path, value: float) -> None:
    storage = f"sqlite:///{tmp_path / 'values.db'}"
    plain = optuna.create_study(storage=storage, study_name="plain")
    plain.optimize(lambda trial: value, n_trials=1)
    guarded = optuna.create_study(storage=storage, study_name="guarded")
    guarded.optimize(lambda trial: checked_value(trial, value), n_trials=1, catch=(Exception,))

    # Plain Optuna keeps an infinite value as COMPLETE; NaN it already fails.
    expected_plain = optuna.trial.TrialState.FAIL if value != value else optuna.trial.TrialState.COMPLETE
    assert plain.trials[0].state == expected_plain
    assert guarded.trials[0].state == optuna.trial.TrialState.FAIL
    assert guarded.trials[0].user_attrs[REASON_ATTR] == f"non-finite objective value {value}"


@pytest.mark.parametrize("direction, expected", [("maximize", 1), ("minimize", 3)])
def test_best_trial_finite_complete_lowest_number_wins(tmp_path: Path, direction: str, expected: int) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'best.db'}", direction=direction)
    attrs = {"config": {}}
    values = [float("inf") if direction == "maximize" else float("-inf"), 0.9, 0.9, 0.1, 0.1]
    for value in values:
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs))

    # Optuna's own best_trial picks the infinite value.
    assert study.best_trial.number == 0
    assert best_trial(study).number == expected
