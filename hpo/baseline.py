"""The input-blind baseline of a study's metric, and the warning for skewed classes."""

from __future__ import annotations

import logging
from typing import Any

import optuna

from hpo.engine import DeviceData
from hpo.metrics import BALANCED_METRICS, CLASSIFICATION, SKEWED_CLASS_SHARE, Metric, baseline_score, largest_class_share

_logger = logging.getLogger(__name__)

# Study user attribute with the baseline: {"metric", "value", "kind", "largest_class_share"}.
BASELINE_ATTR = "hpo_baseline"


def record_baseline(study: optuna.Study, parts: list[DeviceData], metric: Metric) -> dict[str, Any]:
    """Compute the baseline of ``metric`` on the validation part and store it on the study.

    With cross-validation, ``parts`` has one entry per fold and the baseline is the mean
    over folds; otherwise it has the one training/validation split.

    The baseline predicts the training part's majority class with its class shares as
    probabilities (kind ``majority``) or, for regression, the training mean (kind
    ``mean``) for every validation row: the score of a network that learned nothing
    from the features.

    Returns:
        The stored attribute value.
    """
    values = []
    for data in parts:
        if data.y_val is None:
            raise ValueError("record_baseline needs a validation part")
        values.append(baseline_score(metric, data.y_train, data.y_val, data.n_classes, y_scale=data.y_scale))
    value = sum(values) / len(values)
    data = parts[0]
    assert data.y_val is not None
    kind = "majority" if data.task == CLASSIFICATION else "mean"
    stored: dict[str, Any] = {"metric": metric.name, "value": round(value, 6), "kind": kind}
    if data.task == CLASSIFICATION:
        stored["largest_class_share"] = round(largest_class_share(data.y_val, data.n_classes), 6)
    if study.user_attrs.get(BASELINE_ATTR) != stored:
        study.set_user_attr(BASELINE_ATTR, stored)
    _logger.info("The %s baseline scores validation %s %.5f.", kind, metric.name, value)
    return stored


def warn_if_skewed(data: DeviceData, metric: Metric) -> bool:
    """Log one warning when plain accuracy is optimized on a training part dominated by one class.

    Returns:
        Whether the warning was logged.
    """
    if data.task != CLASSIFICATION or metric.name != "accuracy":
        return False
    share = largest_class_share(data.y_train, data.n_classes)
    if share <= SKEWED_CLASS_SHARE:
        return False
    _logger.warning(
        "The largest class contains %.1f%% of the training rows, so a network that always predicts it "
        "scores %.3f accuracy. Consider --metric %s, which rewards every class.",
        100 * share, share, " or ".join(BALANCED_METRICS[:2]),
    )
    return True


def stored_baseline(study: optuna.Study) -> dict[str, Any] | None:
    """Return the baseline stored on the study, or None for a study without one."""
    value = study.user_attrs.get(BASELINE_ATTR)
    return value if isinstance(value, dict) else None
