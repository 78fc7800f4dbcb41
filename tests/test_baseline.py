"""Metric choice on a study: baseline stored, skew warning, direction and resuming."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

import hpo
from hpo.baseline import BASELINE_ATTR
from hpo.exceptions import StudyError

_TINY = {"max_epochs": 3, "n_layers": 1, "n_units": [8, 32], "batch_size": 64}


def _skewed_csv(folder: Path, share: float) -> Path:
    generator = np.random.default_rng(0)
    n_rows = 500
    labels = np.where(generator.random(n_rows) < share, "common", "rare")
    frame = pd.DataFrame({"a": generator.normal(size=n_rows), "b": generator.normal(size=n_rows), "label": labels})
    frame.loc[frame.label == "rare", "a"] += 2.0
    path = folder / "skewed.csv"
    frame.to_csv(path, index=False)
    return path


def test_optimize_skewed_accuracy_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _skewed_csv(tmp_path, share=0.9)

    with caplog.at_level(logging.WARNING, logger="hpo"):
        study = hpo.optimize(str(path), "label", n_trials=2, space=_TINY, device="cpu")

    warnings = [r for r in caplog.records if "largest class" in r.getMessage()]
    assert len(warnings) == 1
    assert "balanced_accuracy" in warnings[0].getMessage()
    baseline = study.user_attrs[BASELINE_ATTR]
    assert baseline["metric"] == "accuracy"
    assert baseline["value"] == pytest.approx(baseline["largest_class_share"])
    assert baseline["value"] > 0.8


def test_optimize_balanced_metric_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _skewed_csv(tmp_path, share=0.9)

    with caplog.at_level(logging.WARNING, logger="hpo"):
        study = hpo.optimize(str(path), "label", n_trials=2, space=_TINY, metric="balanced_accuracy", device="cpu")

    assert not [r for r in caplog.records if "largest class" in r.getMessage()]
    assert study.user_attrs[BASELINE_ATTR]["value"] == pytest.approx(0.5)


def test_optimize_even_classes_do_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _skewed_csv(tmp_path, share=0.6)

    with caplog.at_level(logging.WARNING, logger="hpo"):
        hpo.optimize(str(path), "label", n_trials=1, space=_TINY, device="cpu")

    assert not [r for r in caplog.records if "largest class" in r.getMessage()]


def test_optimize_log_loss_minimizes() -> None:
    study = hpo.optimize("iris", n_trials=3, space=_TINY, metric="log_loss", device="cpu")

    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert study.best_value == min(values)
    assert study.user_attrs["hpo_settings"]["metric"] == "log_loss"
    assert study.user_attrs["hpo_settings"]["direction"] == "minimize"


def test_optimize_resume_other_metric_raises() -> None:
    hpo.optimize("iris", study_name="iris_metric", n_trials=1, space=_TINY, metric="f1_macro", device="cpu")

    with pytest.raises(StudyError, match="optimizes f1_macro, not accuracy"):
        hpo.optimize(study_name="iris_metric", n_trials=1, metric="accuracy", device="cpu")
    resumed = hpo.optimize(study_name="iris_metric", n_trials=1, device="cpu")
    assert len(resumed.trials) == 2
