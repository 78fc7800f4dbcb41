"""Trial events (started, finished, pruned, failed) as log records, and a JSON log formatter for them.

Each event is a record on the ``hpo.events`` logger with two extra attributes: ``event``
(the event name) and ``fields`` (a dict of JSON-able values). The text formatter shows
the message; ``JsonFormatter`` writes one JSON object per record, with the fields.
Levels: a started trial is DEBUG, a finished or pruned trial INFO, a failed trial WARNING.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import optuna

_logger = logging.getLogger(__name__)

TRIAL_STARTED = "trial_started"
TRIAL_FINISHED = "trial_finished"
TRIAL_PRUNED = "trial_pruned"
TRIAL_FAILED = "trial_failed"
STUDY_FINISHED = "study_finished"
# Attribute names of the JSON object that the formatter itself fills in.
_RESERVED_KEYS = ("time", "level", "logger", "event", "message")
_REASON_ATTR = "reason"


def with_start_event(objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
    """Wrap an objective so that every trial logs a ``trial_started`` event before it runs."""

    def objective_with_event(trial: optuna.Trial) -> float:
        _emit(logging.DEBUG, TRIAL_STARTED, f"Trial {trial.number} started.", {"study": trial.study.study_name, "trial": trial.number, **_worker()})
        return objective(trial)

    return objective_with_event


def log_trial_end(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Log a ``trial_finished``, ``trial_pruned`` or ``trial_failed`` event; an Optuna callback."""
    fields: dict[str, Any] = {
        "study": study.study_name,
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "duration_s": _duration_s(trial),
        "epochs_run": trial.user_attrs.get("epochs_run"),
        **_worker(),
    }
    state = trial.state
    if state == optuna.trial.TrialState.COMPLETE:
        best = _best_trial(study)
        fields.update(value=_finite_or_none(trial.value), params=dict(trial.params))
        fields.update(best_trial=best.number if best else None, best_value=_finite_or_none(best.value) if best else None)
        message = f"Trial {trial.number} finished with value {_format_value(trial.value)} in {fields['duration_s']} s"
        if best is not None:
            message += f"; best is trial {best.number} ({_format_value(best.value)})"
        _emit(logging.INFO, TRIAL_FINISHED, f"{message}; {format_params(trial.params)}", fields)
    elif state == optuna.trial.TrialState.PRUNED:
        fields.update(step=trial.last_step, reason=trial.user_attrs.get(_REASON_ATTR, "pruned"))
        _emit(logging.INFO, TRIAL_PRUNED, f"Trial {trial.number} {fields['reason']}.", fields)
    elif state == optuna.trial.TrialState.FAIL:
        fields.update(reason=trial.user_attrs.get(_REASON_ATTR, "unknown reason"))
        _emit(logging.WARNING, TRIAL_FAILED, f"Trial {trial.number} failed: {fields['reason']}", fields)


def log_study_finished(study: optuna.Study, counts: dict[str, int], best: optuna.trial.FrozenTrial | None) -> None:
    """Log a ``study_finished`` event with the study's trial counts by state and its best trial."""
    fields: dict[str, Any] = {
        "study": study.study_name,
        **counts,
        "best_trial": best.number if best else None,
        "best_value": _finite_or_none(best.value) if best else None,
    }
    best_text = f"best is trial {best.number} ({_format_value(best.value)})" if best else "no trial completed"
    _emit(logging.INFO, STUDY_FINISHED, f"Study {study.study_name!r} has {counts.get('n_trials', 0)} trials; {best_text}.", fields)


def format_params(params: dict[str, Any]) -> str:
    """Format the used trial parameters as ``name=value`` pairs, floats with 4 significant digits."""
    parts = []
    for key, value in used_params(params).items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def used_params(params: dict[str, Any]) -> dict[str, Any]:
    """Return the parameters without the widths of layers beyond ``n_layers``, which the network does not use."""
    n_layers = params.get("n_layers")
    if not isinstance(n_layers, int):
        return dict(params)
    return {key: value for key, value in params.items() if not _is_unused_width(key, n_layers)}


class JsonFormatter(logging.Formatter):
    """Format each log record as one JSON object on one line.

    Keys: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``event`` (``log`` for records
    that are not events), ``message``, then the event's fields. A record with an
    exception adds ``exception`` with the traceback text.
    """

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            if key not in _RESERVED_KEYS:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, allow_nan=False)


def _is_unused_width(name: str, n_layers: int) -> bool:
    index = name.removeprefix("n_units_l")
    return name.startswith("n_units_l") and index.isdigit() and int(index) >= n_layers


def _emit(level: int, event: str, message: str, fields: dict[str, Any]) -> None:
    _logger.log(level, message, extra={"event": event, "fields": fields})


def _best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def _duration_s(trial: optuna.trial.FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return round((trial.datetime_complete - trial.datetime_start).total_seconds(), 3)


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN or infinity, so a non-finite value is written as null.
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _format_value(value: float | None) -> str:
    return "none" if value is None else f"{value:.5f}"


def _worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}
