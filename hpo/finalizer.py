"""Retrain the best trial's configuration on train+validation, test it once, and save the bundle."""

from __future__ import annotations

import logging
import math
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch

from hpo import __version__
from hpo.bundle import JSON_NAME, WEIGHTS_NAME, save_bundle
from hpo.device import resolve_device
from hpo.engine import DeviceData, evaluate, train
from hpo.exceptions import StudyError
from hpo.model import build_mlp, count_parameters
from hpo.objective import architecture
from hpo.prepare import load_and_split, prepare
from hpo.space import TrialConfig
from hpo.storage import (
    ARTIFACTS_ATTR,
    artifact_dir,
    load_study,
    mask_password,
    resolve_storage_url,
    study_settings,
    validate_study_name,
)
from hpo.study import StudySetup

_logger = logging.getLogger(__name__)

FINAL_ATTR = "hpo_final_model"


@dataclass(frozen=True)
class FinalizeResult:
    """Bundle folder, chosen trial and test metrics of a finalized model."""

    out_dir: Path
    trial_number: int
    validation_accuracy: float
    test_metrics: dict[str, float]


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """Return the COMPLETE trial with the highest finite value; ties go to the lowest number.

    Raises:
        StudyError: When the study has no such trial.
    """
    candidates = [
        t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value) and "config" in t.user_attrs
    ]
    if not candidates:
        raise StudyError(f"study {study.study_name!r} has no completed trial yet; run 'hpo optimize --study {study.study_name}' first.")
    return min(candidates, key=lambda t: (-float(t.value), t.number))  # type: ignore[arg-type]


def finalize(
    study_name: str,
    out_dir: str | Path,
    *,
    storage: str | None = None,
    device: str = "auto",
) -> FinalizeResult:
    """Retrain the best trial on train+validation, evaluate once on test, and save the bundle.

    The network is trained for the best trial's best-epoch count with the trial's own
    seed, on preprocessing refitted to train+validation. The bundle is also stored on the
    study as Optuna artifacts, and a summary as the study attribute ``hpo_final_model``.

    Args:
        study_name: The study to read.
        out_dir: Folder for ``model.json`` and ``model.pt`` (created if missing).
        storage: Storage URL; defaults to the study's SQLite file under ``study_db/``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        The bundle folder, the chosen trial and its test metrics.

    Raises:
        StudyError: When the study is missing or has no completed trial.
        StorageError: When the storage cannot be opened.
    """
    name = validate_study_name(study_name)
    url = resolve_storage_url(storage, name)
    torch_device = resolve_device(device)
    study = load_study(name, url)
    setup = StudySetup.from_dict(study_settings(study))
    trial = best_trial(study)
    config = TrialConfig.from_dict(trial.user_attrs["config"])
    seed = int(trial.user_attrs["seed"])
    n_epochs = int(trial.user_attrs["best_epoch"]) + 1
    _logger.info("Retraining trial %d (validation accuracy %.5f) for %d epochs on train+validation.", trial.number, trial.value, n_epochs)

    table, split = load_and_split(setup.data)
    prepared = prepare(table, split, final=True)
    data = DeviceData.from_arrays(prepared.x_train, prepared.y_train, None, None, n_classes=prepared.n_classes, device=torch_device)
    arch = architecture(config, prepared.n_inputs, prepared.n_classes)
    torch.manual_seed(seed)
    network = build_mlp(arch).to(torch_device)
    result = train(network, config, data, seed=seed, n_epochs=n_epochs)

    x_test = torch.as_tensor(prepared.x_test).to(torch_device)
    y_test = torch.as_tensor(prepared.y_test).to(torch_device)
    accuracy, log_loss = evaluate(network, x_test, y_test)
    test_metrics = {"accuracy": accuracy, "log_loss": log_loss, "n_rows": int(len(prepared.y_test))}
    _logger.info("Test accuracy %.5f on %d rows.", accuracy, len(prepared.y_test))

    description = _describe(study, url, trial, config, arch, prepared, seed, n_epochs, result.seconds, test_metrics, count_parameters(network))
    out = save_bundle(out_dir, network, description)
    _attach_to_study(study, url, out, trial.number, float(trial.value), test_metrics)  # type: ignore[arg-type]
    return FinalizeResult(out_dir=out, trial_number=trial.number, validation_accuracy=float(trial.value), test_metrics=test_metrics)  # type: ignore[arg-type]


def _describe(
    study: optuna.Study,
    url: str,
    trial: optuna.trial.FrozenTrial,
    config: TrialConfig,
    arch: dict[str, Any],
    prepared: Any,
    seed: int,
    n_epochs: int,
    seconds: float,
    test_metrics: dict[str, float],
    n_params: int,
) -> dict[str, Any]:
    return {
        "architecture": arch,
        "n_params": n_params,
        "preprocessing": prepared.preprocessing.to_dict(),
        "features": list(prepared.table.features),
        "encoded_features": prepared.preprocessing.encoded_names,
        "target": prepared.table.target,
        "classes": list(prepared.table.classes),
        "training": {**config.to_dict(), "epochs": n_epochs, "seed": seed, "seconds": round(seconds, 3), "rows": int(len(prepared.y_train))},
        "study": {"name": study.study_name, "storage": mask_password(url), "trial_number": trial.number, "trial_id": trial._trial_id},
        "data": {"source": prepared.table.source, "split": study_settings(study)["data"]["split"]},
        "metrics": {"validation": {"accuracy": trial.value}, "test": test_metrics},
        "versions": {
            "hpo": __version__,
            "torch": torch.__version__,
            "optuna": optuna.__version__,
            "python": platform.python_version(),
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _attach_to_study(study: optuna.Study, url: str, out: Path, trial_number: int, validation: float, test_metrics: dict[str, float]) -> None:
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    store_dir = artifact_dir(url, study.study_name)
    store_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(store_dir))
    artifact_ids = {}
    for name in (JSON_NAME, WEIGHTS_NAME):
        artifact_ids[name] = upload_artifact(study_or_trial=study, file_path=str(out / name), artifact_store=store)
    study.set_user_attr(ARTIFACTS_ATTR, str(store_dir))
    study.set_user_attr(
        FINAL_ATTR,
        {"path": str(out), "trial_number": trial_number, "validation_accuracy": validation, "test": test_metrics, "artifact_ids": artifact_ids},
    )
    _logger.info("Stored the bundle as artifacts of study %r in %s.", study.study_name, store_dir)
