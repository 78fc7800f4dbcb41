"""Helpers of the worker tests: run the hpo command in real processes and read studies back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.run_plan import is_counted
from hpo.storage import with_installed_driver

# A tiny trial: one small hidden layer, a few epochs on the 1,000-row synthetic set.
TINY_SPACE = ["--space", "n_layers=1", "--space", "n_units=8", "--space", "batch_size=128", "--max-epochs", "2"]
# Trials of about half a second, so that spawned workers start in time to take some.
SHORT_SPACE = ["--space", "n_layers=1", "--space", "n_units=8", "--space", "batch_size=16", "--space", "patience=500", "--max-epochs", "20", "--pruner", "none"]
# A trial long enough (a few seconds) to be killed or interrupted while it runs.
LONG_SPACE = ["--space", "n_layers=1", "--space", "n_units=8", "--space", "batch_size=16", "--space", "patience=500", "--max-epochs", "120", "--pruner", "none"]


def hpo_command(*args: str) -> list[str]:
    """Return the command line of ``hpo`` with ``args``, run by this interpreter."""
    return [sys.executable, "-m", "hpo", *args]


def run_hpo(*args: str, cwd: Path, timeout: float = 240, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``hpo`` to its end and return its exit code and output."""
    return subprocess.run(hpo_command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env(env))


def queue_long_trials(storage: str, n_trials: int, max_epochs: int, *, cwd: Path) -> None:
    """Queue ``n_trials`` long trials on study ``shared`` for ``hpo worker``, with a 1 s heartbeat and a 3 s grace period."""
    queued = run_hpo(
        "optimize", "--study", "shared", "--storage", storage, "--n-trials", str(n_trials), "--workers", "0", "--device", "cpu",
        "--heartbeat-interval", "1", "--grace-period", "3", *LONG_SPACE, "--max-epochs", str(max_epochs), cwd=cwd,
    )
    assert queued.returncode == 0, queued.stderr


def start_hpo(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``hpo`` in its own process group (as a shell runs a foreground job)."""
    return subprocess.Popen(hpo_command(*args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(env), start_new_session=True)


def load_trials(study_name: str, storage: str) -> list[FrozenTrial]:
    """Return all trials of a study, read with a plain Optuna storage (with the driver that hpo would pick)."""
    return optuna.load_study(study_name=study_name, storage=with_installed_driver(storage)).get_trials(deepcopy=False)


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll ``condition`` until it returns a true value, and return that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def running_trial_with_worker(study_name: str, storage: str, *, exclude_pid: int | None = None) -> FrozenTrial | None:
    """Return a RUNNING trial that already names its worker (other than process ``exclude_pid``), or None."""
    try:
        trials = load_trials(study_name, storage)
    except KeyError:
        return None
    for trial in trials:
        if trial.state == TrialState.RUNNING and "worker" in trial.user_attrs and worker_pid(trial) != exclude_pid:
            return trial
    return None


def running_trials_of_workers(study_name: str, storage: str, n_workers: int) -> list[FrozenTrial] | None:
    """Return one RUNNING trial of each of ``n_workers`` different workers, or None while fewer run one."""
    try:
        trials = load_trials(study_name, storage)
    except KeyError:
        return None
    by_worker = {trial.user_attrs["worker"]: trial for trial in trials if trial.state == TrialState.RUNNING and "worker" in trial.user_attrs}
    return list(by_worker.values()) if len(by_worker) >= n_workers else None


def process_ended(pid: int) -> bool:
    """Whether the process ``pid`` has exited (gone, or a zombie not reaped yet); Linux only."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # The state follows the command name in brackets, which may itself contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def worker_pid(trial: FrozenTrial) -> int:
    """Return the process id stored in a trial's ``worker`` attribute (``host:pid``)."""
    return int(str(trial.user_attrs["worker"]).rsplit(":", 1)[1])


def assert_goal_met(trials: list[FrozenTrial], n_expected: int) -> None:
    """Check the counted trials, unique numbers and that nothing is left running or waiting."""
    states = Counter(trial.state for trial in trials)
    numbers = [trial.number for trial in trials]
    assert sum(1 for trial in trials if is_counted(trial)) == n_expected, states
    assert len(numbers) == len(set(numbers))
    assert states[TrialState.RUNNING] == 0
    assert states[TrialState.WAITING] == 0


def kill_group(process: subprocess.Popen[str]) -> None:
    """Kill a process started by ``start_hpo`` and its workers, if still there."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HPO_STORAGE", None)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.update(extra or {})
    return env
