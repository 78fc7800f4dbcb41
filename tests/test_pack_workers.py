"""Packed trials take queued trials like any worker: exact counts, heartbeats, interrupts and lost workers."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

from optuna.trial import TrialState

from hpo.run_plan import COUNTED_ATTR, RETRY_OF_ATTR
from workers_helpers import LONG_SPACE, assert_goal_met, kill_group, load_trials, queue_long_trials, run_hpo, start_hpo, wait_for

# Trials that differ in depth and width, so that packs mix them, and stay short.
MIXED_SPACE = [
    "--space", "n_layers=[1,3]", "--space", "n_units=[4,16]", "--space", "batch_size=16", "--space", "patience=500",
    "--max-epochs", "80", "--pruner", "none",
]


def _running(study_name: str, storage: str, n_trials: int) -> list | None:
    try:
        trials = load_trials(study_name, storage)
    except KeyError:
        return None
    running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs and t.params]
    return running if len(running) >= n_trials else None


def test_packed_workers_finish_exact_count(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"

    result = run_hpo(
        "optimize", "--study", "shared", "--storage", storage, "--n-trials", "12", "--workers", "2", "--pack", "4",
        "--device", "cpu", *MIXED_SPACE, cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    trials = load_trials("shared", storage)
    assert_goal_met(trials, 12)
    assert len(trials) == 12
    # This process is the first worker, and the spawned one logs its pack size as it joins.
    assert "Training up to 4 trials at once in packs." in result.stderr
    assert result.stderr.count("packs of up to 4 trials") == 1
    by_worker = defaultdict(list)
    for trial in trials:
        by_worker[trial.user_attrs["worker"]].append(trial)
    assert len(by_worker) == 2
    # Within one worker, packed trials train at the same time: some start before another ends.
    overlapping = [
        (a.number, b.number)
        for own in by_worker.values() for a in own for b in own
        if a.number < b.number and a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
    ]
    assert overlapping
    assert len({t.params["n_layers"] for t in trials}) >= 2


def test_packed_interrupt_fails_every_member_then_rerun_finishes(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    args = ("optimize", "--study", "shared", "--storage", storage, "--n-trials", "6", "--pack", "3", "--device", "cpu", *LONG_SPACE)
    process = start_hpo(*args, cwd=tmp_path)
    try:
        wait_for(lambda: _running("shared", storage, 3), 120, "three running packed trials")
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        kill_group(process)

    interrupted = load_trials("shared", storage)
    assert process.returncode == 130, stderr
    assert not [t for t in interrupted if t.state == TrialState.RUNNING]
    released = [t for t in interrupted if "interrupted by SIGINT" in str(t.user_attrs.get("reason", ""))]
    assert len(released) == 3, stderr
    assert all(t.state == TrialState.FAIL and t.user_attrs[COUNTED_ATTR] is False for t in released)
    retried = {t.user_attrs.get(RETRY_OF_ATTR) for t in interrupted}
    assert {t.number for t in released} <= retried

    rerun = run_hpo(*args, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert_goal_met(load_trials("shared", storage), 6)


def test_packed_worker_killed_members_failed_by_peer(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    queue_long_trials(storage, 3, 400, cwd=tmp_path)
    doomed = start_hpo("worker", "--study", "shared", "--storage", storage, "--device", "cpu", "--pack", "2", cwd=tmp_path)
    try:
        victims = wait_for(lambda: _running("shared", storage, 2), 120, "two running packed trials")
        time.sleep(2.5)  # a few heartbeats of both trials
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
        survivor = run_hpo("worker", "--study", "shared", "--storage", storage, "--device", "cpu", "--pack", "2", cwd=tmp_path, timeout=400)
    finally:
        kill_group(doomed)

    assert survivor.returncode == 0, survivor.stderr
    trials = load_trials("shared", storage)
    assert_goal_met(trials, 3)
    with sqlite3.connect(tmp_path / "shared.db") as connection:
        beaten = {row[0] for row in connection.execute("SELECT trial_id FROM trial_heartbeats")}
    for victim in victims:
        lost = trials[victim.number]
        assert lost.state == TrialState.FAIL
        assert "no heartbeat for" in lost.user_attrs["reason"]
        assert victim._trial_id in beaten
        assert any(t.user_attrs.get(RETRY_OF_ATTR) == victim.number for t in trials)
