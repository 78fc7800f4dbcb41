"""Create or resume a study and run trials on it: the ``hpo optimize`` operation."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from optuna.storages import RDBStorage

from hpo.annotate import save_learning_curves
from hpo.baseline import record_baseline, warn_if_skewed
from hpo.budget import Budget
from hpo.cv import MAX_FOLDS, CrossValidationObjective, fold_data
from hpo.data import BUILTIN_DATASETS, DEFAULT_DATASET, SplitIndices, SplitSpec, Table
from hpo.device import WorkerPlacement, default_cpu_workers, plan_placements, resolve_device, threads_from_env, training_threads
from hpo.engine import DeviceData
from hpo.events import log_trial_end, with_start_event
from hpo.exceptions import InputError, StudyError
from hpo.fingerprint import FINGERPRINT_ATTR, compute_fingerprint, fingerprint_differences
from hpo.metrics import CLASSIFICATION, METRICS, get_metric
from hpo.objective import Objective
from hpo.pack_runner import choose_pack_size, run_packed
from hpo.progress import StudyProgress
from hpo.prepare import DataSettings, load_and_split, prepare
from hpo.run_plan import DEFAULT_GRACE_PERIOD_S, DEFAULT_HEARTBEAT_INTERVAL_S, start_run
from hpo.space import SearchSpace
from hpo.starting_point import enqueue_starting_point
from hpo.storage import (
    SETTINGS_ATTR,
    mask_password,
    open_storage,
    resolve_storage_url,
    sqlite_path,
    study_settings,
    validate_study_name,
)
from hpo.storage_errors import translated_storage_errors
from hpo.trial_loop import LoopStats, run_trials
from hpo.warm_start import N_WARM_START_TRIALS, enqueue_best_trials, next_study_name

_logger = logging.getLogger(__name__)

PRUNERS = ("median", "successive-halving", "hyperband", "wilcoxon", "none")
SETTINGS_FORMAT = 1


@dataclass(frozen=True)
class StudySetup:
    """Everything a worker needs to run trials on a study, as stored on the study."""

    data: DataSettings
    space: SearchSpace
    seed: int
    pruner: str
    metric: str = "accuracy"
    cv: int = 0
    budget: Budget = field(default_factory=Budget)

    @property
    def task(self) -> str:
        """``classification`` or ``regression``, as stored with the data settings."""
        return self.data.task or CLASSIFICATION

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        """``maximize`` or ``minimize``, following the metric."""
        return METRICS[self.metric].direction

    def to_dict(self) -> dict[str, Any]:
        """Return the setup as the JSON-able study attribute."""
        return {
            "format": SETTINGS_FORMAT,
            "data": self.data.to_dict(),
            "space": self.space.to_dict(),
            "seed": self.seed,
            "pruner": self.pruner,
            "task": self.task,
            "metric": self.metric,
            "direction": self.direction,
            "cv": self.cv,
            "constraints": self.budget.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StudySetup:
        """Rebuild the setup from the study attribute."""
        return cls(
            data=DataSettings.from_dict(values["data"]),
            space=SearchSpace.from_dict(values["space"], origin="the stored study settings"),
            seed=int(values["seed"]),
            pruner=str(values["pruner"]),
            metric=str(values.get("metric", "accuracy")),
            cv=int(values.get("cv", 0)),
            budget=Budget.from_dict(values.get("constraints")),
        )


def optimize(
    data: str | None = None,
    target: str | None = None,
    *,
    study_name: str | None = None,
    storage: str | None = None,
    n_trials: int | None = 20,
    timeout: float | None = None,
    seed: int | None = None,
    pruner: str | None = None,
    metric: str | None = None,
    task: str | None = None,
    cv: int | None = None,
    max_params: int | None = None,
    max_latency_ms: float | None = None,
    device: str = "auto",
    space: SearchSpace | dict[str, Any] | None = None,
    ignore_columns: tuple[str, ...] | list[str] = (),
    split: SplitSpec | None = None,
    show_progress_bar: bool = False,
    new_study: bool = False,
    pack: int | str = 1,
    workers: int | None = None,
    gpus: Sequence[int] | None = None,
    workers_per_gpu: int | None = None,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL_S,
    grace_period: float = DEFAULT_GRACE_PERIOD_S,
    worker_args: Sequence[str] = (),
    starting_point: bool = True,
) -> optuna.Study:
    """Run ``n_trials`` trials on a new or existing study and return the study.

    A new study stores its data settings, search space, seed and pruner, so that a later
    call (or another worker) with only ``study_name`` and ``storage`` resumes it. It also
    stores a fingerprint of the data content, columns, target, split, search space and
    objective; a run on an existing study whose fingerprint, seed or pruner differs is
    rejected, since it would mix incomparable trials. Every input is checked before the
    storage is written, so bad input changes nothing.

    The run stores its goal on the study (``hpo.run_plan``): the ``n_trials`` are shared
    exactly among all workers, including ``hpo worker`` processes that join later, and a
    run started again with the same ``n_trials`` after an interruption finishes the rest.

    Args:
        data: A built-in data set name or a CSV/Parquet path. None resumes an existing
            study's data, or uses the built-in ``synthetic`` set for a new study.
        target: Target column (required for files).
        study_name: Plain study name. Defaults to the data set name or file stem.
        storage: Storage URL. Defaults to ``sqlite:///study_db/<study_name>.db``.
        n_trials: Trials to add in this call (None: until ``timeout``).
        timeout: Seconds after which no new trial starts (None: no limit).
        seed: Seed of the sampler and of each trial's weights and batch order.
            None: the existing study's seed, or 0 for a new study.
        pruner: One of ``PRUNERS``. None: the existing study's pruner, or ``median``
            (``wilcoxon`` with ``cv``) for a new study.
        metric: Validation metric to optimize, a key of ``hpo.metrics.METRICS`` that fits
            the task (default: accuracy, or rmse for regression). ``log_loss``, ``rmse``
            and ``mae`` are minimized, the others maximized.
        task: ``classification``, ``regression``, or None/``auto`` to detect it: a
            numeric target with more than 20 distinct values is a regression target.
        cv: Number of folds (2..20) to cross-validate each trial on train+validation
            instead of one validation split; None or 0 for no cross-validation.
        max_params: Largest number of trainable parameters a trial's network may have.
        max_latency_ms: Longest median CPU time of one forward pass of one row, in ms.
            Trials over either budget are pruned before training and never become
            ``best_trial`` (Optuna constraints, through ``trial.set_constraint``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        space: Search space, or a dict of overrides of the default space (of the
            stored space when resuming without ``data``).
        ignore_columns: Columns to drop, such as ids.
        split: Train/validation/test fractions and split seed (default 60/20/20, seed 0).
        show_progress_bar: Show a progress bar on stderr over all trials of the study,
            including those of other workers.
        new_study: Start a new study even if ``study_name`` exists: it is named
            ``<study_name>-2`` (or the next free suffix) and first runs the parameters of
            the old study's best trials that fit the search space.
        pack: Most trials of this worker trained together as one stacked computation
            (``hpo.pack``); 1 trains one trial at a time, ``auto`` picks a size from the
            training rows and the device. Packs train on one validation split, so they
            do not combine with ``cv``.
        workers: Workers. None: one per visible GPU; on a CPU, one per core, at most 8 and
            at most one per 4 trials (``hpo.device.default_cpu_workers``); else one. A
            single worker runs in this process, and on a CPU this process is the first of
            several. 0 only stores the goal and the queued trials, for
            ``hpo worker`` processes started elsewhere.
        gpus: CUDA device indices to use (default: all visible).
        workers_per_gpu: Workers sharing each GPU (default 1).
        heartbeat_interval: Seconds between heartbeats of a running trial.
        grace_period: Seconds without a heartbeat after which a trial counts as lost (its
            worker died); it is then failed and its parameters run again once.
        worker_args: Extra ``hpo`` options for worker processes, such as ``--quiet``.
        starting_point: On a study without trials, run hpo's starting configuration
            (``hpo.starting_point``) first; False leaves every trial to the sampler.

    Returns:
        The study, with the new trials.

    Raises:
        InputError: For bad data, options or search space.
        StudyError: When the existing study does not match, or trials keep failing.
        StorageError: When the storage cannot be opened.
    """
    if data is not None and not isinstance(data, (str, Path)):
        raise TypeError(f"data must be a file path or a built-in data set name, not {type(data).__name__}; save a DataFrame with to_parquet() first.")
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int)):
        raise TypeError(f"n_trials must be an int or None; got {n_trials!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None; got {seed!r}.")
    if seed is not None and not 0 <= seed < 2**32:
        raise InputError(f"seed must be in 0..{2**32 - 1}; got {seed}.")
    if n_trials is not None and n_trials < 1:
        raise InputError(f"n_trials must be >= 1; got {n_trials}.")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise InputError(f"timeout must be a positive number of seconds; got {timeout}.")
    if pruner is not None and pruner not in PRUNERS:
        raise InputError(f"unknown pruner {pruner!r}; choose from {', '.join(PRUNERS)}.")
    if pack != "auto" and not (isinstance(pack, int) and not isinstance(pack, bool) and pack >= 1):
        raise InputError(f"pack must be a positive integer or 'auto'; got {pack!r}.")
    if cv and not 2 <= cv <= MAX_FOLDS:
        raise InputError(f"--cv must be 0 (off) or 2..{MAX_FOLDS} folds; got {cv}.")
    if cv and pack not in (1, "auto"):
        raise InputError(f"--pack trains each trial on one validation split, so it does not combine with --cv {cv}; drop --pack.")
    requested_budget = Budget(max_params=max_params, max_latency_ms=max_latency_ms)
    if not (heartbeat_interval > 0 and grace_period > heartbeat_interval):
        raise InputError(f"the grace period must exceed the heartbeat interval, and both be positive; got {grace_period} and {heartbeat_interval} s.")
    torch_device = resolve_device(device)
    threads_from_env()  # a bad $HPO_TORCH_THREADS is reported before the study is written
    n_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers is None and torch_device.type == "cpu" and gpus is None and workers_per_gpu is None:
        workers = default_cpu_workers(n_cpus, n_trials)
    placements = plan_placements(
        workers, device=device, gpus=gpus, workers_per_gpu=workers_per_gpu,
        n_cuda_devices=torch.cuda.device_count() if torch.cuda.is_available() else 0, n_cpus=n_cpus,
    )
    if len(placements) == 1 and placements[0].gpu is not None:
        # One worker runs in this process, on the planned GPU.
        torch_device = torch.device("cuda", int(gpus[0]) if gpus else torch_device.index or 0)
    elif len(placements) != 1:
        # This process trains nothing, so it keeps CUDA uninitialized and its GPU memory free.
        torch_device = torch.device("cpu")

    name = validate_study_name(study_name if study_name is not None else _default_study_name(data))
    url = resolve_storage_url(storage, name)
    if sqlite_path(url) is None and url.startswith("sqlite"):
        raise InputError(f"storage {url!r} is an in-memory SQLite database, which is lost when hpo exits; give a file, e.g. sqlite:///study_db/{name}.db.")
    existing = _existing_study(name, url)
    stored = None if existing is None else StudySetup.from_dict(study_settings(existing))
    if stored is not None and data is None:
        if not new_study:
            _check_requested_options(name, stored, metric, task, cv, requested_budget)
        setup = _resumed_setup(stored, target, ignore_columns, split, space, seed, pruner)
        _logger.info("Resuming study %r with its stored data %s.", name, setup.data.source)
    else:
        if stored is not None:
            metric = stored.metric if metric is None else metric
            cv = stored.cv if cv is None else cv
            pruner = stored.pruner if pruner is None else pruner
            seed = stored.seed if seed is None else seed
            requested_budget = requested_budget if requested_budget.is_active else stored.budget
        pruner = pruner or ("wilcoxon" if cv else "median")
        if pruner == "wilcoxon" and not cv:
            raise InputError("the wilcoxon pruner compares trials fold by fold, so it needs --cv K.")
        setup = _new_setup(data, target, ignore_columns, split, space, 0 if seed is None else seed, pruner)
        setup = replace(setup, data=replace(setup.data, task=None if task == "auto" else task), cv=cv or 0, budget=requested_budget)

    # Loading and splitting raise on bad input, before anything is written.
    table, split_indices = load_and_split(setup.data)
    if setup.data.task is None:
        setup = replace(setup, data=replace(setup.data, task=table.task))
    if stored is None or data is not None or (new_study and metric is not None):
        metric_name = get_metric(metric, table.task).name
        class_weight_given = isinstance(space, SearchSpace) or (isinstance(space, dict) and "class_weight" in space)
        setup = replace(setup, metric=metric_name, space=setup.space.for_metric(metric_name, class_weight_given=class_weight_given))
    settings = setup.to_dict()
    fingerprint = compute_fingerprint(table, setup.data.split, split_indices, settings["space"], settings)
    warm_start_from = None
    if existing is not None and new_study:
        warm_start_from = existing
        name = next_study_name(name, lambda candidate: _existing_study(candidate, resolve_storage_url(storage, candidate)) is not None)
        url = resolve_storage_url(storage, name)
    elif existing is not None:
        _check_same_inputs(existing, setup, fingerprint)
    metric_obj = METRICS[setup.metric]
    if setup.cv and pack not in (1, "auto"):
        raise InputError(f"--pack trains each trial on one validation split, so it cannot run study {name!r} with --cv {setup.cv}; drop --pack.")
    objective, parts = build_objective(setup, table, split_indices, torch_device)

    storage_obj = open_storage(url, create=True)
    with translated_storage_errors(url):
        study = optuna.create_study(
            study_name=name,
            storage=storage_obj,
            direction=setup.direction,
            sampler=optuna.samplers.TPESampler(seed=_sampler_seed(setup.seed, name, storage_obj)),
            pruner=build_pruner(setup.pruner, setup.space.max_epochs, n_folds=setup.cv),
            load_if_exists=True,
        )
        _check_direction(study, settings)
        if SETTINGS_ATTR not in study.user_attrs:
            study.set_user_attr(SETTINGS_ATTR, settings)
            study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
            _logger.info("Created study %r in %s.", name, mask_password(url))
        else:
            _logger.info("Loaded study %r from %s with %d trials.", name, mask_password(url), len(study.trials))
        if FINGERPRINT_ATTR not in study.user_attrs:
            # A study from an hpo version without fingerprints: its settings matched above.
            study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
        n_warm_started = 0
        if warm_start_from is not None:
            n_warm_started = enqueue_best_trials(warm_start_from, study, setup.space, n_trials=min(N_WARM_START_TRIALS, n_trials or N_WARM_START_TRIALS))
        if starting_point and not n_warm_started and not study.get_trials(deepcopy=False):
            enqueue_starting_point(
                study, setup.space, metric=setup.metric,
                n_inputs=parts[0].x_train.shape[1], n_outputs=parts[0].n_outputs, max_params=setup.budget.max_params,
            )
        warn_if_skewed(parts[0], metric_obj)
        record_baseline(study, parts, metric_obj)

    callbacks: list[Any] = [log_trial_end]
    progress = StudyProgress(study, n_trials) if show_progress_bar else None
    if progress is not None:
        callbacks.append(progress)
    pack_size = 1 if setup.cv else _pack_size(pack, len(parts[0].y_train), placements, torch_device, n_trials)
    # With several CPU workers, this process is the first of them, so the first trial starts at once.
    is_local_worker = len(placements) > 1 and all(p.gpu is None and p.device == "cpu" for p in placements)

    def run_here() -> LoopStats:
        if pack_size > 1:
            _logger.info("Training up to %d trials at once in packs.", pack_size)
        return run_queued_trials(study, storage_obj, setup, objective, parts[0], torch_device, pack_size=pack_size, callbacks=callbacks)

    threads = training_threads(torch_device) if len(placements) == 1 or is_local_worker else nullcontext()
    with progress or nullcontext(), translated_storage_errors(url), threads:
        start_run(study, n_trials, timeout=timeout, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        if len(placements) > 1:
            from hpo.workers import run_workers

            pack_args = ["--pack", str(pack_size)] if pack_size > 1 else []
            run_workers(study, storage_obj, url, placements, worker_args=[*worker_args, *pack_args], local_run=run_here if is_local_worker else None)
        elif placements:
            stats = run_here()
            if stats.n_failed and not (stats.n_complete or stats.n_pruned):
                save_learning_curves(study)
                raise StudyError(f"no trial of this run completed: {stats.n_failed} failed; last reason: {stats.last_reason}")
    save_learning_curves(study)
    return study


def run_queued_trials(
    study: optuna.Study,
    backend: RDBStorage,
    setup: StudySetup,
    objective: Objective | CrossValidationObjective,
    data: DeviceData,
    device: torch.device,
    *,
    pack_size: int,
    callbacks: Sequence[Any],
) -> LoopStats:
    """Run this process's share of the queued trials: one at a time, or in packs of up to ``pack_size``.

    Packs train on ``data`` (one validation split); one trial at a time runs ``objective``.
    """
    if pack_size > 1:
        return run_packed(
            study, backend, setup.space, data, seed=setup.seed, metric=METRICS[setup.metric], budget=setup.budget,
            pack_size=pack_size, callbacks=callbacks,
        )
    return run_trials(study, backend, with_start_event(objective), device=device, callbacks=callbacks)


def _pack_size(pack: int | str, n_rows: int, placements: Sequence[WorkerPlacement], device: torch.device, n_trials: int | None) -> int:
    """Return the pack size of each worker: ``pack`` itself, or one chosen for its rows, device and share of the trials."""
    if pack != "auto":
        return int(pack)
    if len(placements) > 1:
        device = torch.device("cuda" if placements[0].gpu is not None else placements[0].device)
    share = None if n_trials is None else math.ceil(n_trials / max(1, len(placements)))
    return choose_pack_size(n_rows, device, n_trials=share)


def build_objective(setup: StudySetup, table: Table, split: SplitIndices, device: torch.device) -> tuple[Objective, list[DeviceData]]:
    """Return the study's objective and the training/validation parts it trains on.

    The parts are one per fold with cross-validation, else the single split.
    """
    metric = METRICS[setup.metric]
    if setup.cv:
        folds = fold_data(table, split, setup.cv, setup.seed, device)
        return CrossValidationObjective(setup.space, folds, seed=setup.seed, metric=metric, budget=setup.budget), folds
    prepared = prepare(table, split)
    data = DeviceData.from_arrays(
        prepared.x_train, prepared.y_train, prepared.x_val, prepared.y_val,
        n_classes=prepared.n_classes, device=device, y_scale=prepared.target_std,
    )
    return Objective(setup.space, data, seed=setup.seed, metric=metric, budget=setup.budget), [data]


def build_pruner(name: str, max_epochs: int, *, n_folds: int = 0) -> optuna.pruners.BasePruner:
    """Build the named pruner with warm-up settings measured in epochs.

    No pruner judges a trial before its third epoch: a network with a large batch can
    sit at the majority-class accuracy after one epoch and catch up by the third. With
    cross-validation (``n_folds`` >= 2) a step is a fold, not an epoch.
    """
    if name == "wilcoxon":
        # The signed-rank test of n paired folds reaches p < 0.1 at n >= 4 at the earliest
        # (one-sided exact p = 1 / 2**n), so fewer folds never prune.
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=3, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=3, max_resource=max(max_epochs, 3), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise InputError(f"unknown pruner {name!r}; choose from {', '.join(PRUNERS)}.")


def _default_study_name(data: str | None) -> str:
    if data is None:
        return DEFAULT_DATASET
    stem = Path(data).stem if ("/" in data or "." in data) else data
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in stem).lstrip("._-")
    return cleaned or "study"


def _new_setup(
    data: str | None,
    target: str | None,
    ignore_columns: tuple[str, ...] | list[str],
    split: SplitSpec | None,
    space: SearchSpace | dict[str, Any] | None,
    seed: int,
    pruner: str,
) -> StudySetup:
    source = data or DEFAULT_DATASET
    if source not in BUILTIN_DATASETS and Path(source).exists():
        source = str(Path(source).expanduser().resolve())
    if isinstance(space, dict):
        space = SearchSpace.from_dict(space)
    return StudySetup(
        data=DataSettings(source=source, target=target, ignore_columns=tuple(ignore_columns), split=split or SplitSpec(seed=seed)),
        space=space or SearchSpace(),
        seed=seed,
        pruner=pruner,
    )


def _check_requested_options(name: str, stored: StudySetup, metric: str | None, task: str | None, cv: int | None, budget: Budget) -> None:
    """Raise StudyError when an option given on resume differs from the stored study's."""
    if metric is not None and metric != stored.metric:
        raise StudyError(f"study {name!r} optimizes {stored.metric}, not {metric}; drop --metric or pick a new --study name.")
    if task not in (None, "auto", stored.task):
        raise StudyError(f"study {name!r} is a {stored.task} study, not {task}; drop --task or pick a new --study name.")
    if cv is not None and cv != stored.cv:
        raise StudyError(f"study {name!r} uses --cv {stored.cv}, not {cv}; drop --cv or pick a new --study name.")
    if budget.is_active and budget != stored.budget:
        raise StudyError(f"study {name!r} has budget {stored.budget.to_dict()}; drop --max-params/--max-latency-ms or pick a new --study name.")


def _resumed_setup(
    stored: StudySetup,
    target: str | None,
    ignore_columns: tuple[str, ...] | list[str],
    split: SplitSpec | None,
    space: SearchSpace | dict[str, Any] | None,
    seed: int | None,
    pruner: str | None,
) -> StudySetup:
    """Return the stored setup with every option the caller gave in place of the stored one.

    The fingerprint check then rejects a given option that differs, instead of the run
    ignoring it without a word.
    """
    data = stored.data
    if target is not None:
        data = replace(data, target=target)
    if ignore_columns:
        data = replace(data, ignore_columns=tuple(ignore_columns))
    if split is not None:
        data = replace(data, split=split)
    if isinstance(space, dict):
        # Entries given as a dict override the stored space, not the default one.
        space = SearchSpace.from_dict({**stored.space.to_dict(), **space})
    return replace(
        stored,
        data=data,
        space=space or stored.space,
        seed=stored.seed if seed is None else seed,
        pruner=stored.pruner if pruner is None else pruner,
    )


def _existing_study(name: str, url: str) -> optuna.Study | None:
    """Load the study ``name`` if the storage contains it, without creating anything."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    storage = open_storage(url, create=False)
    try:
        with translated_storage_errors(url):
            study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    study_settings(study)  # raises for a study that hpo did not create
    return study


def _check_same_inputs(study: optuna.Study, requested: StudySetup, fingerprint: dict[str, Any]) -> None:
    """Raise StudyError naming every difference between the study's inputs and this run's."""
    stored = StudySetup.from_dict(study_settings(study)).to_dict()
    new = requested.to_dict()
    differences = [f"{key} {stored[key]} -> {new[key]}" for key in ("seed", "pruner", "cv", "constraints") if stored[key] != new[key]]
    stored_fingerprint = study.user_attrs.get(FINGERPRINT_ATTR)
    if isinstance(stored_fingerprint, dict):
        differences = fingerprint_differences(stored_fingerprint, fingerprint) + differences
    else:
        # No fingerprint to compare with: fall back to the stored settings.
        differences = [f"{key} settings" for key in ("data", "space", "metric") if stored[key] != new[key]] + differences
    if differences:
        raise StudyError(
            f"study {study.study_name!r} was created with other inputs: {'; '.join(differences)}. "
            "Rerun with the study's own inputs (without --data resumes them as stored), "
            "or pass --new-study to start a new study warm-started from this one's best trials."
        )


def _check_direction(study: optuna.Study, settings: dict[str, Any]) -> None:
    # create_study(load_if_exists=True) keeps a stored study's direction without a word.
    direction = str(settings["direction"])
    if study.direction.name.lower() != direction:
        raise StudyError(
            f"study {study.study_name!r} is stored with direction {study.direction.name.lower()}, "
            f"but this run would {direction} {settings.get('metric', 'its metric')}; pass another --study name."
        )


def _sampler_seed(seed: int, name: str, storage: optuna.storages.BaseStorage) -> int:
    # A resumed study must not replay the random start-up samples of the first run, so
    # the seed moves on with the number of trials already stored.
    try:
        study_id = storage.get_study_id_from_name(name)
        n_existing = len(storage.get_all_trials(study_id, deepcopy=False))
    except KeyError:
        n_existing = 0
    return (seed + n_existing) % 2**32
