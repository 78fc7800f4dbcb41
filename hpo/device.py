"""Choose the torch device: the one place that decides where training runs."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from hpo.exceptions import InputError

_logger = logging.getLogger(__name__)

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# Environment variable with the number of torch threads of a worker process.
THREADS_ENV = "HPO_TORCH_THREADS"
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", THREADS_ENV)


@dataclass(frozen=True)
class WorkerPlacement:
    """Where one worker process runs: its device name and the environment it starts with.

    ``env`` contains the variables to set before the worker's interpreter starts, so that CUDA
    sees only the worker's GPU (``device`` is then ``cuda``, meaning ``cuda:0``) and the
    thread pools of torch, OpenMP and MKL have ``n_threads`` threads.
    """

    device: str
    n_threads: int
    gpu: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` into an available device.

    ``auto`` picks CUDA when present, then MPS, then the CPU.

    Raises:
        InputError: For an unknown name, or a device this machine does not have.
    """
    spec = spec.strip().lower()
    if not _DEVICE_PATTERN.match(spec):
        raise InputError(f"invalid device {spec!r}; use auto, cpu, cuda, cuda:N or mps.")

    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")

    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {spec!r} requested, but CUDA is not available on this machine; use --device cpu or auto.")
        device = torch.device(spec)
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise InputError(f"device {spec!r} requested, but this machine has {torch.cuda.device_count()} CUDA device(s).")
        return torch.device("cuda", index)

    if spec == "mps" and not _mps_available():
        raise InputError("device 'mps' requested, but MPS is not available on this machine; use --device cpu or auto.")
    return torch.device(spec)


def describe_device(device: torch.device) -> str:
    """Return a short name for logs and trial attributes, such as ``cuda:0 (NVIDIA H200)``.

    In a worker pinned to one GPU, the name also gives that GPU's id outside the worker,
    such as ``cuda:0 (NVIDIA H200, CUDA_VISIBLE_DEVICES=3)``.
    """
    if device.type == "cuda":
        pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
        suffix = f", CUDA_VISIBLE_DEVICES={pinned}" if pinned else ""
        return f"{device} ({torch.cuda.get_device_name(device)}{suffix})"
    return str(device)


def plan_placements(
    n_workers: int | None,
    *,
    device: str = "auto",
    gpus: Sequence[int] | None = None,
    workers_per_gpu: int | None = None,
    n_cuda_devices: int,
    n_cpus: int,
    environ: Mapping[str, str] | None = None,
) -> list[WorkerPlacement]:
    """Decide the device, threads and environment of each worker process.

    With CUDA devices (``device`` ``auto``, ``cuda`` or ``cuda:N``), each worker gets one
    GPU through ``CUDA_VISIBLE_DEVICES``: ``gpus`` (default: all visible ones, or N for
    ``cuda:N``) times ``workers_per_gpu`` (default 1) workers, or ``n_workers`` spread over
    ``gpus`` in turn. Without CUDA, ``n_workers`` (default 1) run on ``device``. The CPU
    cores are shared out, at least one thread each, so that workers do not oversubscribe them.

    Args:
        n_workers: Worker processes; None picks the default above; 0 plans none.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        gpus: CUDA device indices as this process sees them.
        workers_per_gpu: Workers sharing each GPU, >= 1.
        n_cuda_devices: CUDA devices this process sees (``torch.cuda.device_count()``).
        n_cpus: CPU cores available to all workers together.
        environ: This process's environment; its ``CUDA_VISIBLE_DEVICES`` maps indices to
            the ids each worker must see. Defaults to ``os.environ``.

    Raises:
        InputError: For counts below their minimum, GPUs this machine lacks, GPU options
            with a non-CUDA device, or ``n_workers`` that contradicts ``workers_per_gpu``.
    """
    spec = device.strip().lower()
    if n_workers is not None and n_workers < 0:
        raise InputError(f"workers must be >= 0; got {n_workers}.")
    if workers_per_gpu is not None and workers_per_gpu < 1:
        raise InputError(f"workers per GPU must be >= 1; got {workers_per_gpu}.")
    wants_cuda = spec.startswith("cuda") or (spec == "auto" and n_cuda_devices > 0)
    if not wants_cuda:
        if gpus is not None or workers_per_gpu is not None:
            raise InputError(f"--gpus and --workers-per-gpu need CUDA devices, but the device is {device!r} and this machine has {n_cuda_devices}.")
        count = 1 if n_workers is None else n_workers
        threads = max(1, n_cpus // max(count, 1))
        hidden = {"CUDA_VISIBLE_DEVICES": ""} if spec == "cpu" else {}
        return [WorkerPlacement(device=spec if spec != "auto" else "cpu", n_threads=threads, env={**hidden, **_thread_env(threads)}) for _ in range(count)]

    indices = _cuda_indices(spec, gpus, n_cuda_devices)
    per_gpu = workers_per_gpu or 1
    if n_workers is None:
        count = len(indices) * per_gpu
    elif workers_per_gpu is not None and n_workers != len(indices) * per_gpu:
        raise InputError(f"--workers {n_workers} contradicts {len(indices)} GPU(s) x --workers-per-gpu {per_gpu}; give one of them.")
    else:
        count = n_workers
    visible = _visible_ids(environ if environ is not None else os.environ, n_cuda_devices)
    threads = max(1, n_cpus // max(count, 1))
    placements = []
    for worker in range(count):
        gpu = visible[indices[worker % len(indices)]]
        env = {"CUDA_VISIBLE_DEVICES": gpu, **_thread_env(threads)}
        placements.append(WorkerPlacement(device="cuda", n_threads=threads, gpu=gpu, env=env))
    return placements


def set_torch_threads(n_threads: int | None = None) -> int:
    """Limit torch's intra-op threads to ``n_threads`` (default: ``$HPO_TORCH_THREADS``, else unchanged).

    Returns:
        The number of threads torch now uses.
    """
    if n_threads is None:
        n_threads = threads_from_env()
    if n_threads is not None:
        if n_threads < 1:
            raise InputError(f"threads must be >= 1; got {n_threads}.")
        torch.set_num_threads(n_threads)
    return torch.get_num_threads()


def threads_from_env() -> int | None:
    """Return ``$HPO_TORCH_THREADS`` as a number, or None when it is unset or empty.

    Raises:
        InputError: When the variable is set to anything but a positive integer.
    """
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{THREADS_ENV} must be a positive integer; got {text!r}. Unset it or set e.g. {THREADS_ENV}=1.")
    return int(text)


# A started worker spends a few seconds of one core before its first trial, because a new
# interpreter imports torch and loads the data (an estimate from 2-core runs). So a default
# worker is started for every 4 trials at most.
_TRIALS_PER_DEFAULT_WORKER = 4
# The largest worker count measured on one SQLite file without lock errors (docs/workers.md).
_MAX_DEFAULT_WORKERS = 8


def default_cpu_workers(n_cpus: int, n_trials: int | None) -> int:
    """Return the worker count of a CPU run that does not set one: one per core, within limits.

    Training uses one thread per process, so a single process would leave the other cores
    idle. The count is capped at 8, and at one worker per 4 trials of ``n_trials``.
    """
    count = min(n_cpus, _MAX_DEFAULT_WORKERS)
    if n_trials is not None:
        count = min(count, n_trials // _TRIALS_PER_DEFAULT_WORKER)
    return max(1, count)


def default_threads(device: torch.device, n_threads: int | None = None) -> int | None:
    """Return the torch threads of a process that trains on ``device``, or None for torch's count.

    An explicit ``n_threads`` comes first, then ``$HPO_TORCH_THREADS``. Without either, a
    CPU process gets 1 thread (see ``training_threads``) and other devices keep torch's count.
    """
    if n_threads is not None:
        return n_threads
    from_env = threads_from_env()
    if from_env is not None:
        return from_env
    return 1 if device.type == "cpu" else None


@contextmanager
def training_threads(device: torch.device) -> Iterator[int]:
    """Limit torch's threads while this process trains on ``device``, and restore them after.

    The count comes from ``default_threads``: 1 on a CPU unless ``$HPO_TORCH_THREADS`` is
    set. A second thread gains little on networks of this size, while on a busy 2-core
    machine a 2-thread process trained up to 20 times slower than a 1-thread one
    (docs/benchmark.md).
    """
    previous = torch.get_num_threads()
    set_torch_threads(default_threads(device))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def free_device_memory(device: torch.device) -> None:
    """Return cached blocks to the driver, so a long-lived worker does not grow between trials."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _cuda_indices(spec: str, gpus: Sequence[int] | None, n_cuda_devices: int) -> list[int]:
    if gpus is None:
        indices = [torch.device(spec).index] if spec.startswith("cuda:") else list(range(n_cuda_devices))
    else:
        indices = list(dict.fromkeys(gpus))
    if not indices:
        raise InputError("no CUDA device is visible; use --device cpu, or check CUDA_VISIBLE_DEVICES.")
    missing = [index for index in indices if index is None or not 0 <= index < n_cuda_devices]
    if missing:
        raise InputError(f"GPU(s) {', '.join(map(str, missing))} requested, but this machine has {n_cuda_devices} visible CUDA device(s): use indices 0..{n_cuda_devices - 1}.")
    return indices


def _visible_ids(environ: Mapping[str, str], n_cuda_devices: int) -> list[str]:
    # Index i in this process is the i-th entry of its own CUDA_VISIBLE_DEVICES (an id or
    # a UUID), which a worker must receive instead of i.
    listed = [part.strip() for part in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    if "CUDA_VISIBLE_DEVICES" in environ and len(listed) >= n_cuda_devices:
        return listed[:n_cuda_devices]
    return [str(index) for index in range(n_cuda_devices)]


def _thread_env(n_threads: int) -> dict[str, str]:
    return {name: str(n_threads) for name in _THREAD_VARIABLES}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
