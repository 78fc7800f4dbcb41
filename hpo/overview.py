"""Summaries of stored studies for the terminal: ``hpo studies``, ``hpo show`` and the end of ``hpo optimize``."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from hpo.baseline import stored_baseline
from hpo.events import format_params, log_study_finished, used_params
from hpo.exceptions import StorageError, StudyError
from hpo.progress import count_trials
from hpo.run_plan import COUNTED_ATTR
from hpo.storage import (
    SETTINGS_ATTR,
    mask_password,
    open_read_only_storage,
    resolve_storage_url,
    study_dir,
    validate_study_name,
)

_logger = logging.getLogger(__name__)

# Trial user attributes that ``hpo show`` lists as metrics, in this order.
_TRIAL_METRICS = ("n_params", "epochs_run", "best_epoch", "train_seconds", "device")


@dataclass(frozen=True)
class StudyRow:
    """One study in a storage, with its trial counts by state and best trial."""

    storage: str
    study_name: str
    direction: str
    n_trials: int
    complete: int
    pruned: int
    failed: int
    running: int
    best_trial: int | None
    best_value: float | None

    def to_dict(self) -> dict[str, Any]:
        """Return the row as JSON-able values."""
        return asdict(self)


@dataclass(frozen=True)
class BestTrialView:
    """The best trial of a study as (name, value) rows of parameters and metrics."""

    study_name: str
    storage: str
    trial_number: int
    counts: dict[str, int]
    params: list[tuple[str, Any]]
    metrics: list[tuple[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """Return the view as JSON-able values."""
        return {
            "study": self.study_name,
            "storage": self.storage,
            "trial": self.trial_number,
            "counts": self.counts,
            "params": dict(self.params),
            "metrics": dict(self.metrics),
        }


def list_studies(storage: str | None = None) -> list[StudyRow]:
    """List the studies of one storage, or of every SQLite file in the default study folder.

    Nothing is created or changed: SQLite files are opened read-only. Without ``storage``,
    files in the study folder that are not Optuna storages are skipped with a warning.

    Args:
        storage: Storage URL. None lists ``$HPO_STUDY_DIR`` (default ``./study_db``).

    Raises:
        StorageError: When ``storage`` is given and cannot be read.
    """
    if storage is not None:
        return _studies_in(resolve_storage_url(storage, "unused"))
    rows: list[StudyRow] = []
    for path in sorted(study_dir().glob("*.db")):
        try:
            rows.extend(_studies_in(f"sqlite:///{path}"))
        except StorageError as err:
            _logger.warning("Skipped %s: %s", path, err)
    return rows


def show_best_trial(study_name: str, storage: str | None = None) -> BestTrialView:
    """Describe the best trial of a study: its parameters, validation metrics and final test metrics.

    Raises:
        StudyError: When the study is missing or has no completed trial.
        StorageError: When the storage cannot be read.
    """
    from hpo.finalizer import FINAL_ATTR, best_trial

    name = validate_study_name(study_name)
    url = resolve_storage_url(storage, name)
    study = load_study_read_only(name, url)
    trial = best_trial(study)
    params = [(key, _round(value)) for key, value in used_params(trial.params).items()]
    metrics: list[tuple[str, Any]] = [(f"validation {metric_name(study)}", _round(trial.value))]
    metrics += [(key, trial.user_attrs[key]) for key in _TRIAL_METRICS if key in trial.user_attrs]
    final = study.user_attrs.get(FINAL_ATTR)
    if isinstance(final, dict) and final.get("trial_number") == trial.number:
        for key, value in final.get("test", {}).items():
            metrics.append((label_test_metric(key), _round(value)))
        metrics.append(("bundle", final.get("path")))
    counts = _counts_dict(study)
    return BestTrialView(name, mask_password(url), trial.number, counts, params, metrics)


def load_study_read_only(study_name: str, storage_url: str) -> optuna.Study:
    """Load an existing study through a read-only storage (SQLite) without creating anything.

    Raises:
        StudyError: When no study of that name exists in the storage.
        StorageError: When the storage cannot be read.
    """
    storage = open_read_only_storage(storage_url)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as err:
        names = [s.study_name for s in storage.get_all_studies()]
        known = ", ".join(names) if names else "none"
        raise StudyError(f"study {study_name!r} not found in {mask_password(storage_url)}; studies there: {known}.") from err


def finish_run(study: optuna.Study) -> str:
    """Log the ``study_finished`` event and return a short summary of the study for stdout.

    The study reaches its goal when it has a COMPLETE trial with a finite value that
    meets the study's constraints.

    Raises:
        StudyError: When no trial of the study completed (every trial failed or was
            pruned), or no completed trial meets the constraints.
    """
    counts = _counts_dict(study)
    best = _best_or_none(study)
    log_study_finished(study, counts, best)
    trials = study.get_trials(deepcopy=False)
    # Trials lost with their worker, interrupted or cancelled are FAIL but do not count toward a goal.
    n_uncounted = sum(1 for t in trials if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get(COUNTED_ATTR, True) is False)
    n_waiting = sum(1 for t in trials if t.state == optuna.trial.TrialState.WAITING)
    uncounted = f", of which {n_uncounted} lost, interrupted or cancelled and not counted" if n_uncounted else ""
    lines = [
        f"Study {study.study_name!r} in {storage_url(study)}: {counts['n_trials']} trials ({counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['failed']} failed{uncounted})."
    ]
    if n_waiting:
        lines.append(f"{n_waiting} queued trials did not run (time limit or stop); the same command again runs them.")
    if best is None and counts["complete"]:
        raise StudyError(
            f"no completed trial of study {study.study_name!r} meets its constraints ({counts['complete']} completed); "
            "loosen the parameter or latency budget, or widen the search space."
        )
    if best is None:
        raise StudyError(
            f"no trial of study {study.study_name!r} completed ({counts['pruned']} pruned, {counts['failed']} failed); "
            "see the failure reasons with 'hpo report' or widen the search space."
        )
    baseline = stored_baseline(study)
    baseline_text = f" ({baseline.get('kind', 'majority')} baseline {baseline['value']:.5f})" if baseline else ""
    metric = metric_name(study)
    lines.append(f"Best trial {best.number}: validation {metric} {best.value:.5f}{baseline_text}; {format_params(best.params)}")
    if any(study.user_attrs.get(SETTINGS_ATTR, {}).get("constraints", {}).values()):
        from hpo.budget import pareto_front

        lines.append(f"Pareto front of validation {metric} against parameter count:")
        lines += [f"  trial {t.number}: {metric} {t.value:.5f}, {t.user_attrs['n_params']} parameters" for t in pareto_front(study)]
    return "\n".join(lines)


def metric_name(study: optuna.Study) -> str:
    """Return the name of the validation metric that the study optimizes (``accuracy`` for studies from before the choice)."""
    settings = study.user_attrs.get(SETTINGS_ATTR)
    return str(settings.get("metric", "accuracy")) if isinstance(settings, dict) else "accuracy"


def label_test_metric(key: str) -> str:
    """Return the label of a final model's test metric, e.g. ``test log loss`` for ``log_loss``."""
    return "test rows" if key == "n_rows" else f"test {key.replace('_', ' ')}"


def storage_url(study: optuna.Study) -> str:
    """Return the URL of the storage that contains ``study``, with its password masked."""
    storage: Any = study._storage
    # Optuna wraps an RDB storage in a cache that keeps the storage as ``_backend``.
    url = getattr(getattr(storage, "_backend", storage), "url", "an in-memory storage")
    return mask_password(str(url))


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Format rows as a plain-text table with left-aligned columns; None shows as ``-``."""
    cells = [[format_cell(value) for value in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _studies_in(url: str) -> list[StudyRow]:
    storage = open_read_only_storage(url)
    rows = []
    for frozen in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        study = optuna.load_study(study_name=frozen.study_name, storage=storage)
        counts = _counts_dict(study)
        best = _best_or_none(study)
        rows.append(
            StudyRow(
                storage=mask_password(url),
                study_name=frozen.study_name,
                direction=frozen.direction.name.lower(),
                n_trials=counts["n_trials"],
                complete=counts["complete"],
                pruned=counts["pruned"],
                failed=counts["failed"],
                running=counts["running"],
                best_trial=best.number if best else None,
                best_value=float(best.value) if best and best.value is not None else None,
            )
        )
    return rows


def _counts_dict(study: optuna.Study) -> dict[str, int]:
    counts = count_trials(study)
    return {
        "n_trials": len(study.get_trials(deepcopy=False)),
        "complete": counts.complete,
        "pruned": counts.pruned,
        "failed": counts.failed,
        "running": counts.running,
    }


def _best_or_none(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    from hpo.finalizer import best_trial

    try:
        return best_trial(study)
    except StudyError:
        return None


def _round(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.6g}")
    return value


def format_cell(value: Any) -> str:
    """Format one table cell: None as ``-``, floats with 5 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)
