"""Worker processes: start them on one study and watch them, or run this process as one.

Each worker is a fresh interpreter running ``hpo worker``, never a fork, so that no
CUDA context or torch thread pool is inherited. Its environment pins its GPU and its
thread count before torch starts (``hpo.device.plan_placements``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from hpo.concurrency import short_error
from hpo.device import WorkerPlacement, default_threads, resolve_device, set_torch_threads
from hpo.exceptions import StudyError
from hpo.heartbeat import StaleTrialFinder, fail_lost_trial, fail_stale_trials
from hpo.pack_runner import choose_pack_size
from hpo.parent_watch import PARENT_PID_ENV, ParentWatch
from hpo.prepare import load_and_split
from hpo.run_plan import WORKER_ATTR, count_finished, load_plan, stop_reason
from hpo.storage import STORAGE_ENV, load_study, mask_password, open_storage, resolve_storage_url, study_settings
from hpo.events import log_trial_end
from hpo.study import StudySetup, build_objective, build_pruner, run_queued_trials
from hpo.trial_loop import LoopStats, watch_storage

_logger = logging.getLogger(__name__)

# Environment variable with a worker's index among the processes of one run (seeds its sampler).
WORKER_INDEX_ENV = "HPO_WORKER_INDEX"
# Seconds the workers get to mark their trials after SIGTERM before they are killed.
STOP_TIMEOUT_S = 15.0
_POLL_S = 0.2


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    placement: WorkerPlacement
    cleaned: bool = False

    @property
    def label(self) -> str:
        return f"{socket.gethostname()}:{self.process.pid}"


def run_worker(study_name: str, storage: str | None = None, *, device: str = "auto", n_threads: int | None = None, pack: int | str = 1) -> LoopStats:
    """Join an existing study as one worker and run its queued trials.

    The study stores its data, search space and settings, so nothing else is needed; the
    data file must be readable at the stored path on this machine. A worker started by
    ``run_workers`` (``$HPO_PARENT_PID`` set) stops as on SIGTERM once that process is gone.

    Args:
        study_name: The study to join.
        storage: Its storage URL; default ``$HPO_STORAGE``, else ``sqlite:///study_db/<study>.db``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        n_threads: Torch threads of this process (default: ``$HPO_TORCH_THREADS``, else 1 on
            a CPU and torch's default on other devices).
        pack: Most trials of this worker trained together (``hpo.pack``), or ``auto`` to
            choose from the training rows and the device; a study with cross-validation
            trains one trial at a time.

    Returns:
        The trials this worker ended, by outcome.

    Raises:
        InputError: For a bad device or thread count, or stored data that cannot be read.
        StudyError: When the study is missing, has no queued run, or trials keep failing.
        StorageError: When the storage cannot be opened.
    """
    parent_watch = ParentWatch.from_env()
    if parent_watch is not None:
        parent_watch.start()
    try:
        return _join_and_run(study_name, storage, device=device, n_threads=n_threads, pack=pack)
    finally:
        if parent_watch is not None:
            parent_watch.stop()


def _join_and_run(study_name: str, storage: str | None, *, device: str, n_threads: int | None, pack: int | str) -> LoopStats:
    torch_device = resolve_device(device)
    set_torch_threads(default_threads(torch_device, n_threads))
    url = resolve_storage_url(storage, study_name)
    setup = StudySetup.from_dict(study_settings(load_study(study_name, url)))
    table, split_indices = load_and_split(setup.data)

    backend = open_storage(url, create=False)
    n_existing = len(backend.get_all_trials(backend.get_study_id_from_name(study_name), deepcopy=False))
    index = int(os.environ.get(WORKER_INDEX_ENV, os.getpid()))
    study = optuna.load_study(
        study_name=study_name,
        storage=backend,
        sampler=optuna.samplers.TPESampler(seed=(setup.seed + n_existing + 7919 * (index + 1)) % 2**31),
        pruner=build_pruner(setup.pruner, setup.space.max_epochs, n_folds=setup.cv),
    )
    objective, parts = build_objective(setup, table, split_indices, torch_device)
    pack_size = 1 if setup.cv else choose_pack_size(len(parts[0].y_train), torch_device) if pack == "auto" else int(pack)
    if setup.cv and pack not in (1, "auto"):
        _logger.warning("Study %r cross-validates each trial on %d folds, so --pack %s is ignored and trials run one at a time.", study_name, setup.cv, pack)
    _logger.info(
        "Worker %d joined study %r in %s on %s with %d torch threads%s.", os.getpid(), study_name, mask_password(url),
        torch_device, set_torch_threads(), f" and packs of up to {pack_size} trials" if pack_size > 1 else "",
    )
    return run_queued_trials(study, backend, setup, objective, parts[0], torch_device, pack_size=pack_size, callbacks=[log_trial_end])


def run_workers(
    study: optuna.Study,
    backend: RDBStorage,
    storage_url: str,
    placements: Sequence[WorkerPlacement],
    *,
    worker_args: Sequence[str] = (),
    stop_timeout: float = STOP_TIMEOUT_S,
    local_run: Callable[[], object] | None = None,
) -> None:
    """Start one ``hpo worker`` process per placement on ``study`` and wait until all end.

    With ``local_run``, this process is the first worker: it starts processes for the
    other placements and then runs ``local_run`` (its own trial loop, on the device of the
    first placement) while a thread watches the processes. Its first trial then starts
    without waiting for a new interpreter to import torch and load the data.

    While they run, this process fails the trials of workers that died and, every
    heartbeat interval, any stale trial of the study, so that no trial stays RUNNING.
    On ``KeyboardInterrupt`` (SIGINT, or SIGTERM inside ``hpo.trial_loop.interrupt_handlers``), every worker
    gets SIGTERM, then SIGKILL after ``stop_timeout`` seconds, and their trials are
    failed and queued again before the interrupt is raised on.

    Args:
        study: The study with a stored run plan (``hpo.run_plan.start_run``).
        backend: Its RDB storage.
        storage_url: The storage URL, passed to the workers in ``$HPO_STORAGE``, so that a
            password in it never shows in the process list.
        placements: One per worker process.
        worker_args: Extra ``hpo`` options for each worker, such as ``--quiet``.
        stop_timeout: Seconds between SIGTERM and SIGKILL when stopping.
        local_run: Runs this process's share of the trials; it must take queued trials
            (``hpo.trial_loop.run_trials`` or ``hpo.pack_runner.run_packed``).

    Raises:
        StudyError: When a worker stopped the study, or the workers ended before the goal.
        KeyboardInterrupt: When interrupted, after the workers stopped.
    """
    plan = load_plan(study)
    if plan is None:
        raise StudyError(f"study {study.study_name!r} has no queued run.")
    watch_storage(backend)
    finder = StaleTrialFinder(backend, study._study_id, plan.grace_period)
    first = 1 if local_run is not None else 0
    workers = [_start(study.study_name, storage_url, index, placements[index], worker_args) for index in range(first, len(placements))]
    try:
        if local_run is not None:
            _run_beside(local_run, lambda stop: _watch(study, backend, finder, workers, plan.heartbeat_interval, stop=stop))
        _watch(study, backend, finder, workers, plan.heartbeat_interval)
    except BaseException as err:
        cause = "an interrupt" if isinstance(err, KeyboardInterrupt) else type(err).__name__
        _logger.warning("Stopping %d worker processes after %s.", len(workers), cause)
        _stop(workers, stop_timeout)
        _clean_up_ended(study, backend, workers)
        raise
    _clean_up_ended(study, backend, workers)
    _check_outcome(study, workers)


def _start(study_name: str, storage_url: str, index: int, placement: WorkerPlacement, worker_args: Sequence[str]) -> _Worker:
    env = dict(os.environ)
    env.update(placement.env)
    env[STORAGE_ENV] = storage_url
    env[WORKER_INDEX_ENV] = str(index)
    env[PARENT_PID_ENV] = str(os.getpid())
    command = [sys.executable, "-m", "hpo", "worker", "--study", study_name, "--device", placement.device, *worker_args]
    process = subprocess.Popen(command, env=env)
    where = f"GPU {placement.gpu}" if placement.gpu is not None else placement.device
    _logger.info("Started worker %d (pid %d) on %s with %d threads.", index, process.pid, where, placement.n_threads)
    return _Worker(index=index, process=process, placement=placement)


def _run_beside(local_run: Callable[[], object], watch: Callable[[threading.Event], None]) -> None:
    """Run ``local_run`` in this thread while ``watch`` runs in another, until ``local_run`` ends."""
    stop = threading.Event()

    def watch_safely() -> None:
        try:
            watch(stop)
        except Exception as err:  # the main thread watches again once its own trials end
            _logger.warning("Watching the worker processes failed: %s", short_error(err))

    watcher = threading.Thread(target=watch_safely, name="hpo-workers", daemon=True)
    watcher.start()
    try:
        local_run()
    finally:
        stop.set()
        watcher.join()


def _watch(
    study: optuna.Study,
    backend: RDBStorage,
    finder: StaleTrialFinder,
    workers: list[_Worker],
    interval: float,
    *,
    stop: threading.Event | None = None,
) -> None:
    next_sweep = time.monotonic() + interval
    while any(worker.process.poll() is None for worker in workers) and not (stop is not None and stop.is_set()):
        time.sleep(_POLL_S)
        try:
            _clean_up_ended(study, backend, workers)
        except Exception as err:  # the next poll retries
            _logger.warning("Check of ended workers failed: %s", short_error(err))
        if time.monotonic() >= next_sweep:
            try:
                fail_stale_trials(study, finder)
            except Exception as err:  # the workers go on without this sweep; the next one retries
                _logger.warning("Check for stale trials failed: %s", short_error(err))
            next_sweep = time.monotonic() + interval


def _clean_up_ended(study: optuna.Study, backend: RDBStorage, workers: list[_Worker]) -> None:
    """Fail the RUNNING trials of workers that have ended; a worker that ended cleanly has none."""
    ended = [worker for worker in workers if not worker.cleaned and worker.process.poll() is not None]
    if not ended:
        return
    running = backend.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
    for worker in ended:
        worker.cleaned = True
        code = worker.process.returncode
        if code != 0:
            _logger.warning("Worker %d (pid %d) ended with %s.", worker.index, worker.process.pid, _describe_exit(code))
        for trial in running:
            if trial.user_attrs.get(WORKER_ATTR) == worker.label:
                fail_lost_trial(study, backend, trial._trial_id, f"lost: worker pid {worker.process.pid} ended with {_describe_exit(code)}")


def _stop(workers: list[_Worker], timeout: float) -> None:
    alive = [worker for worker in workers if worker.process.poll() is None]
    for worker in alive:
        worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for worker in alive:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _logger.warning("Worker %d (pid %d) did not stop within %.0f s; killing it.", worker.index, worker.process.pid, timeout)
            worker.process.kill()
            worker.process.wait()


def _check_outcome(study: optuna.Study, workers: list[_Worker]) -> None:
    reason = stop_reason(study)
    if reason:
        raise StudyError(reason)
    plan = load_plan(study)
    if plan is None or plan.total is None:
        return
    n_finished = count_finished(study.get_trials(deepcopy=False))
    if n_finished < plan.total and (plan.time_left() is None or plan.time_left() > 0):
        codes = ", ".join(_describe_exit(worker.process.returncode) for worker in workers)
        raise StudyError(
            f"the workers ended with {n_finished} of {plan.total} trials finished (exit: {codes}); "
            "run the same command again to finish the rest."
        )


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit yet"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
