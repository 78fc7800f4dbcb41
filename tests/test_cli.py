"""The command line: exit codes, one-line errors, and the end-to-end main path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpo.cli import main
from hpo.data import SplitSpec, load_table, split_rows

REPO = Path(__file__).resolve().parents[1]


def _csv(path: Path, frame: pd.DataFrame) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def _table(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "label": np.where(np.arange(n) % 3 == 0, "x", "y")})


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp / "empty.csv"
    empty.write_text("")
    header = tmp / "header.csv"
    header.write_text("a,b,label\n")
    duplicate = tmp / "dup.csv"
    duplicate.write_text("a,a,label\n1,2,x\n3,4,y\n")
    config = tmp / "cfg.toml"
    config.write_text("[space]\nlayers = [1, 2]\n")
    rare = _table()
    rare.loc[:1, "label"] = "z"
    return {
        "missing file": (["--data", str(tmp / "nope.csv"), "--target", "label"], "data file not found"),
        "empty file": (["--data", str(empty), "--target", "label"], "data file is empty"),
        "header only": (["--data", str(header), "--target", "label"], "header but no rows"),
        "missing target": (["--data", _csv(tmp / "t1.csv", _table()), "--target", "Quality"], "columns are: a, b, label"),
        "single class": (["--data", _csv(tmp / "t2.csv", _table().assign(label="x")), "--target", "label"], "single class"),
        "rare class": (["--data", _csv(tmp / "t3.csv", rare), "--target", "label"], "too few rows"),
        "empty feature": (["--data", _csv(tmp / "t4.csv", _table().assign(b=np.nan)), "--target", "label"], "'b'.* have no values"),
        "duplicate columns": (["--data", str(duplicate), "--target", "label"], "duplicate column names: a"),
        "unknown built-in": (["--data", "irish"], "unknown built-in data set 'irish'"),
        "unknown config key": (["--config", str(config)], "unknown key\\(s\\) layers"),
        "low above high": (["--space", "lr=[0.1, 0.001]"], "lr has low 0.1 above high 0.001"),
        "bad study name": (["--study", "../evil"], "invalid study name '../evil'"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing file", "empty file", "header only", "missing target", "single class", "rare class", "empty feature",
     "duplicate columns", "unknown built-in", "unknown config key", "low above high", "bad study name"],
)
def test_optimize_bad_input_exits_2_without_study(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args, pattern = _bad_inputs(tmp_path)[case]

    code = main(["optimize", "--n-trials", "1", *args])

    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("hpo: error: ")
    assert re.search(pattern, err), err
    assert not (tmp_path / "study_db").exists() or not any((tmp_path / "study_db").iterdir())


def test_optimize_bad_input_leaves_existing_study_unchanged(tmp_path: Path) -> None:
    assert main(["optimize", "--study", "keep", "--n-trials", "1", "--max-epochs", "1", "-q"]) == 0
    db = tmp_path / "study_db" / "keep.db"
    before = db.read_bytes()

    code = main(["optimize", "--study", "keep", "--n-trials", "1", "--space", "n_layers=[3,1]", "-q"])

    assert code == 2
    assert db.read_bytes() == before


def test_finalize_unknown_study_exits_1_without_creating_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["finalize", "--study", "ghost", "--out", str(tmp_path / "m")])

    assert code == 1
    assert "study storage not found" in capsys.readouterr().err
    assert not (tmp_path / "study_db" / "ghost.db").exists()


def test_optimize_no_arguments_uses_default_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["optimize", "--n-trials", "2", "--max-epochs", "2", "-q"])

    out = capsys.readouterr().out
    assert code == 0
    assert f"sqlite:///{tmp_path / 'study_db' / 'synthetic.db'}" in out
    assert "Best trial" in out
    assert (tmp_path / "study_db" / "synthetic.db").exists()


def test_optimize_rerun_resumes_and_adds_trials(tmp_path: Path) -> None:
    import optuna

    for _ in range(2):
        assert main(["optimize", "--data", "iris", "--n-trials", "2", "--max-epochs", "2", "-q"]) == 0

    study = optuna.load_study(study_name="iris", storage=f"sqlite:///{tmp_path / 'study_db' / 'iris.db'}")
    assert len(study.trials) == 4
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4


def test_optimize_timeout_alone_sets_no_trial_count(tmp_path: Path) -> None:
    import optuna

    from hpo.run_plan import RUN_ATTR

    code = main(["optimize", "--data", "iris", "--timeout", "2", "--max-epochs", "1", "--workers", "1", "-q"])

    study = optuna.load_study(study_name="iris", storage=f"sqlite:///{tmp_path / 'study_db' / 'iris.db'}")
    assert code == 0
    assert study.user_attrs[RUN_ATTR]["n_trials"] is None
    assert len(study.trials) >= 1
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]


def test_optimize_time_limit_reports_queued_trials_left(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["optimize", "--data", "iris", "--n-trials", "200", "--timeout", "3", "--max-epochs", "1", "--workers", "1", "-q"])

    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^\d+ queued trials did not run \(time limit or stop\)", out, re.MULTILINE), out


def test_predict_non_numeric_feature_names_column_and_value() -> None:
    from hpo.exceptions import InputError
    from hpo.preprocess import apply_preprocessing, fit_preprocessing

    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "pH": [7.1, 7.3, 7.0]})
    prep = fit_preprocessing(frame, ["a", "pH"])
    with pytest.raises(InputError, match=r"feature column 'pH' in new.csv must be numeric, but it has 'abc' \(first at row 1"):
        apply_preprocessing(prep, pd.DataFrame({"a": [1, 2], "pH": ["7.2", "abc"]}), source="new.csv")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "hpo", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_main_path_on_ocean_data_end_to_end(ocean_csv: Path, tmp_path: Path) -> None:
    optimize = _run(
        "optimize", "--data", str(ocean_csv), "--target", "Quality", "--study", "ocean", "--n-trials", "4",
        "--max-epochs", "4", "--space", "batch_size=[512, 1024]", "--space", "n_layers=[1, 2]", "--device", "cpu",
    )
    assert optimize.returncode == 0, optimize.stderr
    assert "Study 'ocean'" in optimize.stdout

    finalize = _run("finalize", "--study", "ocean", "--out", str(tmp_path / "models" / "ocean"), "--device", "cpu")
    assert finalize.returncode == 0, finalize.stderr
    description = json.loads((tmp_path / "models" / "ocean" / "model.json").read_text())
    assert description["classes"] == ["Bad", "Good"]
    assert description["features"] == ["Temperature", "pH", "Dissolved_Oxygen", "Salinity", "Turbidity", "Chlorophyll", "Nitrate"]

    # Rebuild the held-out test rows the way the study split them, then predict them.
    table = load_table(ocean_csv, "Quality")
    split = split_rows(table, SplitSpec(**description["data"]["split"]))
    test_rows = pd.read_csv(ocean_csv).iloc[split.test]
    test_path = tmp_path / "test_rows.csv"
    test_rows.to_csv(test_path, index=False)
    predict = _run("predict", "--model", str(tmp_path / "models" / "ocean"), "--data", str(test_path), "--output", str(tmp_path / "pred.csv"))
    assert predict.returncode == 0, predict.stderr

    predictions = pd.read_csv(tmp_path / "pred.csv")
    assert list(predictions.columns) == ["prediction", "proba_Bad", "proba_Good"]
    assert len(predictions) == description["metrics"]["test"]["n_rows"] == 20000
    accuracy = float((predictions["prediction"].to_numpy() == test_rows["Quality"].to_numpy()).mean())
    assert accuracy == pytest.approx(description["metrics"]["test"]["accuracy"], abs=1e-6)
    assert f"accuracy {accuracy:.5f}" in predict.stdout


def test_mixed_types_and_missing_values_train_without_manual_preprocessing(ocean_small_csv: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(ocean_small_csv).head(1500).reset_index(drop=True)
    rng = np.random.default_rng(0)
    frame["Site"] = rng.choice(["north", "south", "reef", None], size=len(frame))
    frame["Sampled"] = rng.choice([True, False], size=len(frame))
    frame.loc[rng.choice(len(frame), 100, replace=False), "pH"] = np.nan
    frame.insert(0, "sample_id", [f"s{i}" for i in range(len(frame))])
    path = tmp_path / "mixed.csv"
    frame.to_csv(path, index=False, sep=";")

    code = main([
        "optimize", "--data", str(path), "--target", "Quality", "--ignore-columns", "sample_id",
        "--n-trials", "2", "--max-epochs", "2", "-q",
    ])
    assert code == 0
    assert main(["finalize", "--study", "mixed", "--out", str(tmp_path / "m"), "-q"]) == 0

    description = json.loads((tmp_path / "m" / "model.json").read_text())
    assert "Site=reef" in description["encoded_features"]
    assert "sample_id" not in description["features"]
    new = frame.drop(columns=["Quality"]).head(20).assign(Site="unseen")
    new.to_csv(tmp_path / "new.csv", index=False)
    assert main(["predict", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "new.csv"), "--output", str(tmp_path / "p.csv"), "-q"]) == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 20


def test_run_study_script_smoke(tmp_path: Path) -> None:
    iris = tmp_path / "iris.csv"
    load_table("iris").frame.to_csv(iris, index=False)
    hpo_wrapper = tmp_path / "hpo"
    hpo_wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m hpo \"$@\"\n")
    hpo_wrapper.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HPO": str(hpo_wrapper), "HPO_OPTIMIZE_ARGS": "--max-epochs 2 -q"}

    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "run_study.sh"), str(iris), "target", "iris_script", "2"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )

    assert result.returncode == 0, result.stderr
    predictions = pd.read_csv(tmp_path / "models" / "iris_script" / "predictions.csv")
    assert len(predictions) == 150
    assert "accuracy" in result.stdout


@pytest.mark.parametrize(
    ("config", "pattern"),
    [
        ('optimize = 3\n', "optimize must be a table"),
        ('[optimize]\nn_trials = "ten"\n', "n_trials must be a int; got 'ten'"),
        ('[optimize]\nseed = true\n', "seed must be a int; got True"),
        ('[optimize]\ndata = 5\n', "data must be a str; got 5"),
        ('[optimize]\nignore_columns = [1, 2]\n', "ignore_columns must list strings"),
        ('[model]\nx = 1\n', "unknown table\\(s\\) model"),
    ],
)
def test_optimize_config_wrong_type_exits_2(config: str, pattern: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text(config)

    code = main(["optimize", "--config", str(path)])

    err = capsys.readouterr().err
    assert code == 2
    assert re.search(pattern, err), err
    assert not (tmp_path / "study_db").exists()


@pytest.mark.parametrize("seed", ["-1", "5000000000"])
def test_optimize_seed_out_of_range_exits_2(seed: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["optimize", "--seed", seed, "--n-trials", "1"])

    assert code == 2
    assert "seed must be in 0..4294967295" in capsys.readouterr().err


def test_finalize_out_is_file_exits_2_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimize", "--data", "iris", "--n-trials", "1", "--max-epochs", "1", "-q"]) == 0
    blocker = tmp_path / "taken.csv"
    blocker.write_text("x\n")

    code = main(["finalize", "--study", "iris", "--out", str(blocker / "model"), "-q"])

    assert code == 2
    assert f"{blocker} is a file" in capsys.readouterr().err


def test_predict_output_is_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["predict", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.csv"), "--output", str(tmp_path)])

    assert code == 2
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_optimize_resume_with_changed_space_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimize", "--data", "iris", "--n-trials", "1", "--max-epochs", "1", "-q"]) == 0
    db = tmp_path / "study_db" / "iris.db"
    before = db.read_bytes()

    code = main(["optimize", "--study", "iris", "--n-trials", "1", "--max-epochs", "3", "--pruner", "none"])

    err = capsys.readouterr().err
    assert code == 1
    assert "was created with other inputs" in err
    assert "search space max_epochs 1 -> 3" in err
    assert "pruner median -> none" in err
    assert db.read_bytes() == before


def test_optimize_in_memory_sqlite_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["optimize", "--storage", "sqlite://", "--n-trials", "1"])

    assert code == 2
    assert "in-memory SQLite database" in capsys.readouterr().err


def test_optimize_empty_study_name_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["optimize", "--study", "", "--n-trials", "1"])

    assert code == 2
    assert "invalid study name ''" in capsys.readouterr().err


def test_optimize_all_trials_failed_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = _table(90).assign(a=1e30)  # standardizes fine but a huge lr makes the loss overflow
    path = _csv(tmp_path / "t.csv", frame)

    code = main([
        "optimize", "--data", path, "--target", "label", "--n-trials", "2", "--max-epochs", "2",
        "--space", "lr=10.0", "--space", "optimizer=\"sgd\"", "--space", "n_units=512", "--space", "n_layers=5",
        "--space", "momentum=0.99", "--space", "batch_size=8", "--space", "activation=\"relu\"", "--space", "dropout=0.0",
    ])

    err = capsys.readouterr().err
    assert code == 1
    assert "no trial of this run completed: 2 failed; last reason: non-finite loss" in err


def test_debug_flag_accepted_before_command(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--debug", "optimize", "--data", "nope"])

    assert code == 2
    assert "Traceback" in capsys.readouterr().err


def test_predict_output_same_as_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.csv"
    data.write_text("a\n1\n")

    code = main(["predict", "--model", str(tmp_path / "m"), "--data", str(data), "--output", str(data)])

    assert code == 2
    assert "is the input data file" in capsys.readouterr().err
    assert data.read_text() == "a\n1\n"


def test_optimize_api_rejects_dataframe_with_hint() -> None:
    import hpo

    with pytest.raises(TypeError, match="save a DataFrame with to_parquet"):
        hpo.optimize(_table(), "label")


def test_mask_password_hides_password_literally() -> None:
    from hpo.storage import mask_password

    masked = mask_password("postgresql+psycopg2://bob:s3cr%40t@db.example:5432/hpo")

    assert masked == "postgresql+psycopg2://bob:***@db.example:5432/hpo"


def test_finalize_changed_or_moved_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = tmp_path / "data.csv"
    frame = load_table("iris").frame
    frame.to_csv(original, index=False)
    assert main(["optimize", "--data", str(original), "--target", "target", "--study", "moved", "--n-trials", "1", "--max-epochs", "1", "-q"]) == 0

    moved = tmp_path / "elsewhere" / "data.csv"
    moved.parent.mkdir()
    original.rename(moved)
    assert main(["finalize", "--study", "moved", "--out", str(tmp_path / "m0"), "-q"]) == 2
    assert "data file not found" in capsys.readouterr().err

    frame.head(120).to_csv(original, index=False)
    assert main(["finalize", "--study", "moved", "--out", str(tmp_path / "m1"), "-q"]) == 1
    assert "differs from what it was created with: data content changed" in capsys.readouterr().err
    assert not (tmp_path / "m1").exists()

    assert main(["finalize", "--study", "moved", "--out", str(tmp_path / "m2"), "--data", str(moved), "-q"]) == 0
    assert (tmp_path / "m2" / "model.json").exists()


def test_worker_args_pass_logging_and_debug() -> None:
    from hpo.cli import _worker_args, build_parser

    parser = build_parser()
    args = parser.parse_args(["optimize", "--debug", "-vv", "--workers", "2"])
    worker_args = _worker_args(args)

    assert worker_args == ["--log-format", "text", "-vv", "--debug"]
    worker = parser.parse_args(["worker", "--study", "s", *worker_args])
    assert worker.debug is True
    assert worker.verbose == 2
