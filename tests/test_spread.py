"""Seed spread in finalize, and reproducing a trial's validation score."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

import hpo
from hpo.cli import main
from hpo.exceptions import InputError
from hpo.finalizer import ranked_trials
from hpo.retrain import reproduce_trial
from hpo.spread import SeedSpread, check_margin, spread_seeds
from hpo.metrics import METRICS

_TINY = {"max_epochs": 4, "n_layers": 1, "n_units": [8, 32], "batch_size": 32}


def test_reproduce_trial_cpu_matches_stored_value() -> None:
    study = hpo.optimize("wine", n_trials=3, space={**_TINY, "dropout": [0.1, 0.3]}, metric="log_loss", pruner="none", device="cpu")

    for trial in study.trials:
        stored, again = reproduce_trial("wine", trial.number, device="cpu")
        assert again == pytest.approx(stored, rel=1e-6, abs=1e-9)


def test_reproduce_trial_cv_matches_stored_value() -> None:
    study = hpo.optimize("iris", n_trials=2, cv=3, space=_TINY, device="cpu")

    trial = study.best_trial
    stored, again = reproduce_trial("iris", trial.number, device="cpu")
    assert again == pytest.approx(stored, rel=1e-6, abs=1e-9)


def test_finalize_seeds_prints_mean_std_and_records_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hpo.optimize("iris", n_trials=2, space=_TINY, device="cpu")

    code = main(["finalize", "--study", "iris", "--out", str(tmp_path / "model"), "--device", "cpu", "--seeds", "3"])

    assert code == 0
    out = capsys.readouterr().out
    assert " over 3 seeds: test accuracy " in out
    assert " ± " in out
    spread = json.loads((tmp_path / "model" / "model.json").read_text())["metrics"]["seed_spread"]
    assert len(spread["values"]) == 3
    assert spread["seeds"] == spread_seeds(spread["seeds"][0], 3)
    assert spread["mean"] == pytest.approx(sum(spread["values"]) / 3, abs=1e-6)
    assert spread["std"] >= 0.0
    study = optuna.load_study(study_name="iris", storage="sqlite:///study_db/iris.db")
    assert study.user_attrs["hpo_final_model"]["seed_spread"] == spread


def test_finalize_seeds_first_run_is_saved_model(tmp_path: Path) -> None:
    hpo.optimize("iris", n_trials=2, space=_TINY, device="cpu")

    result = hpo.finalize("iris", tmp_path / "model", device="cpu", n_seeds=2)

    assert result.spreads[0].values[0] == result.test_metrics["accuracy"]
    assert result.spreads[0].trial_number == result.trial_number


def test_finalize_top_k_compares_margin_with_noise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = hpo.optimize("iris", n_trials=4, space=_TINY, pruner="none", device="cpu")

    code = main(["finalize", "--study", "iris", "--out", str(tmp_path / "model"), "--device", "cpu", "--seeds", "2", "--top-k", "3"])

    assert code == 0
    out = capsys.readouterr().out
    top = [t.number for t in ranked_trials(study, 3)]
    for number in top:
        assert f"Trial {number} over 2 seeds" in out
    assert "than the seed noise (pooled std" in out
    metrics = json.loads((tmp_path / "model" / "model.json").read_text())["metrics"]
    assert [entry["trial_number"] for entry in metrics["top_k"]] == top
    assert metrics["margin"]["winner"] == top[0]


def test_finalize_top_k_without_seeds_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="needs --seeds 2 or more"):
        hpo.finalize("iris", tmp_path / "model", top_k=2)


@pytest.mark.parametrize(
    ("winner", "other", "larger"),
    [
        ((0.90, 0.91, 0.92), (0.80, 0.81, 0.82), True),
        ((0.90, 0.80, 0.95), (0.88, 0.86, 0.83), False),
    ],
)
def test_check_margin_against_pooled_std(winner: tuple, other: tuple, larger: bool) -> None:
    spreads = [SeedSpread(1, 0.9, (1, 2, 3), winner), SeedSpread(2, 0.8, (4, 5, 6), other)]

    check = check_margin(spreads, METRICS["accuracy"])

    assert check is not None
    assert check.runner_up == 2
    assert check.is_larger_than_noise is larger


def test_check_margin_minimized_metric_signs_lead() -> None:
    spreads = [SeedSpread(1, 0.3, (1, 2), (0.30, 0.31)), SeedSpread(2, 0.4, (3, 4), (0.50, 0.52))]

    check = check_margin(spreads, METRICS["log_loss"])

    assert check is not None
    assert check.margin == pytest.approx(0.205)
    assert check.is_larger_than_noise
