"""Batched epoch reports: written in one transaction, and pruning as trial.should_prune decides."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.reporting import TrialReporter, batched_params
from hpo.storage import open_storage


def _study(tmp_path: Path, name: str = "reports") -> optuna.Study:
    storage = open_storage(f"sqlite:///{tmp_path / 'reports.db'}", create=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner)


def _stored(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    fresh = optuna.load_study(study_name=study.study_name, storage=open_storage(study._storage._backend.url, create=False))
    return fresh.trials[number]


def test_reporter_flush_writes_values_and_attrs(tmp_path: Path) -> None:
    study = _study(tmp_path)
    reporter = TrialReporter(study, flush_seconds=3600)
    trial = study.ask()

    for step in range(3):
        reporter.report(trial, 0.5 + step / 10, step)
    reporter.set_user_attr(trial, "seed", 7)
    reporter.flush_if_due()
    before = _stored(study, trial.number)
    reporter.flush()
    after = _stored(study, trial.number)

    assert before.intermediate_values == {}
    assert after.intermediate_values == {0: 0.5, 1: 0.6, 2: 0.7}
    assert after.user_attrs == {"seed": 7}


def test_reporter_tell_flushes_first(tmp_path: Path) -> None:
    study = _study(tmp_path)
    reporter = TrialReporter(study, flush_seconds=3600)
    trial = study.ask()
    reporter.report(trial, 0.9, 0)
    reporter.set_user_attr(trial, "epochs_run", 1)

    reporter.tell(trial, 0.9)
    stored = _stored(study, trial.number)

    assert stored.state == optuna.trial.TrialState.COMPLETE
    assert stored.intermediate_values == {0: 0.9}
    assert stored.user_attrs == {"epochs_run": 1}


def test_reporter_should_prune_matches_trial_should_prune(tmp_path: Path) -> None:
    study = _study(tmp_path)
    for value in (0.8, 0.9):
        done = study.ask()
        done.report(value, 0)
        study.tell(done, value)
    reporter = TrialReporter(study, flush_seconds=3600)
    decisions = {}

    for value in (0.1, 0.95):
        batched, direct = study.ask(), study.ask()
        reporter.report(batched, value, 0)
        direct.report(value, 0)
        decisions[value] = (bool(reporter.should_prune(batched)), bool(direct.should_prune()))

    assert decisions[0.1] == (True, True)
    assert decisions[0.95] == (False, False)


def test_reporter_told_trial_counts_in_next_decision(tmp_path: Path) -> None:
    study = _study(tmp_path)
    reporter = TrialReporter(study, flush_seconds=3600)
    first = study.ask()
    reporter.report(first, 0.9, 0)
    assert not reporter.should_prune(first)  # takes the snapshot, which stays fresh for an hour
    reporter.tell(first, 0.9)
    second = study.ask()
    reporter.report(second, 0.8, 0)
    assert not reporter.should_prune(second)  # one finished trial: below the pruner's 2 start-up trials
    reporter.tell(second, 0.8)

    third = study.ask()
    reporter.report(third, 0.1, 0)

    assert reporter.should_prune(third)


def test_reporter_journal_storage_writes_values(tmp_path: Path) -> None:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    study = optuna.create_study(storage=storage, direction="maximize")
    reporter = TrialReporter(study, flush_seconds=0)
    trial = study.ask()

    reporter.report(trial, 0.4, 0)
    reporter.set_user_attr(trial, "seed", 1)
    reporter.tell(trial, 0.4)

    assert study.trials[0].intermediate_values == {0: 0.4}
    assert study.trials[0].user_attrs == {"seed": 1}


def test_batched_params_writes_after_block(tmp_path: Path) -> None:
    from hpo.reporting import batched_params

    study = _study(tmp_path)
    trial = study.ask()

    with batched_params(trial):
        n_layers = trial.suggest_int("n_layers", 1, 3)
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        inside = _stored(study, trial.number).params
    after = _stored(study, trial.number).params

    assert inside == {}
    assert after == {"n_layers": n_layers, "lr": lr}
    assert trial.params == after


def test_batched_params_incompatible_distribution_raises(tmp_path: Path) -> None:
    from hpo.reporting import batched_params

    study = _study(tmp_path)
    first = study.ask()
    with batched_params(first):
        first.suggest_int("n_layers", 1, 3)
    study.tell(first, 0.5)
    second = study.ask()

    with pytest.raises(ValueError, match="different distribution"):
        with batched_params(second):
            second.suggest_categorical("n_layers", ["a", "b"])


def test_batched_params_fixed_trial_in_fresh_process(tmp_path: Path) -> None:
    study = _study(tmp_path)
    study.enqueue_trial({"x": 2.0})
    url = study._storage._backend.url
    # A fresh worker: its own storage cache, and the queued trial taken through the backend.
    backend = open_storage(url, create=False)
    fresh = optuna.load_study(study_name=study.study_name, storage=backend)
    waiting = backend.get_all_trials(fresh._study_id, states=(optuna.trial.TrialState.WAITING,))
    assert backend.set_trial_state_values(waiting[0]._trial_id, optuna.trial.TrialState.RUNNING)
    trial = optuna.trial.Trial(fresh, waiting[0]._trial_id)

    with batched_params(trial):
        value = trial.suggest_float("x", 0.0, 5.0)

    assert value == 2.0
    assert _stored(study, trial.number).params == {"x": 2.0}
