"""SQLite connection settings and retries of storage calls under concurrent writers."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, OperationalError

from hpo.concurrency import call_with_retries, configure_sqlite, is_transient
from hpo.heartbeat import Heartbeat, StaleTrialFinder
from hpo.storage import open_storage


def _locked() -> OperationalError:
    return OperationalError("UPDATE trials", {}, sqlite3.OperationalError("database is locked"))


def test_open_storage_sqlite_switches_file_to_wal(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    open_storage(f"sqlite:///{path}", create=True).get_all_studies()

    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]

    assert mode == "wal"


def test_sqlite_storages_pop_each_waiting_trial_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pop.db'}"
    study = optuna.create_study(study_name="pop", storage=open_storage(url, create=True))
    for _ in range(40):
        study.enqueue_trial({})
    backends = [open_storage(url, create=False) for _ in range(8)]
    taken: list[int] = []
    errors: list[BaseException] = []

    def take_all(backend: optuna.storages.RDBStorage) -> None:
        # Read, then update in one transaction each: what makes deferred SQLite transactions fail.
        try:
            for trial in backend.get_all_trials(study._study_id, states=(TrialState.WAITING,)):
                if backend.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
                    taken.append(trial._trial_id)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=take_all, args=(backend,)) for backend in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(taken) == sorted(set(taken))
    assert len(taken) == 40


def test_call_with_retries_transient_error_retried() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise optuna.exceptions.StorageInternalError("commit failed") from _locked()
        return "done"

    assert call_with_retries("flaky", flaky) == "done"
    assert len(calls) == 3


def test_call_with_retries_other_error_raised_at_once() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))

    with pytest.raises(IntegrityError):
        call_with_retries("broken", broken)
    assert len(calls) == 1


def test_is_transient_plain_value_error_false() -> None:
    assert is_transient(ValueError("x")) is False
    assert is_transient(_locked()) is True


def test_heartbeat_lock_timeout_logs_cause(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    study = optuna.create_study(study_name="locked", storage=open_storage(url, create=True))
    trial_id = study.ask()._trial_id
    # A storage that gives up on a lock after 0.1 s instead of the default busy timeout.
    backend = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 0.1}})
    configure_sqlite(backend.engine)
    heartbeat = Heartbeat(study, StaleTrialFinder(backend, study._study_id, grace_period=30.0), interval=0.05)
    heartbeat.add(trial_id)
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    with caplog.at_level(logging.WARNING, logger="hpo.heartbeat"):
        heartbeat.start()
        deadline = time.monotonic() + 10
        while "Heartbeat of trial" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        heartbeat.stop()
    holder.execute("ROLLBACK")
    holder.close()

    failures = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Heartbeat of trial")]
    assert failures
    assert "OperationalError: (sqlite3.OperationalError) database is locked" in failures[0]
