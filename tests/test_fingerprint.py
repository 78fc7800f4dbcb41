"""A resume whose data, split, search space or direction differs is rejected; --new-study warm-starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

import hpo
from hpo.cli import main
from hpo.exceptions import StudyError
from hpo.fingerprint import FINGERPRINT_ATTR, fingerprint_differences
from hpo.storage import SETTINGS_ATTR
from hpo.warm_start import WARM_START_ATTR

TINY = {"max_epochs": 1, "n_layers": 1, "n_units": [4, 8], "batch_size": 64}


def _write_table(path: Path, *, seed: int = 0, rows: int = 90) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows), "c": rng.integers(0, 5, size=rows)})
    frame["label"] = np.where(frame["a"] + frame["b"] > 0, "yes", "no")
    frame.to_csv(path, index=False)
    return path


def _optimize(data: Path | str | None, **options: object) -> optuna.Study:
    values = {"target": "label" if data is not None else None, "study_name": "fp", "n_trials": 1, "device": "cpu", "pruner": "none", "space": TINY}
    values.update(options)
    return hpo.optimize(None if data is None else str(data), **values)  # type: ignore[arg-type]


def test_resume_changed_file_content_rejected(tmp_path: Path) -> None:
    csv = _write_table(tmp_path / "table.csv")
    _optimize(csv)
    frame = pd.read_csv(csv)
    frame.loc[0, "a"] = 123.0
    frame.to_csv(csv, index=False)

    # Plain Optuna loads the study whatever data the objective now reads.
    assert optuna.create_study(study_name="fp", storage=f"sqlite:///{tmp_path / 'study_db' / 'fp.db'}", load_if_exists=True, direction="maximize")
    with pytest.raises(StudyError, match=r"data content changed \(90 rows, sha256 [0-9a-f]{12} .*90 rows") as caught:
        _optimize(None)
    assert str(csv) in str(caught.value)
    assert "--new-study" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_resume_unchanged_file_adds_trials(tmp_path: Path) -> None:
    csv = _write_table(tmp_path / "table.csv")
    _optimize(csv)

    n_resumed = len(_optimize(None, space=None).trials)
    n_again = len(_optimize(csv).trials)

    assert n_resumed == 2
    assert n_again == 3


def test_resume_changed_columns_names_them(tmp_path: Path) -> None:
    csv = _write_table(tmp_path / "table.csv")
    _optimize(csv)
    frame = pd.read_csv(csv)
    frame["c"] = frame["c"].map(lambda v: f"k{v}")
    frame["d"] = 1.0
    frame.to_csv(csv, index=False)

    with pytest.raises(StudyError) as caught:
        _optimize(None)

    message = str(caught.value)
    assert "new column(s) d" in message
    assert "column type(s) changed: c integer -> text" in message


def test_resume_changed_space_rejected(tmp_path: Path) -> None:
    csv = _write_table(tmp_path / "table.csv")
    _optimize(csv)

    # The dict overrides the stored space, so only the changed entry is reported.
    with pytest.raises(StudyError, match=r"search space n_units \[4, 8\] -> \[4, 16\]\. "):
        _optimize(None, space={"n_units": [4, 16]})


def test_resume_changed_split_rejected(tmp_path: Path) -> None:
    csv = _write_table(tmp_path / "table.csv")
    _optimize(csv)

    with pytest.raises(StudyError, match="split train/validation/test 0.6/0.2/0.2 seed 0 -> 0.5/0.25/0.25 seed 0"):
        _optimize(csv, split=hpo.data.SplitSpec(train=0.5, validation=0.25, test=0.25))


def test_resume_opposite_stored_direction_rejected(tmp_path: Path) -> None:
    csv = _write_table(tmp_path / "table.csv")
    first = _optimize(csv)
    url = f"sqlite:///{tmp_path / 'study_db' / 'other.db'}"
    # A study stored as minimize with hpo's settings: plain create_study would load it silently.
    stored = optuna.create_study(study_name="fp", storage=url, direction="minimize")
    stored.set_user_attr(SETTINGS_ATTR, first.user_attrs[SETTINGS_ATTR])
    stored.set_user_attr(FINGERPRINT_ATTR, first.user_attrs[FINGERPRINT_ATTR])
    reloaded = optuna.create_study(study_name="fp", storage=url, direction="maximize", load_if_exists=True)
    assert reloaded.direction == optuna.study.StudyDirection.MINIMIZE

    with pytest.raises(StudyError, match="stored with direction minimize, but this run would maximize accuracy"):
        _optimize(csv, storage=url)


def test_fingerprint_differences_direction_and_metric_named() -> None:
    base = {"data": {"target": "y", "columns": [], "classes": [0, 1], "sha256": "0" * 64, "rows": 1, "source": "t"},
            "split": {"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 0, "sha256": "1"}, "space": {}}
    stored = {**base, "objective": {"metric": "accuracy", "direction": "maximize"}}
    current = {**base, "objective": {"metric": "log_loss", "direction": "minimize"}}

    assert fingerprint_differences(stored, current) == ["objective metric accuracy -> log_loss, direction maximize -> minimize"]
    assert fingerprint_differences(stored, stored) == []


def test_new_study_warm_starts_from_best_trials(tmp_path: Path) -> None:
    csv = _write_table(tmp_path / "table.csv")
    old = _optimize(csv, n_trials=3)
    best = old.best_trial

    new = _optimize(csv, n_trials=3, new_study=True, space={**TINY, "n_units": [4, 16]})

    assert new.study_name == "fp-2"
    assert (tmp_path / "study_db" / "fp-2.db").exists()
    first = new.trials[0]
    assert first.user_attrs[WARM_START_ATTR] == f"fp#{best.number}"
    assert first.params == best.params
    assert len(new.trials) == 3


def test_cli_new_study_flag_picks_next_free_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["optimize", "--data", "iris", "--n-trials", "1", "--max-epochs", "1", "--device", "cpu", "--pruner", "none", "-q"]
    assert main(common) == 0
    assert main([*common, "--space", "n_layers=1"]) == 1
    assert "search space n_layers [1, 3] -> 1" in capsys.readouterr().err

    assert main([*common, "--space", "n_layers=1", "--new-study"]) == 0
    assert "Study 'iris-2'" in capsys.readouterr().out
