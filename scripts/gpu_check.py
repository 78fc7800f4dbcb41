"""Measure network-epochs per second on a CUDA device and print a Markdown table (under 5 minutes).

Rows: 1 and 4 worker processes that each train one network at a time, and packs of 1, 16
and 64 networks in one process, in float32 and under bf16 autocast, at batch 128 and 2048.
Every network is 7-64-32-2 style (the table's inputs, 64 and 32 hidden units, one logit per
class) on the ocean training rows, which stay on the GPU.

Run from the repository root on a machine with a GPU:
  .venv/bin/python scripts/gpu_check.py --data ../shared/data/ocean.zip --target Quality
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from hpo.device import describe_device, resolve_device
from hpo.engine import DeviceData, train
from hpo.model import build_mlp
from hpo.objective import architecture
from hpo.pack import Pack, pack_key
from hpo.prepare import DataSettings, load_and_split, prepare
from hpo.space import TrialConfig

BATCH_SIZES = (128, 2048)
PACK_SIZES = (1, 16, 64)
WORKER_COUNTS = (1, 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure network-epochs per second on a GPU.")
    parser.add_argument("--data", required=True, help="CSV file, or a zip file that contains one CSV")
    parser.add_argument("--target", default="Quality", help="target column (default: Quality)")
    parser.add_argument("--device", default="cuda", help="device to measure (default: cuda)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time of each row, in seconds (default: 6)")
    parser.add_argument("--workers", type=_int_list, default=WORKER_COUNTS, help="worker counts to measure, e.g. 1,4 (default: 1,4)")
    parser.add_argument("--packs", type=_int_list, default=PACK_SIZES, help="pack sizes to measure, e.g. 1,16,64 (default: 1,16,64)")
    parser.add_argument("--batch-sizes", type=_int_list, default=BATCH_SIZES, help="batch sizes, e.g. 128,2048 (default: 128,2048)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    arrays = _arrays(Path(args.data), args.target)
    print(f"Device: {describe_device(device)}; torch {torch.__version__}; {len(arrays[1])} training rows.")
    print()
    print("| setup | batch | precision | network-epochs/s |")
    print("| --- | ---: | --- | ---: |")
    for batch_size in args.batch_sizes:
        for n_workers in args.workers:
            rate = _workers_rate(arrays, args.device, batch_size, n_workers, args.seconds)
            print(f"| {n_workers} worker(s), one network each | {batch_size} | float32 | {rate:.1f} |", flush=True)
        data = _device_data(arrays, device)
        for pack_size in args.packs:
            for bf16 in (False, True):
                rate = _pack_rate(data, batch_size, pack_size, args.seconds, bf16=bf16)
                print(f"| pack of {pack_size} | {batch_size} | {'bf16 autocast' if bf16 else 'float32'} | {rate:.1f} |", flush=True)
    return 0


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _arrays(path: Path, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    if path.suffix == ".zip":
        folder = Path(tempfile.mkdtemp(prefix="hpo-gpu-check-"))
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".csv"))
            archive.extract(name, folder)
        path = folder / name
    prepared = prepare(*load_and_split(DataSettings(source=str(path), target=target)))
    assert prepared.x_val is not None and prepared.y_val is not None
    return prepared.x_train, prepared.y_train, prepared.x_val, prepared.y_val, prepared.n_classes


def _device_data(arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], device: torch.device) -> DeviceData:
    x_train, y_train, x_val, y_val, n_classes = arrays
    return DeviceData.from_arrays(x_train, y_train, x_val, y_val, n_classes=n_classes, device=device)


def _config(batch_size: int) -> TrialConfig:
    return TrialConfig(
        hidden=(64, 32), activation="relu", dropout=0.0, optimizer="adam", lr=1e-3, weight_decay=0.0,
        batch_size=batch_size, max_epochs=1, patience=1, momentum=0.9,
    )


def _pack_rate(data: DeviceData, batch_size: int, pack_size: int, seconds: float, *, bf16: bool) -> float:
    config = _config(batch_size)
    pack = Pack(data, pack_key(config))
    for member in range(pack_size):
        torch.manual_seed(member)
        pack.add(member, config, member, build_mlp(architecture(config, data.x_train.shape[1], data.n_outputs)))
    autocast = torch.autocast(device_type=data.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        pack.run_epoch()  # warm-up: kernels, allocator
        n_epochs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            pack.run_epoch()
            n_epochs += 1
    return n_epochs * pack_size / (time.perf_counter() - started)


def _workers_rate(arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], device_spec: str, batch_size: int, n_workers: int, seconds: float) -> float:
    context = multiprocessing.get_context("spawn")
    with context.Pool(n_workers) as pool:
        counts = pool.starmap(_worker_epochs, [(arrays, device_spec, batch_size, seconds)] * n_workers)
    return sum(counts) / seconds


def _worker_epochs(arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], device_spec: str, batch_size: int, seconds: float) -> int:
    torch.set_num_threads(1)
    data = _device_data(arrays, resolve_device(device_spec))
    config = _config(batch_size)
    model = build_mlp(architecture(config, data.x_train.shape[1], data.n_outputs)).to(data.device)
    train(model, config, data, seed=0, n_epochs=1)  # warm-up: kernels, allocator
    n_epochs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        train(model, config, data, seed=n_epochs, n_epochs=1)
        n_epochs += 1
    return n_epochs


if __name__ == "__main__":
    sys.exit(main())
