"""hpo's starting configuration as the first trial of a new study."""

from __future__ import annotations

from pathlib import Path

import pytest

import hpo
from hpo.cli import main
from hpo.device import THREADS_ENV
from hpo.exceptions import InputError
from hpo.warm_start import WARM_START_ATTR
from hpo.starting_point import STARTING_POINT_ATTR
from hpo.storage import load_study, resolve_storage_url

SHORT = {"max_epochs": 2}


def test_starting_point_runs_first() -> None:
    study = hpo.optimize(n_trials=3, space=SHORT, device="cpu")

    first = study.trials[0]
    assert first.user_attrs[STARTING_POINT_ATTR] is True
    assert first.params["n_layers"] == 2
    assert (first.params["n_units_l0"], first.params["n_units_l1"]) == (64, 64)
    assert first.params["optimizer"] == "adam"
    assert first.params["lr"] == 3e-3
    assert first.params["batch_size"] == 256
    assert first.user_attrs["config"]["class_weight"] == "none"
    assert len(study.trials) == 3
    assert not any(STARTING_POINT_ATTR in t.user_attrs for t in study.trials[1:])


def test_starting_point_clipped_to_space() -> None:
    study = hpo.optimize(n_trials=1, space={**SHORT, "n_units": [8, 32], "lr": [0.01, 0.1]}, device="cpu")

    first = study.trials[0]
    assert first.user_attrs[STARTING_POINT_ATTR] is True
    assert first.params["batch_size"] == 256
    assert 8 <= first.params["n_units_l0"] <= 32
    assert 0.01 <= first.params["lr"] <= 0.1


def test_starting_point_balanced_metric() -> None:
    study = hpo.optimize(n_trials=1, space=SHORT, metric="balanced_accuracy", device="cpu")

    assert study.trials[0].params["class_weight"] == "balanced"


def test_starting_point_not_on_resume() -> None:
    hpo.optimize(n_trials=1, space=SHORT, device="cpu")
    study = hpo.optimize(n_trials=2, device="cpu")

    assert [STARTING_POINT_ATTR in t.user_attrs for t in study.trials] == [True, False, False]


def test_starting_point_turned_off(tmp_path: Path, capsys) -> None:
    assert main(["optimize", "--study", "flag", "--n-trials", "1", "--max-epochs", "1", "--device", "cpu", "--no-starting-point"]) == 0
    config = tmp_path / "hpo.toml"
    config.write_text("[optimize]\nstarting_point = false\nn_trials = 1\n\n[space]\nmax_epochs = 1\n")
    assert main(["optimize", "--study", "config", "--config", str(config), "--device", "cpu"]) == 0

    for name in ("flag", "config"):
        study = load_study(name, resolve_storage_url(None, name))
        assert len(study.trials) == 1
        assert STARTING_POINT_ATTR not in study.trials[0].user_attrs


def test_starting_point_skipped_over_max_params() -> None:
    study = hpo.optimize(n_trials=1, space=SHORT, max_params=1000, device="cpu")

    assert len(study.trials) == 1
    assert STARTING_POINT_ATTR not in study.trials[0].user_attrs


def test_starting_point_lr_left_to_sampler_for_sgd() -> None:
    study = hpo.optimize(n_trials=1, space={**SHORT, "optimizer": "sgd"}, device="cpu")

    first = study.trials[0]
    assert first.user_attrs[STARTING_POINT_ATTR] is True
    assert first.params["batch_size"] == 256
    assert first.params["lr"] != 3e-3


def test_new_study_without_finished_trials_starts_from_it() -> None:
    hpo.optimize(n_trials=1, space=SHORT, workers=0, device="cpu")  # queues a trial, runs none
    study = hpo.optimize(n_trials=1, space=SHORT, new_study=True, device="cpu")

    assert study.study_name == "synthetic-2"
    assert study.trials[0].user_attrs[STARTING_POINT_ATTR] is True


def test_new_study_warm_starts_at_most_n_trials() -> None:
    hpo.optimize(n_trials=6, space=SHORT, device="cpu")
    study = hpo.optimize(n_trials=2, space=SHORT, new_study=True, device="cpu")

    assert len(study.trials) == 2
    assert all(WARM_START_ATTR in t.user_attrs for t in study.trials)
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}


def test_bad_threads_env_rejected_before_study(monkeypatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "abc")

    with pytest.raises(InputError, match="HPO_TORCH_THREADS must be a positive integer; got 'abc'"):
        hpo.optimize(n_trials=1, space=SHORT, device="cpu")

    assert not (Path("study_db") / "synthetic.db").exists()
