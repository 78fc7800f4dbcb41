"""The loop of one worker: take a queued trial, run it, record its end, and go on.

It replaces ``study.optimize`` so that a worker runs only queued trials (an exact total
across workers, see ``hpo.run_plan``), keeps a heartbeat for its trial, survives any
exception inside a trial, and leaves no RUNNING trial behind when it is interrupted.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event
from sqlalchemy.engine import Engine

from hpo.concurrency import call_with_retries, is_transient, short_error
from hpo.device import free_device_memory
from hpo.exceptions import StudyError
from hpo.heartbeat import Heartbeat, StaleTrialFinder, fail_lost_trial, fail_stale_trials
from hpo.objective import REASON_ATTR
from hpo.run_plan import COUNTED_ATTR, STOP_ATTR, WORKER_ATTR, RunPlan, count_finished, load_plan, stop_reason

_logger = logging.getLogger(__name__)

# Consecutive failed trials after which a worker stops the study: something is wrong beyond one trial.
MAX_CONSECUTIVE_FAILURES = 10

Callback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass
class LoopStats:
    """Trials that one worker ended, by outcome."""

    n_complete: int = 0
    n_pruned: int = 0
    n_failed: int = 0
    n_dropped: int = 0
    last_reason: str = ""


def worker_label() -> str:
    """Return ``host:pid``, the name of this worker stored on each of its trials."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_trials(
    study: optuna.Study,
    backend: RDBStorage,
    objective: Callable[[optuna.Trial], float],
    *,
    device: torch.device | None = None,
    callbacks: Sequence[Callback] = (),
) -> LoopStats:
    """Run queued trials of ``study`` until the queue is empty, the deadline passes or the study stops.

    Args:
        study: The study, loaded with its sampler and pruner from ``backend``.
        backend: The study's RDB storage (heartbeats and stale-trial checks use it directly).
        objective: Returns a trial's value; raises ``optuna.TrialPruned`` to prune it.
        device: Device whose cached memory is released after each trial.
        callbacks: Called with the study and each finished trial, as in ``study.optimize``.

    Returns:
        The trials this worker ended, by outcome.

    Raises:
        StudyError: When the study has no run plan, or trials failed too often in a row.
        KeyboardInterrupt: On SIGINT (or SIGTERM inside ``interrupt_handlers``), after
            the running trial was marked as failed and queued again.
    """
    with HeldTrials(study, backend, callbacks=callbacks) as held_trials:
        while True:
            trial = held_trials.take()
            if trial is None:
                if held_trials.should_wait():
                    time.sleep(min(held_trials.heartbeat_interval, 1.0))
                    continue
                break

            frozen = _run_one(study, backend, objective, trial, held_trials)
            if device is not None and device.type != "cpu":
                if frozen.state == TrialState.FAIL:
                    # The exception is gone now; collecting frees GPU tensors that its traceback
                    # held in reference cycles (after an out-of-memory error, say).
                    gc.collect()
                free_device_memory(device)
            held_trials.ended(frozen)
    return held_trials.stats


class HeldTrials:
    """The queued trials that one worker takes, trains (one or several at a time) and ends.

    ``run_trials`` and ``hpo.pack_runner.run_packed`` share it. Trials come from the queue
    of the run plan, each gets a heartbeat, and the stale-trial check runs. Outcomes are
    counted, and too many failures in a row stop the study. When the block ends by an
    exception (an interrupt at any line, a storage error), every held trial is marked
    failed and queued again.

    Raises:
        StudyError: When the study has no run plan (on entering), or trials failed too
            often in a row (in ``ended``).
    """

    def __init__(self, study: optuna.Study, backend: RDBStorage, *, callbacks: Sequence[Callback] = ()) -> None:
        plan = load_plan(study)
        if plan is None:
            raise StudyError(f"study {study.study_name!r} has no queued run; start one with 'hpo optimize --study {study.study_name}'.")
        self.study = study
        self.backend = backend
        self.callbacks = callbacks
        self.stats = LoopStats()
        self.trial_ids: set[int] = set()
        self.heartbeat_interval = plan.heartbeat_interval
        self._plan = plan
        self._is_stopped = False
        self._finder = StaleTrialFinder(backend, study._study_id, plan.grace_period)
        self._heartbeat = Heartbeat(study, self._finder, plan.heartbeat_interval)
        self._failures = _FailureRun()
        self._label = worker_label()

    def __enter__(self) -> HeldTrials:
        watch_storage(self.backend)
        call_with_retries("fail stale trials", fail_stale_trials, self.study, self._finder)
        self._heartbeat.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, traceback: types.TracebackType | None) -> None:
        try:
            if err is not None and self.trial_ids:
                reason = _release_reason(err, len(self.trial_ids))
                for trial_id in sorted(self.trial_ids):
                    self._heartbeat.discard(trial_id)
                    _release_trial(self.study, self.backend, trial_id, reason)
                self.trial_ids.clear()
        finally:
            self._heartbeat.stop()

    def take(self) -> optuna.Trial | None:
        """Take the next queued trial and start its heartbeat; None when there is none to take now."""
        plan = _current_plan(self.study)
        if plan is None or not _should_continue(self.study, plan):
            self._is_stopped = True
            return None
        self._plan = plan
        with _interrupts.deferred():
            trial_id = _take_trial(self.study, self.backend, plan)
            if trial_id is not None:
                self.trial_ids.add(trial_id)
                self._heartbeat.add(trial_id)
                call_with_retries("set_trial_user_attr", self.backend.set_trial_user_attr, trial_id, WORKER_ATTR, self._label)
        if _interrupts.pending:
            raise KeyboardInterrupt(_interrupts.signal_name)
        if trial_id is None:
            return None
        # Creating the trial runs the sampler, so an interrupt may arrive here; __exit__ releases the trial.
        return optuna.trial.Trial(self.study, trial_id)

    def should_wait(self) -> bool:
        """Return whether to wait and take again: the queue is empty, but other workers' trials may still be queued again.

        After the run's deadline, or once another worker stopped the study, there is nothing to wait for.
        """
        return not self._is_stopped and _should_wait_for_others(self.study, self.backend, self._plan)

    def lose(self, trial_id: int, reason: str) -> None:
        """Stop the heartbeat of a held trial, then mark it failed and queue it again (``fail_lost_trial``)."""
        self._heartbeat.discard(trial_id)
        fail_lost_trial(self.study, self.backend, trial_id, reason)

    def ended(self, frozen: FrozenTrial) -> None:
        """Record the end of a held trial: stop its heartbeat, count its outcome and run the callbacks."""
        self.trial_ids.discard(frozen._trial_id)
        self._heartbeat.discard(frozen._trial_id)
        _count(self.stats, frozen)
        for callback in self.callbacks:
            callback(self.study, frozen)

        self._failures.add(frozen)
        if self._failures.count >= MAX_CONSECUTIVE_FAILURES:
            message = f"stopped after {self._failures.count} failed trials in a row; last reason: {self._failures.last_reason}"
            call_with_retries("set_study_user_attr", self.study.set_user_attr, STOP_ATTR, message)
            raise StudyError(message)


@contextmanager
def interrupt_handlers() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into one ``KeyboardInterrupt`` in the main thread, inside the block.

    A signal that arrives while a worker takes a trial from the queue waits until the
    trial is registered, so that the trial gets marked and queued again. A signal that
    arrives during a storage call waits until the call ends. Later signals are ignored
    while the process stops. Use it in the main thread of a program that runs trials,
    such as the ``hpo`` command; the previous handlers return when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    _interrupts.reset()
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)
    previous = {signum: signal.getsignal(signum) for signum in signals}
    previous_unraisable_hook = sys.unraisablehook
    signal.signal(signal.SIGINT, _interrupts.handle)
    signal.signal(signal.SIGTERM, _interrupts.handle)
    signal.signal(signal.SIGALRM, _interrupts.retry)
    sys.unraisablehook = _interrupts.unraisable_hook(previous_unraisable_hook)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_unraisable_hook
        if _interrupts.signal_name is not None:
            # CPython (3.11) marks an interrupt that leaves an eval() of a string, as SQLAlchemy
            # evaluates annotations, as unhandled for good, and a ``python -m`` process then
            # ends by SIGINT instead of its exit code. An eval() that ends normally clears the mark.
            eval("None")


def watch_storage(backend: RDBStorage) -> None:
    """Keep interrupts out of this storage's transactions in the main thread (see ``interrupt_handlers``)."""
    _interrupts.watch(backend.engine)


def _current_plan(study: optuna.Study) -> RunPlan | None:
    return call_with_retries("get_study_user_attrs", load_plan, study)


def _should_continue(study: optuna.Study, plan: RunPlan) -> bool:
    reason = call_with_retries("get_study_user_attrs", stop_reason, study)
    if reason:
        _logger.warning("Study %r was stopped by another worker: %s", study.study_name, reason)
        return False
    time_left = plan.time_left()
    return time_left is None or time_left > 0


def _should_wait_for_others(study: optuna.Study, backend: RDBStorage, plan: RunPlan) -> bool:
    """Whether to wait while the queue is empty: other workers' trials may still be lost and queued again."""
    if plan.total is None:
        return False
    trials = call_with_retries("get_all_trials", backend.get_all_trials, study._study_id, deepcopy=False)
    if count_finished(trials) >= plan.total:
        return False
    return any(trial.state == TrialState.RUNNING for trial in trials)


def _take_trial(study: optuna.Study, backend: RDBStorage, plan: RunPlan) -> int | None:
    """Move one WAITING trial to RUNNING and return its id; None when the queue is empty.

    Without a total (a run until a deadline), a new trial is created when the queue is empty.
    """
    study_id = study._study_id
    waiting = call_with_retries("get_all_trials", backend.get_all_trials, study_id, deepcopy=False, states=(TrialState.WAITING,))
    for trial in waiting:
        try:
            if call_with_retries("set_trial_state_values", backend.set_trial_state_values, trial._trial_id, TrialState.RUNNING):
                return trial._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # cancelled meanwhile
    if plan.total is not None:
        return None
    return call_with_retries("create_new_trial", backend.create_new_trial, study_id)


def _run_one(
    study: optuna.Study,
    backend: RDBStorage,
    objective: Callable[[optuna.Trial], float],
    trial: optuna.Trial,
    held_trials: HeldTrials,
) -> FrozenTrial:
    value: float | None = None
    state = TrialState.COMPLETE
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except Exception as err:
        if is_transient(err):
            # The storage failed, not the trial: run its parameters again rather than count it.
            held_trials.lose(trial._trial_id, f"lost: storage error {type(err).__name__}")
            return call_with_retries("get_trial", backend.get_trial, trial._trial_id)
        state = TrialState.FAIL
        _set_reason_if_missing(backend, trial._trial_id, err)
        _logger.debug("Trial %d raised", trial.number, exc_info=True)

    return _tell(study, trial, value, state)


def _release_reason(err: BaseException, n_trials: int) -> str:
    """Return the failure reason of the trials a worker releases because of ``err``; log an interrupt once."""
    if not isinstance(err, KeyboardInterrupt):
        return f"lost: its worker stopped on {type(err).__name__}"
    name = _interrupts.signal_name or type(err).__name__
    if n_trials == 1:
        _logger.warning("Received %s; marking the running trial as interrupted and stopping.", name)
    else:
        _logger.warning("Received %s; marking the %d running trials as interrupted and stopping.", name, n_trials)
    return f"interrupted by {name}"


def _release_trial(study: optuna.Study, backend: RDBStorage, trial_id: int, reason: str) -> None:
    """Mark the RUNNING trial of a worker that stops as failed with ``reason`` and queue its retry."""
    try:
        fail_lost_trial(study, backend, trial_id, reason)
    except Exception as release_err:  # the stop goes on, and the stale-trial check of other workers fails the trial later
        _logger.error(
            "Could not mark trial id %d as failed (%s); another worker will once its heartbeat is older than the grace period.",
            trial_id, short_error(release_err),
        )


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | None, state: TrialState) -> FrozenTrial:
    try:
        if state == TrialState.COMPLETE:
            frozen = call_with_retries("tell", study.tell, trial, value, skip_if_finished=True)
        else:
            frozen = call_with_retries("tell", study.tell, trial, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        frozen = study._storage.get_trial(trial._trial_id)
    if frozen.state != state:
        _logger.warning(
            "Trial %d was marked %s by another worker while it ran (%s); its result is dropped and its parameters run again.",
            trial.number, frozen.state.name, frozen.user_attrs.get(REASON_ATTR, "no reason"),
        )
    return frozen


def _set_reason_if_missing(backend: RDBStorage, trial_id: int, err: Exception) -> None:
    try:
        if REASON_ATTR not in backend.get_trial(trial_id).user_attrs:
            backend.set_trial_user_attr(trial_id, REASON_ATTR, f"{type(err).__name__}: {err}"[:300])
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


def _count(stats: LoopStats, trial: FrozenTrial) -> None:
    if trial.state == TrialState.COMPLETE:
        stats.n_complete += 1
    elif trial.state == TrialState.PRUNED:
        stats.n_pruned += 1
    elif trial.user_attrs.get(COUNTED_ATTR, True) is False:
        stats.n_dropped += 1
    else:
        stats.n_failed += 1
        stats.last_reason = str(trial.user_attrs.get(REASON_ATTR, "unknown reason"))


class _FailureRun:
    """Length of the current run of failed trials of this worker, and the last reason."""

    def __init__(self) -> None:
        self.count = 0
        self.last_reason = ""

    def add(self, trial: FrozenTrial) -> None:
        if trial.state != TrialState.FAIL or trial.user_attrs.get(COUNTED_ATTR, True) is False:
            if trial.state != TrialState.FAIL:
                self.count = 0
            return
        self.count += 1
        self.last_reason = str(trial.user_attrs.get(REASON_ATTR, "unknown reason"))


class _Interrupts:
    """SIGINT/SIGTERM handling: raise ``KeyboardInterrupt`` once, never inside a storage call.

    An exception raised in the middle of a database transaction can leave a pooled
    connection with SQLite's write lock, which would block every worker. So while the
    main thread uses a storage connection, the interrupt waits and is retried every
    50 ms (SIGALRM) until the connection is back in the pool. Inside ``deferred()`` it
    waits in ``pending`` for the caller to handle.
    """

    def __init__(self) -> None:
        self._watched: set[int] = set()
        self.reset()

    def reset(self) -> None:
        """Forget an earlier interrupt, as at the start of a new command."""
        self.signal_name: str | None = None
        self.pending = False
        self._deferring = False
        self._n_connections = 0
        self._n_waits = 0

    def watch(self, engine: Engine) -> None:
        """Count the connections of ``engine`` that the main thread has checked out."""
        if id(engine) in self._watched:
            return
        self._watched.add(id(engine))
        event.listen(engine, "checkout", self._on_checkout)
        event.listen(engine, "checkin", self._on_checkin)

    def handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.signal_name is not None:
            return  # already stopping; later signals are ignored
        self.signal_name = signal.Signals(signum).name
        self.pending = True
        self._raise_when_safe()

    def retry(self, signum: int, frame: types.FrameType | None) -> None:
        if self.pending:
            self._raise_when_safe()

    def unraisable_hook(self, previous: Callable[[Any], object]) -> Callable[[Any], object]:
        """Return a ``sys.unraisablehook`` that raises a swallowed interrupt again.

        Python runs a signal handler between any two bytecodes, also inside a weakref
        callback, a ``__del__`` method or a garbage collector callback. An exception raised
        there cannot propagate: Python passes it to ``sys.unraisablehook`` and goes on. SQLAlchemy
        and torch run such callbacks all the time, so under load an interrupt landed there
        now and then, and the worker ran on, ignoring later signals, until it was killed.
        The hook puts such an interrupt back in ``pending`` and raises it again 10 ms later.
        Other unraisable exceptions go to ``previous``.
        """

        def hook(unraisable: Any) -> object:
            if not isinstance(unraisable.exc_value, KeyboardInterrupt) or self.signal_name is None:
                return previous(unraisable)
            _logger.debug("The %s interrupt was raised inside %r, which ignores exceptions; raising it again.", self.signal_name, unraisable.object)
            self.pending = True
            signal.setitimer(signal.ITIMER_REAL, 0.01)
            return None

        return hook

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a signal that arrives inside the block in ``pending`` instead of raising."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def _raise_when_safe(self) -> None:
        if self._deferring:
            return
        # After 2 s of waiting, the count is presumed wrong (a connection lost without
        # check-in), and the interrupt is raised anyway.
        if self._n_connections > 0 and self._n_waits < 40:
            self._n_waits += 1
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        self.pending = False
        raise KeyboardInterrupt(self.signal_name)

    def _on_checkout(self, *args: object) -> None:
        if threading.current_thread() is threading.main_thread():
            self._n_connections += 1

    def _on_checkin(self, *args: object) -> None:
        if threading.current_thread() is threading.main_thread():
            self._n_connections = max(0, self._n_connections - 1)


_interrupts = _Interrupts()
