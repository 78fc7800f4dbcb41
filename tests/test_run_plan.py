"""Run goals, queued trials, lost trials and the worker loop, in one process on SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import hpo
from hpo.exceptions import StudyError
from hpo.heartbeat import StaleTrialFinder, fail_lost_trial
from hpo.run_plan import COUNTED_ATTR, RETRY_OF_ATTR, RUN_ATTR, STOP_ATTR, count_finished, enqueue_retry, load_plan, start_run
from hpo.storage import open_storage
from hpo.trial_loop import MAX_CONSECUTIVE_FAILURES, interrupt_handlers, run_trials


def _new_study(tmp_path: Path) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    backend = open_storage(f"sqlite:///{tmp_path / 'plan.db'}", create=True)
    return optuna.create_study(study_name="plan", storage=backend, direction="maximize"), backend


def _states(study: optuna.Study) -> list[TrialState]:
    return [trial.state for trial in study.get_trials(deepcopy=False)]


def _take_and_finish(study: optuna.Study, backend: optuna.storages.RDBStorage, n: int) -> None:
    waiting = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING][:n]
    for trial in waiting:
        backend.set_trial_state_values(trial._trial_id, TrialState.RUNNING)
        study.tell(trial.number, 0.5)


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def test_optimize_in_process_stores_goal_and_meets_it() -> None:
    study = hpo.optimize(n_trials=3, space={"max_epochs": 2, "n_layers": 1, "n_units": 8}, device="cpu")

    plan = load_plan(study)
    assert plan is not None
    assert plan.total == 3
    assert count_finished(study.get_trials()) == 3
    assert TrialState.WAITING not in _states(study)


def test_start_run_fills_queue_with_waiting_trials(tmp_path: Path) -> None:
    study, _ = _new_study(tmp_path)

    plan = start_run(study, 4)

    assert plan.total == 4
    assert _states(study) == [TrialState.WAITING] * 4
    assert study.user_attrs[RUN_ATTR]["n_trials"] == 4


@pytest.mark.parametrize(
    ("n_trials", "n_finished", "expected_total"),
    [
        (4, 1, 4),  # interrupted: the run continues to the stored total
        (2, 2, 4),  # goal met: the same command requests that many more
    ],
)
def test_start_run_same_n_again(tmp_path: Path, n_trials: int, n_finished: int, expected_total: int) -> None:
    study, backend = _new_study(tmp_path)
    start_run(study, n_trials)
    _take_and_finish(study, backend, n_finished)

    plan = start_run(study, n_trials)

    assert plan.total == expected_total
    assert _states(study).count(TrialState.WAITING) == expected_total - n_finished
    assert len(study.trials) == expected_total


def test_start_run_smaller_goal_cancels_surplus(tmp_path: Path) -> None:
    study, _ = _new_study(tmp_path)
    start_run(study, 5)

    plan = start_run(study, 2)

    trials = study.get_trials()
    cancelled = [t for t in trials if t.state == TrialState.FAIL]
    assert plan.total == 2
    assert _states(study).count(TrialState.WAITING) == 2
    assert len(cancelled) == 3
    assert all(t.user_attrs[COUNTED_ATTR] is False for t in cancelled)
    assert count_finished(trials) == 0


def test_start_run_clears_stop_reason(tmp_path: Path) -> None:
    study, _ = _new_study(tmp_path)
    study.set_user_attr(STOP_ATTR, "stopped after 10 failed trials in a row")

    start_run(study, 1)

    assert not study.user_attrs[STOP_ATTR]


def test_enqueue_retry_reruns_params_once(tmp_path: Path) -> None:
    study, _ = _new_study(tmp_path)
    lost = optuna.trial.create_trial(state=TrialState.FAIL, params={"x": 0.25}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)})
    study.add_trial(lost)
    lost = study.trials[0]

    enqueue_retry(study, lost)
    retry = study.trials[1]
    retry_lost = optuna.trial.FrozenTrial(**{**_frozen_kwargs(retry), "user_attrs": {RETRY_OF_ATTR: 0}})
    enqueue_retry(study, retry_lost)

    assert retry.state == TrialState.WAITING
    assert retry.system_attrs["fixed_params"] == {"x": 0.25}
    assert retry.user_attrs[RETRY_OF_ATTR] == 0
    assert study.trials[2].system_attrs["fixed_params"] == {}
    assert RETRY_OF_ATTR not in study.trials[2].user_attrs


def test_fail_lost_trial_second_caller_changes_nothing(tmp_path: Path) -> None:
    study, backend = _new_study(tmp_path)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)

    first = fail_lost_trial(study, backend, trial._trial_id, "lost: test")
    second = fail_lost_trial(study, backend, trial._trial_id, "lost: test again")

    trials = study.get_trials()
    assert first is True
    assert second is False
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["reason"] == "lost: test"
    assert [t.user_attrs.get(RETRY_OF_ATTR) for t in trials[1:]] == [0]


def test_stale_finder_trial_without_heartbeat_stale_after_grace(tmp_path: Path) -> None:
    study, backend = _new_study(tmp_path)
    trial = study.ask()
    finder = StaleTrialFinder(backend, study._study_id, grace_period=0.3)

    first = finder.find()
    time.sleep(0.5)
    second = finder.find()

    assert first == {}
    assert list(second) == [trial._trial_id]


def test_stale_finder_old_heartbeat_is_stale(tmp_path: Path) -> None:
    study, backend = _new_study(tmp_path)
    old, fresh = study.ask(), study.ask()
    backend.record_heartbeat(old._trial_id)
    finder = StaleTrialFinder(backend, study._study_id, grace_period=1.0)

    time.sleep(2.2)  # SQLite's CURRENT_TIMESTAMP has whole seconds
    backend.record_heartbeat(fresh._trial_id)
    stale = finder.find()

    assert list(stale) == [old._trial_id]


def test_run_trials_runs_exactly_the_queue(tmp_path: Path) -> None:
    study, backend = _new_study(tmp_path)
    start_run(study, 5)

    stats = run_trials(study, backend, _objective)

    assert stats.n_complete == 5
    assert _states(study) == [TrialState.COMPLETE] * 5


def test_run_trials_exception_in_trial_does_not_stop_worker(tmp_path: Path) -> None:
    study, backend = _new_study(tmp_path)
    start_run(study, 4)

    def sometimes_fails(trial: optuna.Trial) -> float:
        if trial.number % 2:
            raise ValueError("odd trial")
        return _objective(trial)

    stats = run_trials(study, backend, sometimes_fails)

    trials = study.get_trials()
    assert (stats.n_complete, stats.n_failed) == (2, 2)
    assert trials[1].user_attrs["reason"] == "ValueError: odd trial"
    assert count_finished(trials) == 4


def test_run_trials_failures_in_a_row_stop_study(tmp_path: Path) -> None:
    study, backend = _new_study(tmp_path)
    start_run(study, MAX_CONSECUTIVE_FAILURES + 5)

    def always_fails(trial: optuna.Trial) -> float:
        raise RuntimeError("broken data")

    with pytest.raises(StudyError, match="10 failed trials in a row; last reason: RuntimeError: broken data"):
        run_trials(study, backend, always_fails)

    assert "broken data" in study.user_attrs[STOP_ATTR]
    assert _states(study).count(TrialState.WAITING) == 5


def test_run_trials_trial_failed_by_peer_is_dropped_and_retried(tmp_path: Path) -> None:
    study, backend = _new_study(tmp_path)
    start_run(study, 2)

    def failed_meanwhile(trial: optuna.Trial) -> float:
        value = _objective(trial)
        if trial.number == 0:
            fail_lost_trial(study, backend, trial._trial_id, "lost: no heartbeat for 40 s, so its worker is presumed dead")
        return value

    stats = run_trials(study, backend, failed_meanwhile)

    trials = study.get_trials()
    assert stats.n_dropped == 1
    assert trials[0].state == TrialState.FAIL
    assert trials[2].user_attrs[RETRY_OF_ATTR] == 0
    assert trials[2].params == trials[0].params
    assert count_finished(trials) == 2


class _InterruptedSampler(optuna.samplers.RandomSampler):
    """A sampler during which Ctrl-C arrives: after a trial is taken, before its objective runs."""

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        raise KeyboardInterrupt


def test_run_trials_interrupt_before_objective_releases_trial(tmp_path: Path) -> None:
    _, backend = _new_study(tmp_path)
    study = optuna.load_study(study_name="plan", storage=backend, sampler=_InterruptedSampler())
    start_run(study, 2)

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, backend, _objective)

    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["reason"] == "interrupted by KeyboardInterrupt"
    assert trials[0].user_attrs[COUNTED_ATTR] is False
    assert TrialState.RUNNING not in _states(study)
    assert [t.user_attrs.get(RETRY_OF_ATTR) for t in trials if t.state == TrialState.WAITING] == [None, 0]


def test_interrupt_inside_weakref_callback_raised_again() -> None:
    class Target:
        pass

    def on_collect(ref: weakref.ref) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        # The handler runs in this loop, inside the callback, where Python swallows its exception.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            pass

    target = Target()
    watcher = weakref.ref(target, on_collect)
    with interrupt_handlers():
        with pytest.raises(KeyboardInterrupt):
            del target
            time.sleep(2)

    assert watcher() is None


_EVAL_INTERRUPTED = """
import os, signal, sys
from hpo.trial_loop import interrupt_handlers

try:
    with interrupt_handlers():
        eval("[os.kill(os.getpid(), signal.SIGTERM)] + [0 for _ in range(10**7)]")
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_interrupt_through_eval_keeps_exit_code(tmp_path: Path) -> None:
    # Run with "python -m", as the hpo command runs: only then does CPython turn the exit into SIGINT.
    package = tmp_path / "interrupted_eval"
    package.mkdir()
    (package / "__main__.py").write_text(_EVAL_INTERRUPTED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])])}

    result = subprocess.run([sys.executable, "-m", "interrupted_eval"], env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 130, result.stderr


def test_run_trials_without_plan_raises(tmp_path: Path) -> None:
    study, backend = _new_study(tmp_path)

    with pytest.raises(StudyError, match="no queued run"):
        run_trials(study, backend, _objective)


def _frozen_kwargs(trial: optuna.trial.FrozenTrial) -> dict:
    return {
        "number": trial.number, "state": TrialState.FAIL, "value": None, "datetime_start": trial.datetime_start,
        "datetime_complete": None, "params": trial.params, "distributions": trial.distributions,
        "user_attrs": trial.user_attrs, "system_attrs": trial.system_attrs, "intermediate_values": {},
        "trial_id": trial._trial_id,
    }


def test_start_run_deadline_after_queue_fill(tmp_path: Path) -> None:
    study, _ = _new_study(tmp_path)

    plan = start_run(study, 300, timeout=60.0)
    filled = time.time()

    assert len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) == 300
    assert plan.deadline is not None
    # Filling 300 trials takes far longer than 0.2 s, so a deadline set before it would fail this.
    assert plan.deadline >= filled + 60.0 - 0.2
    assert load_plan(study).deadline == pytest.approx(plan.deadline)
