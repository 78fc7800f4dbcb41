"""A progress bar over a whole study, counted from the trials in storage so that it includes every worker."""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import IO, Any

import optuna
from tqdm import tqdm

_logger = logging.getLogger(__name__)

_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@dataclass(frozen=True)
class TrialCounts:
    """Trials of a study by state, and its best value so far (None before the first finite COMPLETE)."""

    complete: int
    pruned: int
    failed: int
    running: int
    best_value: float | None

    @property
    def n_finished(self) -> int:
        """Trials that reached COMPLETE, PRUNED or FAIL."""
        return self.complete + self.pruned + self.failed


def count_trials(study: optuna.Study) -> TrialCounts:
    """Count a study's trials by state from its storage, all workers included."""
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    by_state = {state: 0 for state in optuna.trial.TrialState}
    for trial in trials:
        by_state[trial.state] += 1
    values = [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    best: float | None = None
    if values:
        best = max(values) if study.direction == optuna.study.StudyDirection.MAXIMIZE else min(values)
    return TrialCounts(
        complete=by_state[optuna.trial.TrialState.COMPLETE],
        pruned=by_state[optuna.trial.TrialState.PRUNED],
        failed=by_state[optuna.trial.TrialState.FAIL],
        running=by_state[optuna.trial.TrialState.RUNNING],
        best_value=best,
    )


class StudyProgress:
    """Progress bar of the trials that finish in a study while it is open, whichever worker ran them.

    A background thread reads the trial counts from storage every ``interval_s`` seconds.
    Calling the object, which is also an Optuna callback, refreshes the bar at once. The bar
    counts the trials finished since it opened, against ``n_trials`` (None: no total, as
    for a run limited by a timeout only).

    Use as a context manager::

        with StudyProgress(study, n_trials=50) as progress:
            study.optimize(objective, n_trials=50, callbacks=[progress])
    """

    def __init__(self, study: optuna.Study, n_trials: int | None, *, interval_s: float = 1.0, file: IO[str] | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0; got {interval_s}.")
        self.study = study
        self.n_trials = n_trials
        self.interval_s = interval_s
        self._file = file
        self._baseline = 0
        self._bar: tqdm[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> StudyProgress:
        self._baseline = count_trials(self.study).n_finished
        self._bar = tqdm(total=self.n_trials, desc=self.study.study_name, unit="trial", file=self._file, dynamic_ncols=True, leave=True)
        self._thread = threading.Thread(target=self._poll, name="hpo-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.refresh()
        if self._bar is not None:
            self._bar.close()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Read the counts from storage and redraw the bar."""
        try:
            counts = count_trials(self.study)
        except Exception as err:  # noqa: BLE001 - a failed read must not stop the trials; the next poll retries.
            _logger.debug("Progress bar could not read the trial counts: %s", err)
            return
        with self._lock:
            if self._bar is None:
                return
            self._bar.n = max(0, counts.n_finished - self._baseline)
            self._bar.set_postfix_str(describe_counts(counts), refresh=False)
            self._bar.refresh()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()


def describe_counts(counts: TrialCounts) -> str:
    """Return e.g. ``best 0.91234 | 12 complete, 3 pruned, 0 failed, 2 running``."""
    best = "none" if counts.best_value is None else f"{counts.best_value:.5f}"
    text = f"best {best} | {counts.complete} complete, {counts.pruned} pruned, {counts.failed} failed"
    if counts.running:
        text += f", {counts.running} running"
    return text


class ProgressLogHandler(logging.StreamHandler):
    """A stream handler that writes through tqdm, so that log lines do not break an open progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - the logging contract: report and carry on
            self.handleError(record)
