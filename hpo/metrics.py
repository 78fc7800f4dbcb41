"""Validation and test metrics, computed with torch on the device of the outputs.

Classification metrics take logits of shape (rows, classes) and class indices; regression
metrics take outputs of shape (rows, 1) or (rows,) and targets in the scaled units the
network is trained on, and report errors in the target's own units.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from hpo.exceptions import InputError

_logger = logging.getLogger(__name__)

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)
# Share of the largest class above which plain accuracy mostly measures the class balance.
SKEWED_CLASS_SHARE = 0.8


@dataclass(frozen=True)
class Metric:
    """A named score with its task and whether higher values are better."""

    name: str
    task: str
    higher_is_better: bool

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        """The Optuna study direction that optimizes this metric."""
        return "maximize" if self.higher_is_better else "minimize"

    def is_better(self, value: float, reference: float | None) -> bool:
        """Return whether ``value`` beats ``reference`` (None counts as beaten)."""
        if reference is None:
            return True
        return value > reference if self.higher_is_better else value < reference


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", CLASSIFICATION, True),
    "balanced_accuracy": Metric("balanced_accuracy", CLASSIFICATION, True),
    "f1_macro": Metric("f1_macro", CLASSIFICATION, True),
    "roc_auc": Metric("roc_auc", CLASSIFICATION, True),
    "log_loss": Metric("log_loss", CLASSIFICATION, False),
    "rmse": Metric("rmse", REGRESSION, False),
    "mae": Metric("mae", REGRESSION, False),
    "r2": Metric("r2", REGRESSION, True),
}
DEFAULT_METRIC = {CLASSIFICATION: "accuracy", REGRESSION: "rmse"}
# Metrics that still rank models sensibly when one class dominates the rows.
BALANCED_METRICS = ("balanced_accuracy", "f1_macro", "roc_auc")


def get_metric(name: str | None, task: str) -> Metric:
    """Return the metric called ``name``, or the task's default metric when ``name`` is None.

    Raises:
        InputError: For an unknown name or a metric of the other task.
    """
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}.")
    if name is None:
        return METRICS[DEFAULT_METRIC[task]]
    metric = METRICS.get(name)
    allowed = [m.name for m in METRICS.values() if m.task == task]
    if metric is None or metric.task != task:
        raise InputError(f"metric {name!r} does not apply to {task}; choose from {', '.join(allowed)}.")
    return metric


def compute_metric(name: str, outputs: torch.Tensor, y: torch.Tensor, *, y_scale: float = 1.0) -> float:
    """Compute one metric of ``outputs`` against ``y``.

    Args:
        name: A key of ``METRICS``.
        outputs: Logits (rows, classes) for classification; predictions (rows, 1) or (rows,)
            for regression, in scaled units.
        y: Class indices (int64) or scaled targets (float), one per row.
        y_scale: Standard deviation the regression targets were divided by; RMSE and MAE
            are multiplied by it so they are in the target's units. Ignored for classification.

    Returns:
        The metric as a Python float.
    """
    outputs = outputs.detach()
    if name == "accuracy":
        return float((outputs.argmax(dim=1) == y).double().mean())
    if name == "log_loss":
        return float(nn.functional.cross_entropy(outputs.double(), y))
    if name == "roc_auc":
        return _roc_auc(torch.softmax(outputs.double(), dim=1), y)
    if name in ("balanced_accuracy", "f1_macro"):
        confusion = confusion_matrix(outputs.argmax(dim=1), y, outputs.shape[1])
        return _balanced_accuracy(confusion) if name == "balanced_accuracy" else _f1_macro(confusion)

    predicted = outputs.reshape(-1).double()
    target = y.reshape(-1).double()
    if name == "rmse":
        return float(torch.sqrt(torch.mean((predicted - target) ** 2))) * y_scale
    if name == "mae":
        return float(torch.mean(torch.abs(predicted - target))) * y_scale
    if name == "r2":
        residual = torch.sum((target - predicted) ** 2)
        total = torch.sum((target - target.mean()) ** 2)
        # A constant target has no variance to explain; scikit-learn returns 1.0 for a
        # perfect fit of it and 0.0 otherwise.
        if float(total) == 0.0:
            return 1.0 if float(residual) == 0.0 else 0.0
        return float(1.0 - residual / total)
    raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")


def compute_metrics(task: str, outputs: torch.Tensor, y: torch.Tensor, *, y_scale: float = 1.0) -> dict[str, float]:
    """Compute every metric of ``task``, keyed by name."""
    return {m.name: compute_metric(m.name, outputs, y, y_scale=y_scale) for m in METRICS.values() if m.task == task}


def confusion_matrix(predicted: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Return counts of shape (classes, classes): row = true class, column = predicted class."""
    flat = torch.bincount(y * n_classes + predicted, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).double()


def per_class_report(outputs: torch.Tensor, y: torch.Tensor, classes: list[object] | tuple[object, ...]) -> list[dict[str, object]]:
    """Return precision, recall and support of each class, in the order of ``classes``.

    A class that is never predicted has precision 0.0, as in scikit-learn's default.
    """
    confusion = confusion_matrix(outputs.argmax(dim=1), y, len(classes))
    true_positives = confusion.diagonal()
    predicted = confusion.sum(dim=0)
    actual = confusion.sum(dim=1)
    report = []
    for i, label in enumerate(classes):
        report.append({
            "class": label,
            "precision": float(true_positives[i] / predicted[i]) if predicted[i] > 0 else 0.0,
            "recall": float(true_positives[i] / actual[i]) if actual[i] > 0 else 0.0,
            "support": int(actual[i]),
        })
    return report


def baseline_outputs(y_train: torch.Tensor, n_rows: int, n_classes: int) -> torch.Tensor:
    """Return the outputs of a model that ignores its input, for ``n_rows`` rows.

    For classification the logits are the log of the training class shares, so the
    prediction is the majority class and the probabilities are the class priors. For
    regression every prediction is the training mean.
    """
    if y_train.is_floating_point():
        return y_train.double().mean().expand(n_rows, 1)
    counts = torch.bincount(y_train, minlength=n_classes).double().clamp_min(1.0)
    log_prior = torch.log(counts / counts.sum())
    return log_prior.expand(n_rows, n_classes)


def baseline_score(metric: Metric, y_train: torch.Tensor, y_val: torch.Tensor, n_classes: int, *, y_scale: float = 1.0) -> float:
    """Return ``metric`` on ``y_val`` of the input-blind model from ``baseline_outputs``."""
    outputs = baseline_outputs(y_train, len(y_val), n_classes).to(y_val.device)
    return compute_metric(metric.name, outputs, y_val, y_scale=y_scale)


def largest_class_share(y: torch.Tensor, n_classes: int) -> float:
    """Return the share of rows in the most frequent class."""
    counts = torch.bincount(y, minlength=n_classes)
    return float(counts.max()) / max(1, int(counts.sum()))


def _balanced_accuracy(confusion: torch.Tensor) -> float:
    # Mean recall over the classes present in y, as scikit-learn computes it.
    actual = confusion.sum(dim=1)
    present = actual > 0
    recall = confusion.diagonal()[present] / actual[present]
    return float(recall.mean())


def _f1_macro(confusion: torch.Tensor) -> float:
    # F1 = 2TP / (2TP + FP + FN), averaged over classes that occur in y or in the
    # predictions, as scikit-learn's f1_score(average="macro") does.
    true_positives = confusion.diagonal()
    predicted = confusion.sum(dim=0)
    actual = confusion.sum(dim=1)
    denominator = predicted + actual
    seen = denominator > 0
    return float((2 * true_positives[seen] / denominator[seen]).mean())


def _roc_auc(proba: torch.Tensor, y: torch.Tensor) -> float:
    # Binary: AUC of the second class's probability. Multiclass: one-vs-rest AUC of each
    # class, averaged over classes (scikit-learn's multi_class="ovr", average="macro").
    n_classes = proba.shape[1]
    columns = [1] if n_classes == 2 else range(n_classes)
    aucs = []
    for k in columns:
        positive = y == k
        n_positive = int(positive.sum())
        n_negative = len(y) - n_positive
        if n_positive == 0 or n_negative == 0:
            continue
        ranks = _average_ranks(proba[:, k])
        # Mann-Whitney U of the positives, normalized to [0, 1]; ties count one half.
        u = ranks[positive].sum() - n_positive * (n_positive + 1) / 2
        aucs.append(float(u) / (n_positive * n_negative))
    if not aucs:
        raise ValueError("roc_auc needs rows of at least two classes")
    return sum(aucs) / len(aucs)


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Return 1-based ranks of ``values``, with tied values sharing their mean rank."""
    sorted_values, order = torch.sort(values)
    _, group, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, dim=0).double()
    first = last - counts.double() + 1.0
    mean_rank = (first + last) / 2.0
    ranks = torch.empty_like(mean_rank[group])
    ranks[order] = mean_rank[group]
    return ranks
