"""Choose the torch device: the one place that decides where training runs."""

from __future__ import annotations

import logging
import re

import torch

from hpo.exceptions import InputError

_logger = logging.getLogger(__name__)

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


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
    """Return a short name for logs and trial attributes, such as ``cuda:0 (NVIDIA H200)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def free_device_memory(device: torch.device) -> None:
    """Return cached blocks to the driver, so a long-lived worker does not grow between trials."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
