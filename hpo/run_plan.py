"""The goal of one ``hpo optimize`` run, stored on the study, and the queue of trials that meets it.

A run that asks for ``n_trials`` stores its goal as a total of finished trials and puts
that many trials into the study as WAITING trials without parameters. Workers take
WAITING trials one at a time, and Optuna's state change from WAITING to RUNNING lets
exactly one worker take each, so all workers together run exactly the requested number,
however many there are and whenever they join. A trial lost with its worker (killed or
interrupted) does not count: the worker or process that marks it failed puts a new
WAITING trial with its parameters into the queue. A run started again with the same
``n_trials`` after an interruption continues to the stored total instead of adding more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.concurrency import call_with_retries
from hpo.objective import REASON_ATTR

_logger = logging.getLogger(__name__)

RUN_ATTR = "hpo_run"
STOP_ATTR = "hpo_stop_reason"
# Trial user attribute set to False on trials that do not count toward a goal: lost with
# their worker, or cancelled by a later run's smaller goal.
COUNTED_ATTR = "counted"
# Trial user attribute of a trial that reruns a lost trial's parameters: the lost trial's number.
RETRY_OF_ATTR = "retry_of"
# Trial user attribute naming the worker (host:pid) that ran the trial.
WORKER_ATTR = "worker"

# With a 5 s interval and a 30 s grace period, 8 workers on 2 CPU cores marked no healthy
# trial as lost in 3 runs of 200 trials (docs/workers.md). A killed worker's trial is
# found within about grace + interval = 35 s.
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
DEFAULT_GRACE_PERIOD_S = 30.0


@dataclass(frozen=True)
class RunPlan:
    """Goal and worker settings of the latest ``hpo optimize`` run on a study.

    Attributes:
        n_trials: Trials requested by that run; None runs until ``deadline`` or a stop.
        total: Finished trials (counted ones) at which the workers stop; None without ``n_trials``.
        deadline: Unix time after which no worker starts a trial; None for no limit.
        heartbeat_interval: Seconds between heartbeats of a running trial.
        grace_period: Seconds without a heartbeat after which a running trial counts as lost.
    """

    n_trials: int | None
    total: int | None
    deadline: float | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL_S
    grace_period: float = DEFAULT_GRACE_PERIOD_S

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as the JSON-able study attribute."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunPlan:
        """Rebuild the plan from the study attribute."""
        return cls(**{key: values[key] for key in ("n_trials", "total", "deadline", "heartbeat_interval", "grace_period") if key in values})

    def time_left(self) -> float | None:
        """Seconds until the deadline (negative once passed), or None without one."""
        return None if self.deadline is None else self.deadline - time.time()


def is_counted(trial: FrozenTrial) -> bool:
    """Whether a finished trial counts toward the goal: complete, pruned, or failed inside its objective."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get(COUNTED_ATTR, True) is not False


def count_finished(trials: Sequence[FrozenTrial]) -> int:
    """Count the trials that count toward a goal."""
    return sum(1 for trial in trials if is_counted(trial))


def load_plan(study: optuna.Study) -> RunPlan | None:
    """Return the stored plan of the latest run, or None when no run stored one."""
    values = study.user_attrs.get(RUN_ATTR)
    return RunPlan.from_dict(values) if isinstance(values, dict) else None


def stop_reason(study: optuna.Study) -> str | None:
    """Return why a worker stopped the study (too many failures in a row), or None."""
    return study.user_attrs.get(STOP_ATTR) or None


def start_run(
    study: optuna.Study,
    n_trials: int | None,
    *,
    timeout: float | None = None,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL_S,
    grace_period: float = DEFAULT_GRACE_PERIOD_S,
) -> RunPlan:
    """Store the goal of a new run and fill the queue of WAITING trials to meet it.

    A run asks for ``n_trials`` more finished trials. When the previous run asked for the
    same ``n_trials`` and stopped before its total (interrupted, killed, or out of time),
    this run continues to that total instead. WAITING trials beyond a new, smaller goal
    are cancelled: they are marked failed and not counted.

    Args:
        study: The study, already holding its ``hpo_settings``.
        n_trials: Trials to add; None runs until ``timeout`` or an interrupt.
        timeout: Seconds after which no worker starts a new trial; None for no limit.
        heartbeat_interval: Seconds between heartbeats, > 0.
        grace_period: Seconds without a heartbeat after which a trial counts as lost,
            greater than ``heartbeat_interval``.

    Returns:
        The stored plan.
    """
    trials = study.get_trials(deepcopy=False)
    n_finished = count_finished(trials)
    previous = load_plan(study)
    if previous is not None and previous.total is not None and previous.n_trials == n_trials and n_finished < previous.total:
        total: int | None = previous.total
        _logger.info("Continuing the interrupted run on study %r: %d of %d trials left.", study.study_name, previous.total - n_finished, n_trials)
    else:
        total = None if n_trials is None else n_finished + n_trials

    deadline = None if timeout is None else time.time() + timeout
    plan = RunPlan(n_trials=n_trials, total=total, deadline=deadline, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    call_with_retries("set_study_user_attr", study.set_user_attr, RUN_ATTR, plan.to_dict())
    call_with_retries("set_study_user_attr", study.set_user_attr, STOP_ATTR, None)
    if total is not None:
        _fill_queue(study, trials, total - n_finished)
        if timeout is not None:
            # Filling a queue of thousands of trials takes seconds, which the time limit should not include.
            plan = replace(plan, deadline=time.time() + timeout)
            call_with_retries("set_study_user_attr", study.set_user_attr, RUN_ATTR, plan.to_dict())
    return plan


def enqueue_retry(study: optuna.Study, lost: FrozenTrial) -> None:
    """Queue a rerun of a lost trial's parameters, once; a lost rerun gets a fresh trial instead."""
    if RETRY_OF_ATTR in lost.user_attrs:
        _logger.info("Trial %d was already a retry; queuing a trial with new parameters in its place.", lost.number)
        call_with_retries("enqueue_trial", study.enqueue_trial, {})
        return
    call_with_retries("enqueue_trial", study.enqueue_trial, dict(lost.params), user_attrs={RETRY_OF_ATTR: lost.number})
    _logger.info("Queued a retry of trial %d with its parameters.", lost.number)


def _fill_queue(study: optuna.Study, trials: Sequence[FrozenTrial], n_open: int) -> None:
    # n_open: trials still needed, of which the RUNNING and WAITING ones are under way.
    running = [t for t in trials if t.state == TrialState.RUNNING]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    n_missing = n_open - len(running) - len(waiting)
    for _ in range(n_missing):
        call_with_retries("enqueue_trial", study.enqueue_trial, {})
    if n_missing < 0:
        surplus = waiting[n_missing:]
        for trial in surplus:
            _cancel_waiting(study, trial)
        _logger.info("Cancelled %d waiting trials beyond the new goal.", len(surplus))


def _cancel_waiting(study: optuna.Study, trial: FrozenTrial) -> None:
    storage = study._storage
    try:
        call_with_retries("set_trial_user_attr", storage.set_trial_user_attr, trial._trial_id, COUNTED_ATTR, False)
        call_with_retries("set_trial_user_attr", storage.set_trial_user_attr, trial._trial_id, REASON_ATTR, "cancelled: a later run set a smaller goal")
        call_with_retries("set_trial_state_values", storage.set_trial_state_values, trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        # A worker took and finished it meanwhile, which is as good.
        pass
