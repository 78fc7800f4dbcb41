"""Trial events: their JSON log lines from the CLI, their fields, and the text levels of -v and -q."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
import pytest

from hpo.cli import main
from hpo.events import JsonFormatter, format_params, log_trial_end
from tests.views_fixtures import run_hpo

_TINY_RUN = ("--max-epochs", "1", "--space", "n_layers=1", "--space", "n_units=8", "--space", "batch_size=256", "--device", "cpu")


@pytest.fixture
def hpo_logging() -> object:
    """Restore the hpo loggers that an in-process CLI run reconfigures."""
    loggers = [logging.getLogger(name) for name in ("hpo", "hpo.events")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield None
    for lg, (handlers, level, propagate) in zip(loggers, saved):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def test_cli_json_log_lines_have_event_fields(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'json.db'}"

    result = run_hpo("optimize", "--study", "json", "--storage", storage, "--n-trials", "2", "--log-format", "json", *_TINY_RUN, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    events = [r for r in records if r["event"] != "log"]
    assert [r["event"] for r in events] == ["trial_started", "trial_finished", "trial_started", "trial_finished", "study_finished"]
    for record in records:
        assert {"time", "level", "logger", "event", "message"} <= set(record)
    finished = events[1]
    assert finished["study"] == "json"
    assert finished["trial"] == 0
    assert finished["state"] == "complete"
    assert 0.0 <= finished["value"] <= 1.0
    assert finished["best_trial"] == 0
    assert finished["duration_s"] > 0
    assert finished["epochs_run"] == 1
    assert set(finished["params"]) >= {"lr", "optimizer", "activation"}
    assert isinstance(finished["pid"], int)
    summary = events[-1]
    assert summary["complete"] == 2
    assert summary["n_trials"] == 2


def _study_with(tmp_path: Path, state: optuna.trial.TrialState, **attrs: object) -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    study = optuna.create_study(study_name="events", storage=f"sqlite:///{tmp_path / 'events.db'}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(state=state, **attrs))  # type: ignore[arg-type]
    return study, study.trials[-1]


def _json_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(record)) for record in caplog.records if record.name == "hpo.events"]


def test_log_trial_end_pruned_has_step_and_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study, trial = _study_with(
        tmp_path, optuna.trial.TrialState.PRUNED,
        intermediate_values={0: 0.3, 1: 0.31, 2: 0.32}, user_attrs={"reason": "pruned at epoch 2 with validation accuracy 0.3200", "epochs_run": 3},
    )

    with caplog.at_level(logging.DEBUG, logger="hpo.events"):
        log_trial_end(study, trial)

    (record,) = _json_records(caplog)
    assert record["event"] == "trial_pruned"
    assert record["level"] == "info"
    assert record["step"] == 2
    assert record["reason"] == "pruned at epoch 2 with validation accuracy 0.3200"
    assert record["epochs_run"] == 3


def test_log_trial_end_failed_is_warning_with_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study, trial = _study_with(tmp_path, optuna.trial.TrialState.FAIL, user_attrs={"reason": "non-finite loss at epoch 4"})

    with caplog.at_level(logging.DEBUG, logger="hpo.events"):
        log_trial_end(study, trial)

    (record,) = _json_records(caplog)
    assert record["event"] == "trial_failed"
    assert record["level"] == "warning"
    assert record["reason"] == "non-finite loss at epoch 4"
    assert record["trial"] == 0


def test_json_formatter_non_event_record_is_log_event() -> None:
    record = logging.LogRecord("hpo.study", logging.INFO, __file__, 1, "Created study %r.", ("x",), None)

    document = json.loads(JsonFormatter().format(record))

    assert document["event"] == "log"
    assert document["message"] == "Created study 'x'."
    assert document["logger"] == "hpo.study"


def test_format_params_drops_unused_layer_widths() -> None:
    text = format_params({"n_layers": 2, "n_units_l0": 16, "n_units_l1": 8, "n_units_l2": 64, "lr": 0.0012345})

    assert text == "n_layers=2 n_units_l0=16 n_units_l1=8 lr=0.001234"


def test_cli_verbose_prints_one_line_per_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str], hpo_logging: object) -> None:
    code = main(["optimize", "--study", "loud", "--storage", f"sqlite:///{tmp_path / 'v.db'}", "--n-trials", "2", "-v", *_TINY_RUN])

    captured = capsys.readouterr()
    assert code == 0
    assert captured.err.count("hpo.events: Trial 0 finished with value") == 1
    assert captured.err.count("hpo.events: Trial 1 finished with value") == 1
    assert "started" not in captured.err
    assert "Best trial" in captured.out


def test_cli_quiet_prints_no_trial_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str], hpo_logging: object) -> None:
    code = main(["optimize", "--study", "calm", "--storage", f"sqlite:///{tmp_path / 'q.db'}", "--n-trials", "2", "-q", *_TINY_RUN])

    captured = capsys.readouterr()
    assert code == 0
    assert "Trial" not in captured.err
    assert "Best trial" in captured.out
