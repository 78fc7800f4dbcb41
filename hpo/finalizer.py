"""Retrain the best trial's configuration on train+validation, test it once, and save the bundle."""

from __future__ import annotations

import logging
import math
import platform
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch

from hpo import __version__
from hpo.annotate import final_model_note, save_final_model_note, save_learning_curves
from hpo.baseline import stored_baseline
from hpo.bundle import JSON_NAME, WEIGHTS_NAME, check_output_folder, save_bundle
from hpo.device import resolve_device
from hpo.engine import predict_logits
from hpo.exceptions import InputError, StudyError
from hpo.fingerprint import check_study_data
from hpo.metrics import CLASSIFICATION, METRICS, REGRESSION, compute_metrics, per_class_report
from hpo.model import count_parameters
from hpo.prepare import load_and_split, prepare
from hpo.retrain import device_data, fit_network
from hpo.space import TrialConfig
from hpo.spread import MarginCheck, SeedSpread, check_margin, measure_spread
from hpo.storage import (
    ARTIFACTS_ATTR,
    artifact_dir,
    load_study,
    mask_password,
    resolve_storage_url,
    study_settings,
    validate_study_name,
)
from hpo.storage_errors import translated_storage_errors
from hpo.study import StudySetup

_logger = logging.getLogger(__name__)

FINAL_ATTR = "hpo_final_model"


@dataclass(frozen=True)
class FinalizeResult:
    """Bundle folder, chosen trial and test scores of a finalized model.

    Attributes:
        out_dir: The bundle folder.
        trial_number: The trial whose configuration was retrained.
        metric: Name of the study's metric.
        validation_score: The trial's validation value of ``metric``.
        test_metrics: Every metric of the task on the test part, plus ``n_rows``.
        baseline: The study's majority baseline (``metric``, ``value``), or None for a
            study without one.
        per_class: Precision, recall and support of each class on the test part
            (classification only).
        spreads: Test values of the best trial's configuration over seeds, then of the
            other top trials; empty unless ``n_seeds`` > 1.
        margin: The best trial's lead over the runner-up against the seed noise; None
            unless ``top_k`` > 1.
    """

    out_dir: Path
    trial_number: int
    metric: str
    validation_score: float
    test_metrics: dict[str, float]
    baseline: dict[str, Any] | None = None
    per_class: list[dict[str, Any]] | None = None
    spreads: list[SeedSpread] = field(default_factory=list)
    margin: MarginCheck | None = None


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """Return the best COMPLETE trial with a finite value that meets its constraints.

    Best follows the study direction; ties go to the lowest trial number.

    Raises:
        StudyError: When the study has no such trial.
    """
    return ranked_trials(study, 1)[0]


def ranked_trials(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    """Return up to ``n`` COMPLETE, feasible trials with finite values, best first.

    Raises:
        StudyError: When the study has no such trial.
    """
    candidates = [
        t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value) and "config" in t.user_attrs
        and all(value <= 0.0 for value in t.constraints.values())
    ]
    if not candidates:
        raise StudyError(
            f"study {study.study_name!r} has no completed trial that meets its constraints yet; "
            f"run 'hpo optimize --study {study.study_name}' first."
        )
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(candidates, key=lambda t: (sign * float(t.value), t.number))[:n]  # type: ignore[arg-type]


def finalize(
    study_name: str,
    out_dir: str | Path,
    *,
    storage: str | None = None,
    device: str = "auto",
    n_seeds: int = 1,
    top_k: int = 1,
    data: str | Path | None = None,
) -> FinalizeResult:
    """Retrain the best trial on train+validation, evaluate once on test, and save the bundle.

    The network is trained for the best trial's best-epoch count with the trial's own
    seed, on preprocessing refitted to train+validation. The bundle is also stored on the
    study as Optuna artifacts, and a summary as the study attribute ``hpo_final_model``.

    With ``n_seeds`` > 1 the configuration is trained again with further seeds, and the
    mean and standard deviation of the test metric go into the result and the bundle;
    the saved network stays the one trained with the trial's own seed. With ``top_k`` > 1
    the next best trials get the same treatment, and the result tells whether the best
    trial's lead is larger than the seed noise.

    Args:
        study_name: The study to read.
        out_dir: Folder for ``model.json`` and ``model.pt`` (created if missing).
        storage: Storage URL; defaults to the study's SQLite file under ``study_db/``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        n_seeds: Training runs per configuration for the seed spread, >= 1.
        top_k: Best trials to retrain and compare, >= 1; above 1 it needs ``n_seeds`` >= 2.
        data: The study's data file at a new path, for a file that was moved since the
            study was created. Its content must match the study's fingerprint.

    Returns:
        The bundle folder, the chosen trial and its test metrics.

    Raises:
        InputError: For ``n_seeds`` or ``top_k`` out of range.
        StudyError: When the study is missing or has no completed trial.
        StorageError: When the storage cannot be opened.
    """
    if n_seeds < 1 or top_k < 1:
        raise InputError(f"--seeds and --top-k must be >= 1; got seeds={n_seeds}, top_k={top_k}.")
    if top_k > 1 and n_seeds < 2:
        raise InputError(f"--top-k {top_k} compares trials against the seed noise, so it needs --seeds 2 or more.")
    name = validate_study_name(study_name)
    check_output_folder(out_dir)
    url = resolve_storage_url(storage, name)
    torch_device = resolve_device(device)
    study = load_study(name, url)
    setup = StudySetup.from_dict(study_settings(study))
    if data is not None:
        setup = replace(setup, data=replace(setup.data, source=str(Path(data).expanduser().resolve())))
    metric = METRICS[setup.metric]
    trial = best_trial(study)
    config = TrialConfig.from_dict(trial.user_attrs["config"])
    seed = int(trial.user_attrs["seed"])
    n_epochs = int(trial.user_attrs["best_epoch"]) + 1
    _logger.info("Retraining trial %d (validation %s %.5f) for %d epochs on train+validation.", trial.number, metric.name, trial.value, n_epochs)

    table, split = load_and_split(setup.data)
    check_study_data(study.user_attrs, name, table, setup.data.split, split)
    prepared = prepare(table, split, final=True)
    data = device_data(prepared, torch_device)
    network, result, arch = fit_network(data, config, seed=seed, metric=metric, n_epochs=n_epochs)

    x_test = torch.as_tensor(prepared.x_test).to(torch_device)
    y_test = torch.as_tensor(prepared.y_test).to(torch_device)
    outputs = predict_logits(network, x_test)
    test_metrics: dict[str, Any] = {**compute_metrics(data.task, outputs, y_test, y_scale=data.y_scale), "n_rows": int(len(prepared.y_test))}
    per_class = per_class_report(outputs, y_test, prepared.table.classes) if data.task == CLASSIFICATION else None
    _logger.info("Test %s %.5f on %d rows.", metric.name, test_metrics[metric.name], len(prepared.y_test))

    spreads: list[SeedSpread] = []
    margin = None
    if n_seeds > 1:
        known = {seed: float(test_metrics[metric.name])}
        spreads = [
            measure_spread(candidate, data, x_test, y_test, metric, n_seeds, known=known if candidate.number == trial.number else None)
            for candidate in ranked_trials(study, top_k)
        ]
        margin = check_margin(spreads, metric)

    baseline = stored_baseline(study)
    evaluation: dict[str, Any] = {
        "metric": metric.name,
        "validation": {metric.name: trial.value},
        "test": test_metrics,
        "baseline": baseline,
        "per_class": per_class,
    }
    if spreads:
        evaluation["seed_spread"] = spreads[0].to_dict()
    if len(spreads) > 1:
        evaluation["top_k"] = [spread.to_dict() for spread in spreads]
    if margin is not None:
        evaluation["margin"] = margin.to_dict()
    description = _describe(study, url, trial, config, arch, prepared, seed, n_epochs, result.seconds, evaluation, count_parameters(network))
    out = save_bundle(out_dir, network, description)
    with translated_storage_errors(url):
        _attach_to_study(study, url, out, trial.number, float(trial.value), test_metrics, evaluation.get("seed_spread"))  # type: ignore[arg-type]
    return FinalizeResult(
        out_dir=out, trial_number=trial.number, metric=metric.name, validation_score=float(trial.value),  # type: ignore[arg-type]
        test_metrics=test_metrics, baseline=baseline, per_class=per_class, spreads=spreads, margin=margin,
    )


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
    evaluation: dict[str, Any],
    n_params: int,
) -> dict[str, Any]:
    return {
        "architecture": arch,
        "n_params": n_params,
        "preprocessing": prepared.preprocessing.to_dict(),
        "features": list(prepared.table.features),
        "encoded_features": prepared.preprocessing.encoded_names,
        "target": prepared.table.target,
        "task": prepared.task,
        "classes": list(prepared.table.classes),
        **({"target_scaling": {"mean": prepared.target_mean, "std": prepared.target_std}} if prepared.task == REGRESSION else {}),
        "training": {**config.to_dict(), "epochs": n_epochs, "seed": seed, "seconds": round(seconds, 3), "rows": int(len(prepared.y_train))},
        "study": {"name": study.study_name, "storage": mask_password(url), "trial_number": trial.number, "trial_id": trial._trial_id},
        "data": {"source": prepared.table.source, "split": study_settings(study)["data"]["split"]},
        "metrics": evaluation,
        "versions": {
            "hpo": __version__,
            "torch": torch.__version__,
            "optuna": optuna.__version__,
            "python": platform.python_version(),
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _attach_to_study(
    study: optuna.Study,
    url: str,
    out: Path,
    trial_number: int,
    validation: float,
    test_metrics: dict[str, float],
    seed_spread: dict[str, Any] | None = None,
) -> None:
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    store_dir = artifact_dir(url, study.study_name)
    store_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(store_dir))
    artifact_ids = {}
    for name in (JSON_NAME, WEIGHTS_NAME):
        artifact_ids[name] = upload_artifact(study_or_trial=study, file_path=str(out / name), artifact_store=store)
    study.set_user_attr(ARTIFACTS_ATTR, str(store_dir))
    metric = str(study_settings(study).get("metric", "accuracy"))
    save_final_model_note(study, final_model_note(metric, trial_number, validation, test_metrics, out, artifact_ids))
    save_learning_curves(study)
    final: dict[str, Any] = {"path": str(out), "trial_number": trial_number, "validation_score": validation, "test": test_metrics, "artifact_ids": artifact_ids}
    if seed_spread is not None:
        final["seed_spread"] = seed_spread
    study.set_user_attr(FINAL_ATTR, final)
    _logger.info("Stored the bundle as artifacts of study %r in %s.", study.study_name, store_dir)
