"""``hpo studies`` and ``hpo show``: listing studies and the best trial, read-only."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import optuna
import pytest

from hpo.exceptions import StudyError
from hpo.overview import finish_run, format_table, list_studies
from tests.views_fixtures import ViewedStudy, run_hpo


def test_cli_studies_lists_counts_and_best(viewed_study: ViewedStudy) -> None:
    study = optuna.load_study(study_name=viewed_study.name, storage=viewed_study.storage)

    table = run_hpo("studies", "--storage", viewed_study.storage, cwd=viewed_study.folder)
    as_json = run_hpo("studies", "--storage", viewed_study.storage, "--format", "json", cwd=viewed_study.folder)

    assert table.returncode == 0, table.stderr
    assert viewed_study.name in table.stdout
    assert "complete  pruned  failed" in table.stdout
    (row,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert row["study_name"] == viewed_study.name
    assert row["n_trials"] == viewed_study.n_trials
    assert row["pruned"] == 1
    assert row["complete"] == viewed_study.n_trials - 1
    assert row["best_trial"] == study.best_trial.number
    assert row["best_value"] == pytest.approx(study.best_value)


def test_cli_show_prints_best_params_and_metrics(viewed_study: ViewedStudy) -> None:
    study = optuna.load_study(study_name=viewed_study.name, storage=viewed_study.storage)
    best = study.best_trial
    digest_before = hashlib.sha256(viewed_study.db_path.read_bytes()).hexdigest()

    result = run_hpo("show", "--study", viewed_study.name, "--storage", viewed_study.storage, cwd=viewed_study.folder)

    assert result.returncode == 0, result.stderr
    assert f"Best trial {best.number}" in result.stdout
    for name in ("lr", "optimizer", "activation", "validation accuracy", "test accuracy", "test rows", "epochs_run"):
        assert name in result.stdout, name
    assert f"n_units_l{best.params['n_layers']}" not in result.stdout
    assert hashlib.sha256(viewed_study.db_path.read_bytes()).hexdigest() == digest_before


def test_cli_show_missing_study_file_creates_nothing(tmp_path: Path) -> None:
    result = run_hpo("show", "--study", "nothing", cwd=tmp_path)

    assert result.returncode == 1
    assert "study storage not found" in result.stderr
    assert not (tmp_path / "study_db").exists()


def test_list_studies_default_folder_skips_non_optuna_file(viewed_study: ViewedStudy, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "study_db"
    folder.mkdir()
    shutil.copy(viewed_study.db_path, folder / "views.db")
    (folder / "notes.db").write_text("not a database\n" * 100)

    with caplog.at_level(logging.WARNING, logger="hpo.overview"):
        rows = list_studies()

    assert [row.study_name for row in rows] == [viewed_study.name]
    assert "notes.db" in caplog.text


def test_finish_run_without_completed_trial_raises(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="failing", storage=f"sqlite:///{tmp_path / 'f.db'}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))

    with pytest.raises(StudyError, match=r"no trial of study 'failing' completed \(1 pruned, 1 failed\)"):
        finish_run(study)


def test_format_table_aligns_columns() -> None:
    text = format_table(["a", "long name"], [[1, None], ["wide value", 0.123456]])

    assert text.splitlines() == [
        "a           long name",
        "----------  ---------",
        "1           -",
        "wide value  0.12346",
    ]
