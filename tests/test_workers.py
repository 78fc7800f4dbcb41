"""Worker processes on one SQLite study: exact counts, kills, interrupts and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.run_plan import COUNTED_ATTR, RETRY_OF_ATTR
from workers_helpers import (
    LONG_SPACE,
    SHORT_SPACE,
    TINY_SPACE,
    assert_goal_met,
    kill_group,
    load_trials,
    process_ended,
    queue_long_trials,
    run_hpo,
    running_trial_with_worker,
    running_trials_of_workers,
    start_hpo,
    wait_for,
    worker_pid,
)

_READER = """
import sys, time, optuna
storage = optuna.storages.RDBStorage(sys.argv[1])
reads = 0
while True:
    try:
        study = optuna.load_study(study_name="shared", storage=storage)
        study.get_trials(deepcopy=False)
        reads += 1
    except KeyError:
        pass
    time.sleep(0.05)
    if reads and len(sys.argv) > 2 and reads > int(sys.argv[2]):
        break
"""


def test_workers_four_on_sqlite_finish_exact_count(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    # A dashboard-like reader polls the file with Optuna's default settings meanwhile.
    reader = subprocess.Popen([sys.executable, "-c", _READER, storage], stderr=subprocess.PIPE, text=True)
    try:
        result = run_hpo("optimize", "--study", "shared", "--storage", storage, "--n-trials", "20", "--workers", "4", "--device", "cpu", *SHORT_SPACE, cwd=tmp_path)
    finally:
        reader_alive = reader.poll() is None
        reader.kill()
        reader_errors = reader.communicate()[1]

    assert result.returncode == 0, result.stderr
    trials = load_trials("shared", storage)
    assert_goal_met(trials, 20)
    assert len(trials) == 20
    assert len({trial.user_attrs["worker"] for trial in trials}) >= 2
    assert "database is locked" not in result.stderr
    assert reader_alive, reader_errors
    assert "20 trials" in result.stdout
    assert "Worker ended" not in result.stdout


def test_worker_command_joins_queued_study(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    queued = run_hpo("optimize", "--study", "shared", "--storage", storage, "--n-trials", "4", "--workers", "0", "--device", "cpu", *TINY_SPACE, cwd=tmp_path)
    waiting = [t for t in load_trials("shared", storage) if t.state == TrialState.WAITING]

    joined = run_hpo("worker", "--study", "shared", "--storage", storage, "--device", "cpu", cwd=tmp_path)

    assert queued.returncode == 0, queued.stderr
    assert len(waiting) == 4
    assert joined.returncode == 0, joined.stderr
    assert_goal_met(load_trials("shared", storage), 4)
    assert "4 complete" in joined.stdout or "pruned" in joined.stdout


def test_workers_sigkill_of_one_worker_retries_its_trial(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    # Trials of several seconds, so that the spawned worker starts before the first one has run all four.
    process = start_hpo(
        "optimize", "--study", "shared", "--storage", storage, "--n-trials", "4", "--workers", "2", "--device", "cpu",
        *LONG_SPACE, "--max-epochs", "400", cwd=tmp_path,
    )
    try:
        # The optimize process is the first worker itself, so the victim is the spawned one.
        victim = wait_for(lambda: running_trial_with_worker("shared", storage, exclude_pid=process.pid), 120, "a running trial of the spawned worker")
        time.sleep(0.5)
        os.kill(worker_pid(victim), signal.SIGKILL)
        _, stderr = process.communicate(timeout=240)
    finally:
        kill_group(process)

    assert process.returncode == 0, stderr
    trials = load_trials("shared", storage)
    assert_goal_met(trials, 4)
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs[COUNTED_ATTR] is False
    assert "SIGKILL" in killed.user_attrs["reason"]
    retries = [t for t in trials if t.user_attrs.get(RETRY_OF_ATTR) == victim.number]
    assert len(retries) == 1
    assert retries[0].params == killed.params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_worker_killed_alone_failed_by_peer(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    queue_long_trials(storage, 2, 40, cwd=tmp_path)
    doomed = start_hpo("worker", "--study", "shared", "--storage", storage, "--device", "cpu", cwd=tmp_path)
    try:
        victim = wait_for(lambda: running_trial_with_worker("shared", storage), 120, "a running trial")
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
        survivor = run_hpo("worker", "--study", "shared", "--storage", storage, "--device", "cpu", cwd=tmp_path, timeout=400)
    finally:
        kill_group(doomed)

    assert survivor.returncode == 0, survivor.stderr
    trials = load_trials("shared", storage)
    assert_goal_met(trials, 2)
    assert trials[victim.number].state == TrialState.FAIL
    assert "no heartbeat" in trials[victim.number].user_attrs["reason"]
    assert any(t.user_attrs.get(RETRY_OF_ATTR) == victim.number for t in trials)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_workers_interrupt_then_rerun_finishes(tmp_path: Path, signum: int) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    args = ("optimize", "--study", "shared", "--storage", storage, "--n-trials", "10", "--workers", "2", "--device", "cpu", *LONG_SPACE)
    process = start_hpo(*args, cwd=tmp_path)
    try:
        wait_for(lambda: running_trial_with_worker("shared", storage), 120, "a running trial")
        time.sleep(0.5)
        started = time.monotonic()
        if signum == signal.SIGINT:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        else:
            process.send_signal(signal.SIGTERM)  # a service manager signals the main process only
        _, stderr = process.communicate(timeout=60)
        stop_seconds = time.monotonic() - started
    finally:
        kill_group(process)

    interrupted = load_trials("shared", storage)
    assert process.returncode == 130, stderr
    assert stop_seconds < 20
    assert "did not stop" not in stderr
    assert "SIGKILL" not in stderr
    assert stderr.count("hpo: interrupted") == 1, stderr
    assert not [t for t in interrupted if t.state == TrialState.RUNNING]
    reasons = [str(t.user_attrs.get("reason", "")) for t in interrupted]
    assert any("interrupted by" in reason for reason in reasons), (reasons, stderr)

    if signum == signal.SIGINT:
        rerun = run_hpo(*args, cwd=tmp_path, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert_goal_met(load_trials("shared", storage), 10)
        assert "lost, interrupted or cancelled and not counted" in rerun.stdout


def test_workers_stop_when_optimize_killed(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    # Trials of several seconds, so that none of the seen running trials ends before the kill.
    process = start_hpo(
        "optimize", "--study", "shared", "--storage", storage, "--n-trials", "10", "--workers", "3", "--device", "cpu",
        *LONG_SPACE, "--max-epochs", "400", cwd=tmp_path,
    )
    try:
        running = wait_for(lambda: running_trials_of_workers("shared", storage, 3), 120, "three workers with running trials")
        os.kill(process.pid, signal.SIGKILL)
        started = time.monotonic()
        # The workers share the pipes of the killed process, so they are read to the end only once both exited.
        _, stderr = process.communicate(timeout=60)
        stop_seconds = time.monotonic() - started
    finally:
        kill_group(process)

    trials = load_trials("shared", storage)
    spawned = [trial for trial in running if worker_pid(trial) != process.pid]
    assert len(spawned) == 2
    assert stop_seconds < 20
    assert stderr.count("is gone; stopping as on SIGTERM") == 2, stderr
    assert all(process_ended(worker_pid(trial)) for trial in spawned)
    for trial in spawned:
        assert trials[trial.number].user_attrs["reason"] == "interrupted by SIGTERM"
        assert [t.state for t in trials if t.user_attrs.get(RETRY_OF_ATTR) == trial.number] == [TrialState.WAITING]
    # The killed process's own trial waits for the stale-trial check of the next run, as after
    # a one-process run is killed.
    assert [t.number for t in trials if t.state == TrialState.RUNNING] == [t.number for t in running if worker_pid(t) == process.pid]


def test_worker_watches_parent_only_when_spawned(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    queued = run_hpo("optimize", "--study", "shared", "--storage", storage, "--n-trials", "2", "--workers", "0", "--device", "cpu", *TINY_SPACE, cwd=tmp_path)
    assert queued.returncode == 0, queued.stderr

    # A worker whose parent is not the process in HPO_PARENT_PID stops at once; without the variable it runs.
    orphan = run_hpo("worker", "--study", "shared", "--storage", storage, "--device", "cpu", cwd=tmp_path, env={"HPO_PARENT_PID": "1"})
    alone = run_hpo("worker", "--study", "shared", "--storage", storage, "--device", "cpu", cwd=tmp_path)

    assert orphan.returncode == 130, orphan.stderr
    assert "(pid 1) that started this worker is gone" in orphan.stderr
    assert alone.returncode == 0, alone.stderr
    assert_goal_met(load_trials("shared", storage), 2)
