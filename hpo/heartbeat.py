"""Heartbeats of running trials, and failing the trials whose worker died.

Optuna's own heartbeat runs only inside ``study.optimize`` and fails a dead worker's trial
only when another worker starts its next trial. Here a thread in each worker records the
heartbeat of its running trial and also checks the whole study every interval, and a
trial that never got a heartbeat row counts as lost once it has been seen RUNNING without
one for the grace period. A lost trial becomes FAIL with a ``reason``, is marked as not
counted, and its parameters are queued once more (``hpo.run_plan.enqueue_retry``).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from hpo.concurrency import call_with_retries, short_error
from hpo.objective import REASON_ATTR
from hpo.run_plan import COUNTED_ATTR, WORKER_ATTR, enqueue_retry

_logger = logging.getLogger(__name__)


class StaleTrialFinder:
    """Find RUNNING trials of one study whose heartbeat is older than the grace period.

    Ages are measured on the database server's clock, so that workers on machines with
    different clocks agree. A RUNNING trial without a heartbeat row (its worker died right
    after taking it) counts as stale once this finder has seen it so for the grace period.
    """

    def __init__(self, backend: RDBStorage, study_id: int, grace_period: float) -> None:
        self.backend = backend
        self.study_id = study_id
        self.grace_period = grace_period
        self._first_seen_without_heartbeat: dict[int, float] = {}

    def find(self) -> dict[int, float]:
        """Return ``{trial_id: seconds since its last heartbeat}`` for every stale trial."""
        # NOTE: reads Optuna's private table models; checked with Optuna 5.1.
        from optuna.storages._rdb import models

        trials = models.TrialModel.__table__
        heartbeats = models.TrialHeartbeatModel.__table__
        query = (
            sqlalchemy.select(trials.c.trial_id, heartbeats.c.heartbeat)
            .select_from(trials.outerjoin(heartbeats, trials.c.trial_id == heartbeats.c.trial_id))
            .where(trials.c.study_id == self.study_id, trials.c.state == TrialState.RUNNING.name)
        )
        with Session(self.backend.engine) as session:
            now = session.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
            rows = session.execute(query).all()
        now = now.replace(tzinfo=None)

        stale: dict[int, float] = {}
        seen_now = time.monotonic()
        running_without_heartbeat = set()
        for trial_id, heartbeat in rows:
            if heartbeat is None:
                running_without_heartbeat.add(trial_id)
                first_seen = self._first_seen_without_heartbeat.setdefault(trial_id, seen_now)
                if seen_now - first_seen > self.grace_period:
                    stale[trial_id] = seen_now - first_seen
                continue
            age = now - heartbeat.replace(tzinfo=None)
            if age > timedelta(seconds=self.grace_period):
                stale[trial_id] = age.total_seconds()
        for trial_id in set(self._first_seen_without_heartbeat) - running_without_heartbeat:
            del self._first_seen_without_heartbeat[trial_id]
        return stale


def fail_lost_trial(study: optuna.Study, backend: RDBStorage, trial_id: int, reason: str) -> bool:
    """Mark a RUNNING trial whose worker is gone as FAIL, not counted, and queue its retry.

    Only one caller succeeds for a trial, however many try at once: the others, and calls
    on a trial that finished meanwhile, return False and change nothing that counts.

    Returns:
        Whether this call failed the trial.
    """
    try:
        trial = call_with_retries("get_trial", backend.get_trial, trial_id)
        if trial.state != TrialState.RUNNING:
            return False
        # The attributes go first because a finished trial can no longer take any. If the
        # trial finishes between these calls, its state decides: COMPLETE and PRUNED count.
        call_with_retries("set_trial_user_attr", backend.set_trial_user_attr, trial_id, COUNTED_ATTR, False)
        call_with_retries("set_trial_user_attr", backend.set_trial_user_attr, trial_id, REASON_ATTR, reason)
        if not call_with_retries("set_trial_state_values", backend.set_trial_state_values, trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    _logger.warning("Trial %d (worker %s) marked as failed: %s", trial.number, trial.user_attrs.get(WORKER_ATTR, "unknown"), reason)
    enqueue_retry(study, trial)
    return True


def fail_stale_trials(study: optuna.Study, finder: StaleTrialFinder) -> int:
    """Fail every stale trial that ``finder`` reports and queue the retries; return how many."""
    n_failed = 0
    for trial_id, age in call_with_retries("find stale trials", finder.find).items():
        reason = f"lost: no heartbeat for {age:.0f} s, so its worker is presumed dead"
        if fail_lost_trial(study, finder.backend, trial_id, reason):
            n_failed += 1
    return n_failed


class Heartbeat:
    """A daemon thread that records the running trials' heartbeats and fails stale trials.

    Every ``interval`` seconds it records the heartbeat of each trial added with ``add``
    (several for a worker that trains them at once) and then runs ``fail_stale_trials`` on
    the study. Errors are logged and the thread goes on, so that one lock timeout does not
    end the heartbeat.
    """

    def __init__(self, study: optuna.Study, finder: StaleTrialFinder, interval: float) -> None:
        self.study = study
        self.finder = finder
        self.interval = interval
        self._trial_ids: set[int] = set()
        self._last_beat = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpo-heartbeat", daemon=True)
        self._n_errors = 0

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (at most one storage call)."""
        self._stop.set()
        self._thread.join(timeout=max(10.0, 2 * self.interval))

    def add(self, trial_id: int) -> None:
        """Record a heartbeat for ``trial_id`` now and keep doing so, besides the other trials."""
        with self._lock:
            self._trial_ids.add(trial_id)
        self._beat_now(trial_id)

    def discard(self, trial_id: int) -> None:
        """Stop recording heartbeats for ``trial_id``."""
        with self._lock:
            self._trial_ids.discard(trial_id)

    def _beat_now(self, trial_id: int) -> None:
        call_with_retries("record_heartbeat", self.finder.backend.record_heartbeat, trial_id)
        self._last_beat = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                trial_ids = sorted(self._trial_ids)
            described = ", ".join(map(str, trial_ids)) or "none"
            try:
                for trial_id in trial_ids:
                    self.finder.backend.record_heartbeat(trial_id)
                if trial_ids:
                    self._last_beat = time.monotonic()
                fail_stale_trials(self.study, self.finder)
                self._n_errors = 0
            except Exception as err:  # one failed beat must not end the thread; the next one retries
                self._n_errors += 1
                silent_for = time.monotonic() - self._last_beat
                _logger.warning("Heartbeat of trial ids %s failed (%d in a row, last beat %.0f s ago): %s", described, self._n_errors, silent_for, short_error(err))
                if trial_ids and silent_for > self.finder.grace_period:
                    _logger.error("Trial ids %s had no heartbeat for %.0f s; other workers may mark them as lost.", described, silent_for)
