"""The learning task of a target column: detection, and checks of a regression target."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from hpo.exceptions import InputError
from hpo.metrics import CLASSIFICATION, REGRESSION, TASKS

_logger = logging.getLogger(__name__)

# A numeric target with more distinct values than this is taken as a regression target.
MAX_CLASSES_AUTO = 20
TASK_CHOICES = ("auto",) + TASKS


def resolve_task(task: str | None, values: pd.Series, target: str, origin: str) -> str:
    """Return ``task``, or detect it when ``task`` is None or ``auto``.

    A numeric (not boolean) target with more than ``MAX_CLASSES_AUTO`` distinct values is
    a regression target, and an INFO message reports it; any other target is classified.

    Raises:
        InputError: For an unknown task name.
    """
    if task not in (None, *TASK_CHOICES):
        raise InputError(f"unknown task {task!r}; choose from {', '.join(TASK_CHOICES)}.")
    if task in TASKS:
        return str(task)

    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    n_distinct = int(values.nunique(dropna=True))
    if numeric and n_distinct > MAX_CLASSES_AUTO:
        _logger.info(
            "Target %r in %s is numeric with %d distinct values, so hpo treats it as regression; "
            "pass --task classification to treat each value as a class.",
            target, origin, n_distinct,
        )
        return REGRESSION
    return CLASSIFICATION


def regression_values(values: pd.Series, target: str, origin: str) -> pd.Series:
    """Return the target as float64, checked to be finite and not constant.

    Raises:
        InputError: When the target contains text, infinite values or a single value.
    """
    try:
        numbers = pd.to_numeric(values).astype(np.float64)
    except (ValueError, TypeError) as err:
        raise InputError(f"regression target {target!r} in {origin} contains non-numeric values ({err}); use --task classification or clean the column.") from err
    if not np.isfinite(numbers.to_numpy()).all():
        raise InputError(f"regression target {target!r} in {origin} contains infinite values; remove those rows.")
    if numbers.nunique() < 2:
        raise InputError(f"regression target {target!r} in {origin} has a single value {numbers.iloc[0]!r}; there is nothing to learn.")
    return numbers
