"""Each metric against scikit-learn's own implementation on fixed predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from hpo.exceptions import InputError
from hpo.metrics import baseline_score, compute_metric, get_metric, per_class_report


def _fixed_predictions(n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(n_classes)
    y = torch.randint(0, n_classes, (300,), generator=generator)
    logits = torch.randn(300, n_classes, generator=generator)
    logits[torch.arange(300), y] += 1.0  # better than chance, not perfect
    # Rounded logits make tied probabilities, which the AUC must rank like scikit-learn.
    return torch.round(logits * 2) / 2, y


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("accuracy", lambda y, p: skm.accuracy_score(y, p.argmax(1))),
        ("balanced_accuracy", lambda y, p: skm.balanced_accuracy_score(y, p.argmax(1))),
        ("f1_macro", lambda y, p: skm.f1_score(y, p.argmax(1), average="macro")),
        ("log_loss", lambda y, p: skm.log_loss(y, p, labels=list(range(p.shape[1])))),
        ("roc_auc", lambda y, p: skm.roc_auc_score(y, p[:, 1]) if p.shape[1] == 2 else skm.roc_auc_score(y, p, multi_class="ovr")),
    ],
)
def test_classification_metric_matches_sklearn(name: str, reference, n_classes: int) -> None:
    logits, y = _fixed_predictions(n_classes)
    proba = torch.softmax(logits.double(), dim=1).numpy()

    ours = compute_metric(name, logits, y)

    assert ours == pytest.approx(reference(y.numpy(), proba), abs=1e-9)


def test_f1_macro_unpredicted_class_counts_zero() -> None:
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 0, 1, 0]), 3).float()

    ours = compute_metric("f1_macro", logits, y)

    assert ours == pytest.approx(skm.f1_score(y.numpy(), [0, 0, 1, 0, 1, 0], average="macro", zero_division=0))


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("rmse", lambda y, p: skm.root_mean_squared_error(y, p)),
        ("mae", skm.mean_absolute_error),
        ("r2", skm.r2_score),
    ],
)
def test_regression_metric_matches_sklearn_in_target_units(name: str, reference) -> None:
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(200, generator=generator)
    predicted = y + 0.3 * torch.randn(200, generator=generator)
    scale, shift = 4.0, 30.0  # the engine sees (value - shift) / scale

    ours = compute_metric(name, predicted.reshape(-1, 1), y, y_scale=scale)

    expected = reference(y.double().numpy() * scale + shift, predicted.double().numpy() * scale + shift)
    assert ours == pytest.approx(expected, rel=1e-9)


def test_per_class_report_matches_sklearn() -> None:
    logits, y = _fixed_predictions(3)
    predicted = logits.argmax(1).numpy()

    report = per_class_report(logits, y, ["a", "b", "c"])

    precision, recall, _, support = skm.precision_recall_fscore_support(y.numpy(), predicted, zero_division=0)
    assert [row["class"] for row in report] == ["a", "b", "c"]
    assert [row["precision"] for row in report] == pytest.approx(precision.tolist())
    assert [row["recall"] for row in report] == pytest.approx(recall.tolist())
    assert [row["support"] for row in report] == support.tolist()


def test_baseline_score_predicts_training_majority() -> None:
    y_train = torch.tensor([1] * 90 + [0] * 10)
    y_val = torch.tensor([1] * 45 + [0] * 5)
    metric = get_metric

    assert baseline_score(metric("accuracy", "classification"), y_train, y_val, 2) == pytest.approx(0.9)
    assert baseline_score(metric("balanced_accuracy", "classification"), y_train, y_val, 2) == pytest.approx(0.5)
    assert baseline_score(metric("roc_auc", "classification"), y_train, y_val, 2) == pytest.approx(0.5)
    assert baseline_score(metric("log_loss", "classification"), y_train, y_val, 2) == pytest.approx(
        skm.log_loss(y_val.numpy(), np.tile([0.1, 0.9], (50, 1)))
    )


def test_get_metric_other_task_raises() -> None:
    with pytest.raises(InputError, match="rmse.*does not apply to classification"):
        get_metric("rmse", "classification")


def test_get_metric_direction_follows_metric() -> None:
    assert get_metric("log_loss", "classification").direction == "minimize"
    assert get_metric(None, "classification").direction == "maximize"
    assert get_metric(None, "regression").name == "rmse"
