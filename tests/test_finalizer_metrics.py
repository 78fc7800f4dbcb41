"""Finalize reports the study's metric, the majority baseline and per-class precision and recall."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import hpo
from hpo.cli import main


def test_finalize_balanced_accuracy_prints_baseline_and_recall(
    ocean_small_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = ["--space", "n_layers=1", "--space", "n_units=[16,64]", "--space", "class_weight=\"balanced\"", "--space", "lr=[0.003,0.03]", "--space", "batch_size=256"]
    code = main(["optimize", "--data", str(ocean_small_csv), "--target", "Quality", "--study", "ocean",
                 "--metric", "balanced_accuracy", "--n-trials", "2", "--max-epochs", "6", "--device", "cpu", *space])
    assert code == 0
    summary = capsys.readouterr().out
    assert "validation balanced_accuracy" in summary
    assert "(majority baseline 0.50000)" in summary

    code = main(["finalize", "--study", "ocean", "--out", str(tmp_path / "model"), "--device", "cpu"])

    assert code == 0
    out = capsys.readouterr().out
    assert "test balanced_accuracy" in out
    assert "majority baseline 0.50000" in out
    assert "class Bad: precision" in out
    assert "class Good: precision" in out
    description = json.loads((tmp_path / "model" / "model.json").read_text())
    metrics = description["metrics"]
    assert metrics["metric"] == "balanced_accuracy"
    assert metrics["test"]["balanced_accuracy"] > 0.6
    assert [row["class"] for row in metrics["per_class"]] == ["Bad", "Good"]
    assert metrics["per_class"][0]["recall"] > 0.3
    assert metrics["baseline"]["value"] == 0.5


def test_finalize_default_metric_keeps_accuracy(tmp_path: Path) -> None:
    hpo.optimize("iris", n_trials=2, space={"max_epochs": 3, "n_layers": 1}, device="cpu")

    result = hpo.finalize("iris", tmp_path / "model", device="cpu")

    assert result.metric == "accuracy"
    assert 0.0 <= result.test_metrics["accuracy"] <= 1.0
    assert set(result.test_metrics) == {"accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss", "n_rows"}
    assert len(result.per_class) == 3
