"""Train a stored trial's configuration again: for the final model, seed spread and reproduction."""

from __future__ import annotations

import logging
from typing import Any

import optuna
import torch
from torch import nn

from hpo.device import resolve_device
from hpo.engine import DeviceData, TrainResult, train
from hpo.fingerprint import check_study_data
from hpo.metrics import Metric
from hpo.model import build_mlp
from hpo.objective import architecture
from hpo.prepare import PreparedData, load_and_split
from hpo.space import TrialConfig
from hpo.storage import load_study, resolve_storage_url, study_settings, validate_study_name
from hpo.study import StudySetup, build_objective

_logger = logging.getLogger(__name__)


def device_data(prepared: PreparedData, device: torch.device) -> DeviceData:
    """Copy the training (and, unless final, validation) arrays of ``prepared`` to ``device``."""
    return DeviceData.from_arrays(
        prepared.x_train, prepared.y_train, prepared.x_val, prepared.y_val,
        n_classes=prepared.n_classes, device=device, y_scale=prepared.target_std,
    )


def fit_network(
    data: DeviceData,
    config: TrialConfig,
    *,
    seed: int,
    metric: Metric,
    n_epochs: int | None = None,
) -> tuple[nn.Module, TrainResult, dict[str, Any]]:
    """Build and train a network as a trial does: weights seeded with ``seed``, then ``train``.

    Args:
        data: Tensors on the training device.
        config: The trial config.
        seed: Seed of the initial weights and of the batch order.
        metric: Validation metric for the best epoch and early stopping.
        n_epochs: Exact number of epochs; None trains like the trial, with early stopping.

    Returns:
        The trained network, its training result and its architecture description.
    """
    arch = architecture(config, data.x_train.shape[1], data.n_outputs)
    torch.manual_seed(seed)
    network = build_mlp(arch).to(data.device)
    result = train(network, config, data, seed=seed, n_epochs=n_epochs, metric=metric)
    return network, result, arch


def reproduce_trial(
    study_name: str,
    trial_number: int,
    *,
    storage: str | None = None,
    device: str = "cpu",
) -> tuple[float, float]:
    """Run a completed trial again with its own parameters, seed and split, and score it.

    The trial goes through the study's own objective (cross-validation and budgets
    included) as an ``optuna.trial.FixedTrial``, which never prunes.

    Returns:
        The trial's stored value and the value of the rerun. On the CPU they match to
        float rounding; on a GPU, nondeterministic kernels can make them differ.

    Raises:
        StudyError: When the study is missing.
        ValueError: When the trial is not a completed hpo trial.
    """
    name = validate_study_name(study_name)
    study = load_study(name, resolve_storage_url(storage, name))
    setup = StudySetup.from_dict(study_settings(study))
    trial = study.trials[trial_number]
    if trial.state != optuna.trial.TrialState.COMPLETE or "config" not in trial.user_attrs:
        raise ValueError(f"trial {trial_number} of study {name!r} is not a completed hpo trial")

    table, split = load_and_split(setup.data)
    check_study_data(study.user_attrs, name, table, setup.data.split, split)
    objective, _ = build_objective(setup, table, split, resolve_device(device))
    value = objective(optuna.trial.FixedTrial(trial.params, number=trial.number))  # type: ignore[arg-type]
    return float(trial.value), float(value)  # type: ignore[arg-type]
