"""Regression targets: detection, training, the bundle's target scaling and predicted values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hpo
from hpo.bundle import load_model, validate_description
from hpo.cli import main
from hpo.data import load_table
from hpo.exceptions import BundleError, InputError

_TINY = ["--space", "n_layers=1", "--space", "n_units=[8,32]", "--space", "batch_size=128", "--max-epochs", "4"]


def _linear_csv(folder: Path, n_rows: int = 400) -> Path:
    generator = np.random.default_rng(0)
    frame = pd.DataFrame({"a": generator.normal(size=n_rows), "b": generator.normal(size=n_rows)})
    frame["y"] = 100.0 + 20.0 * frame["a"] - 10.0 * frame["b"] + generator.normal(scale=1.0, size=n_rows)
    path = folder / "linear.csv"
    frame.to_csv(path, index=False)
    return path


def test_regression_ocean_salinity_runs_through_predict(
    ocean_small_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["optimize", "--data", str(ocean_small_csv), "--target", "Salinity", "--ignore-columns", "Quality",
                 "--study", "salinity", "--n-trials", "2", "--device", "cpu", *_TINY])
    assert code == 0
    captured = capsys.readouterr()
    assert "treats it as regression" in captured.err
    assert "validation rmse" in captured.out

    code = main(["finalize", "--study", "salinity", "--out", str(tmp_path / "model"), "--device", "cpu"])
    assert code == 0
    assert "r2" in capsys.readouterr().out

    new_rows = pd.read_csv(ocean_small_csv).drop(columns=["Salinity", "Quality"]).head(20)
    new_rows.to_csv(tmp_path / "new.csv", index=False)
    code = main(["predict", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "new.csv"), "--output", str(tmp_path / "out.csv")])

    assert code == 0
    predictions = pd.read_csv(tmp_path / "out.csv")
    assert list(predictions.columns) == ["prediction"]
    assert len(predictions) == 20
    assert predictions["prediction"].dtype == np.float64
    # Salinity in the ocean table lies within 30..42; an unscaled output would sit near 0.
    assert predictions["prediction"].between(25, 45).all()
    description = json.loads((tmp_path / "model" / "model.json").read_text())
    assert description["task"] == "regression"
    assert description["classes"] == []
    assert description["architecture"]["n_outputs"] == 1
    assert description["target_scaling"]["std"] > 0


def test_regression_learnable_target_beats_mean_baseline(tmp_path: Path) -> None:
    path = _linear_csv(tmp_path)

    study = hpo.optimize(str(path), "y", n_trials=2, metric="r2", pruner="none", device="cpu",
                         space={"n_layers": 1, "n_units": 32, "lr": 0.01, "batch_size": 32, "max_epochs": 15, "optimizer": "adam"})
    result = hpo.finalize(study.study_name, tmp_path / "model", device="cpu")

    assert study.user_attrs["hpo_settings"]["task"] == "regression"
    assert study.user_attrs["hpo_baseline"]["kind"] == "mean"
    assert study.best_value > 0.9
    assert result.test_metrics["r2"] > 0.9
    assert result.test_metrics["rmse"] < 5.0
    model = load_model(tmp_path / "model")
    frame = pd.read_csv(path)
    predicted = model.predict(frame)["prediction"].to_numpy()
    assert np.corrcoef(predicted, frame["y"])[0, 1] > 0.95
    scored = hpo.predict_frame(model, frame)
    assert scored.n_scored == len(frame)
    assert scored.accuracy is None
    assert scored.scores is not None
    assert scored.scores["r2"] > 0.9
    assert scored.scores["rmse"] == pytest.approx(np.sqrt(np.mean((predicted - frame["y"]) ** 2)), rel=1e-9)


@pytest.mark.parametrize(
    ("task", "expected"),
    [(None, "regression"), ("auto", "regression"), ("classification", "classification")],
)
def test_load_table_numeric_target_task(tmp_path: Path, task: str | None, expected: str) -> None:
    frame = pd.DataFrame({"a": range(100), "y": [i % 50 for i in range(100)]})
    frame.to_csv(tmp_path / "t.csv", index=False)

    table = load_table(str(tmp_path / "t.csv"), "y", task=task)

    assert table.task == expected


def test_load_table_few_numeric_values_stay_classes() -> None:
    assert load_table("synthetic").task == "classification"


def test_load_table_text_regression_target_raises(tmp_path: Path) -> None:
    pd.DataFrame({"a": [1, 2, 3, 4], "y": ["x", "y", "z", "w"]}).to_csv(tmp_path / "t.csv", index=False)

    with pytest.raises(InputError, match="regression target .y.*non-numeric"):
        load_table(str(tmp_path / "t.csv"), "y", task="regression")


def test_optimize_regression_metric_on_classes_raises() -> None:
    with pytest.raises(InputError, match="metric 'rmse' does not apply to classification"):
        hpo.optimize("iris", n_trials=1, metric="rmse", device="cpu")


def _regression_description() -> dict:
    return {
        "format": "hpo-model", "format_version": 1, "task": "regression", "target": "y", "classes": [],
        "architecture": {"n_inputs": 1, "hidden": [4], "activation": "relu", "dropout": 0.0, "n_outputs": 1},
        "preprocessing": {"numeric": [{"name": "a", "median": 0.0, "mean": 0.0, "scale": 1.0}], "categorical": []},
        "target_scaling": {"mean": 10.0, "std": 2.0},
        "weights": {"file": "model.pt", "sha256": "0" * 64},
    }


def test_validate_description_regression_accepts_valid() -> None:
    validate_description(_regression_description())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target_scaling": None}, "target_scaling must be an object"),
        ({"target_scaling": {"mean": 1.0, "std": 0.0}}, "target_scaling.std must be a finite number > 0"),
        ({"target_scaling": {"mean": float("nan"), "std": 1.0}}, "target_scaling.mean must be a finite number"),
        ({"classes": ["a", "b"]}, "classes must be empty"),
        ({"task": "ranking"}, "task must be one of"),
    ],
)
def test_validate_description_regression_invalid_raises(change: dict, message: str) -> None:
    description = {**_regression_description(), **change}

    with pytest.raises(BundleError, match=message):
        validate_description(description)


def test_validate_description_regression_two_outputs_raises() -> None:
    description = _regression_description()
    description["architecture"] = {**description["architecture"], "n_outputs": 2}

    with pytest.raises(BundleError, match="n_outputs must be 1 for a regression model"):
        validate_description(description)
