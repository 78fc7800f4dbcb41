"""Report epochs and set attributes of running trials with few storage transactions.

``trial.report`` and ``trial.set_user_attr`` each commit one transaction, and each
``trial.should_prune`` reads the study's trials again. On SQLite that costs a few
milliseconds per epoch, a tenth of a short epoch. ``TrialReporter`` keeps a trial's new
intermediate values and user attributes in the trial's in-memory record, decides pruning
from that record and a snapshot of the study's trials, and writes everything queued in one
transaction at most every ``flush_seconds`` and always before the trial is told finished.

Pruning decisions match ``trial.should_prune`` for trials of this process. Trials that
other processes finished during the last ``flush_seconds`` are seen one snapshot later,
and other processes see this process's curves up to ``flush_seconds`` late.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Container, Iterator
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

_logger = logging.getLogger(__name__)

# Longest delay before a reported epoch reaches the storage (and the dashboard).
FLUSH_SECONDS = 2.0


class TrialReporter:
    """Queue epoch reports and user attributes of this process's running trials.

    Call ``flush`` (or ``tell``) before a trial finishes: values written after a trial is
    finished are rejected by the storage.
    """

    def __init__(self, study: optuna.Study, *, flush_seconds: float = FLUSH_SECONDS) -> None:
        if flush_seconds < 0:
            raise ValueError(f"flush_seconds must be >= 0; got {flush_seconds}")
        self.study = study
        self.flush_seconds = flush_seconds
        self.storage_seconds = 0.0
        self._values: list[tuple[optuna.Trial, int, float]] = []
        self._attrs: dict[tuple[int, str], tuple[optuna.Trial, Any]] = {}
        self._last_flush = time.monotonic()
        self._snapshot: _StudySnapshot | None = None

    def report(self, trial: optuna.Trial, value: float, step: int) -> None:
        """Record ``value`` at ``step`` (the epoch index) for pruning; write it at the next flush."""
        frozen = _cached_record(trial)
        if step in frozen.intermediate_values:
            _logger.warning("Trial %d reported step %d twice; the second value is ignored.", trial.number, step)
            return
        frozen.intermediate_values[step] = float(value)
        self._values.append((trial, int(step), float(value)))

    def set_user_attr(self, trial: optuna.Trial, key: str, value: Any) -> None:
        """Set a user attribute in the trial's record; write it at the next flush."""
        _cached_record(trial).user_attrs[key] = value
        self._attrs[(trial.number, key)] = (trial, value)

    def should_prune(self, trial: optuna.Trial) -> bool:
        """Ask the study's pruner about ``trial``'s reported values, like ``trial.should_prune``."""
        started = time.perf_counter()
        if self._snapshot is None or self._snapshot.age() >= self.flush_seconds:
            self._snapshot = _StudySnapshot(self.study)
        decision = self.study.pruner.prune(self._snapshot, trial._get_latest_trial())  # type: ignore[arg-type]
        self.storage_seconds += time.perf_counter() - started
        return decision

    def flush_if_due(self) -> None:
        """Write the queue when ``flush_seconds`` have passed since the last write."""
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write every queued value and attribute in one transaction (one per item off RDB storages)."""
        self._last_flush = time.monotonic()
        if not self._values and not self._attrs:
            return
        started = time.perf_counter()
        values = [(trial._trial_id, step, value) for trial, step, value in self._values]
        attrs = [(trial._trial_id, key, value) for (_, key), (trial, value) in self._attrs.items()]
        self._values.clear()
        self._attrs.clear()
        _write(self.study, values, attrs)
        self.storage_seconds += time.perf_counter() - started

    def tell(self, trial: optuna.Trial, value: float | None = None, *, state: TrialState | None = None) -> FrozenTrial:
        """Flush, then finish ``trial`` with ``value`` or ``state`` through ``study.tell``."""
        self.flush()
        started = time.perf_counter()
        frozen = self.study.tell(trial, value, state=state)
        self.storage_seconds += time.perf_counter() - started
        # This process's own finished trial must count in its next pruning decision. Putting
        # it into the snapshot costs no read, while a new snapshot reads every trial again,
        # several times per epoch in a pack of 8.
        if self._snapshot is not None:
            self._snapshot.update(frozen)
        return frozen


@contextlib.contextmanager
def batched_params(trial: optuna.Trial) -> Iterator[None]:
    """Write the parameters that ``trial`` suggests inside the block in one transaction.

    Each ``trial.suggest_*`` call commits one transaction, about a dozen per trial with the
    default space. On other storages than Optuna's cached RDB storage the block changes nothing.
    """
    storage = getattr(trial, "storage", None)
    backend = getattr(storage, "_backend", None)
    if not isinstance(backend, RDBStorage) or not hasattr(storage, "_studies"):
        yield
        return
    if trial._trial_id not in storage._trial_id_to_study_id_and_number:
        # A worker that took a queued trial with all parameters fixed may not have read the
        # study's trials yet, because no sampler call did. Its cache then lacks the trial,
        # and reading the trials once adds it.
        storage.get_all_trials(trial.study._study_id, deepcopy=False)
    queue = _ParamQueue(storage)
    # NOTE: swaps the trial's storage for a queue and writes through private helpers of
    # Optuna's cached RDB storage (checked with optuna 5.1).
    trial.storage = queue  # type: ignore[assignment]
    try:
        yield
    finally:
        trial.storage = storage
        queue.write()


class _ParamQueue:
    """A storage view whose ``set_trial_param`` queues the parameter instead of committing it."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self._params: list[tuple[int, str, float, Any]] = []

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any) -> None:
        self._params.append((trial_id, param_name, param_value_internal, distribution))

    def write(self) -> None:
        if not self._params:
            return
        from optuna.storages._rdb.storage import _create_scoped_session

        storage, backend = self._storage, self._storage._backend
        with storage._lock:
            with _create_scoped_session(backend.scoped_session) as session:
                for trial_id, name, value, distribution in self._params:
                    study_id, _ = storage._trial_id_to_study_id_and_number[trial_id]
                    known = storage._studies[study_id].param_distribution.get(name)
                    backend._set_trial_param_without_commit(session, trial_id, name, value, distribution, known)
            for trial_id, name, _, distribution in self._params:
                study_id, _ = storage._trial_id_to_study_id_and_number[trial_id]
                storage._studies[study_id].param_distribution.setdefault(name, distribution)
        self._params.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


class DirectReporter:
    """The ``TrialReporter`` interface on the trial's own methods, for trials without a study.

    ``optuna.trial.FixedTrial`` (used to reproduce a trial) has no storage to batch writes to.
    """

    def report(self, trial: Any, value: float, step: int) -> None:
        """Report through ``trial.report``."""
        trial.report(value, step)

    def set_user_attr(self, trial: Any, key: str, value: Any) -> None:
        """Set through ``trial.set_user_attr``."""
        trial.set_user_attr(key, value)

    def should_prune(self, trial: Any) -> bool:
        """Return ``trial.should_prune()``."""
        return bool(trial.should_prune())

    def flush_if_due(self) -> None:
        """Do nothing: every call above writes at once."""

    def flush(self) -> None:
        """Do nothing: every call above writes at once."""


class _StudySnapshot:
    """Study view for pruning decisions, with its trial list read once instead of once per decision."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study
        self._trials = list(study.get_trials(deepcopy=False))
        self._taken = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self._taken

    def update(self, trial: FrozenTrial) -> None:
        """Put ``trial``'s new record in place of its old one, or add it."""
        for index, known in enumerate(self._trials):
            if known.number == trial.number:
                self._trials[index] = trial
                return
        self._trials.append(trial)

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = self._trials if states is None else [t for t in self._trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def _cached_record(trial: optuna.Trial) -> FrozenTrial:
    # NOTE: uses Optuna's private in-memory record of a running trial (checked with
    # optuna 5.1), the one trial.report and trial.should_prune use themselves.
    return trial._cached_frozen_trial


def _write(study: optuna.Study, values: list[tuple[int, int, float]], attrs: list[tuple[int, str, Any]]) -> None:
    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage):
        for trial_id, step, value in values:
            storage.set_trial_intermediate_value(trial_id, step, value)
        for trial_id, key, value in attrs:
            storage.set_trial_user_attr(trial_id, key, value)
        return

    # NOTE: one transaction through RDBStorage's private per-row helpers (checked with
    # optuna 5.1); the public methods commit once per row.
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session) as session:
        for trial_id, step, value in values:
            backend._set_trial_intermediate_value_without_commit(session, trial_id, step, value)
        for trial_id, key, value in attrs:
            backend._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)
