"""Benchmark hpo against the usual recipes on one table, with the same trial budget for each.

Contenders, in order:
  a. the Optuna PyTorch example: a DataLoader at batch 128, a SQLite study reported every epoch;
  b. a tutorial-style full-batch loop of 200 epochs inside an Optuna objective;
  c. scikit-learn's MLPClassifier under RandomizedSearchCV, n_jobs set to the cores;
  d. hpo with its defaults (on a CPU, one worker per core);
  e. hpo with packed trials (--pack auto), in each worker;
  f. hpo in one process (--workers 1);
  g. hpo with packed trials in one process (--pack auto --workers 1).
Every contender trains on the same training rows and scores the same validation rows (hpo's
own 60/20/20 split and preprocessing). The script prints a Markdown table of trials per
minute, network-epochs per second, best validation accuracy and log-loss, the wall time
until the first trial that reaches the accuracy mark, the ratios to (a), the storage's
share of hpo's time, and how an hpo epoch compares with its arithmetic floor.

Run from the repository root:
  .venv/bin/python scripts/benchmark.py --data ../shared/data/ocean.zip --target Quality --n-trials 30
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

import hpo
import hpo.reporting
from hpo.device import default_cpu_workers, training_threads
from hpo.engine import DeviceData, evaluate, train
from hpo.model import build_mlp
from hpo.objective import architecture
from hpo.pack import Pack, pack_key
from hpo.prepare import DataSettings, load_and_split, prepare
from hpo.space import TrialConfig

# Widest and deepest networks of the example recipes' search space.
EXAMPLE_MAX_LAYERS = 3
EXAMPLE_UNITS = (4, 128)


@dataclass
class Outcome:
    """What one contender achieved within the trial budget."""

    name: str
    seconds: float
    n_trials: int
    n_epochs: int
    best_accuracy: float
    best_log_loss: float
    seconds_to_mark: float | None
    storage_share: float | None = None


@dataclass(frozen=True)
class Arrays:
    """The shared training and validation arrays."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore")
    logging.getLogger("hpo").setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="hpo-benchmark-"))
    csv = _csv_path(Path(args.data), workdir, args.rows, args.seed)
    prepared = prepare(*load_and_split(DataSettings(source=str(csv), target=args.target)))
    arrays = Arrays(prepared.x_train, prepared.y_train, prepared.x_val, prepared.y_val, prepared.n_classes)
    print(f"data: {csv.name}, {len(arrays.y_train)} training rows, {len(arrays.y_val)} validation rows; {args.n_trials} trials each", file=sys.stderr)

    contenders: list[tuple[str, Callable[[], Outcome]]] = [
        ("a. Optuna example (DataLoader, batch 128, SQLite)", lambda: _optuna_example(arrays, args, workdir)),
        ("b. full-batch loop, 200 epochs", lambda: _full_batch(arrays, args, workdir)),
        ("c. scikit-learn MLPClassifier, RandomizedSearchCV", lambda: _sklearn_search(arrays, args)),
        (f"d. hpo, defaults ({_default_workers(args.n_trials)} workers)", lambda: _hpo(csv, arrays, args, workdir)),
        ("e. hpo, --pack auto", lambda: _hpo(csv, arrays, args, workdir, pack="auto")),
        ("f. hpo, --workers 1", lambda: _hpo(csv, arrays, args, workdir, workers=1)),
        ("g. hpo, --pack auto --workers 1", lambda: _hpo(csv, arrays, args, workdir, pack="auto", workers=1)),
    ]
    chosen = [(name, run) for name, run in contenders if name[0] in args.contenders]
    outcomes = []
    load_before = os.getloadavg()[0]
    for name, run in chosen:
        print(f"running {name} ...", file=sys.stderr)
        outcome = run()
        outcome.name = name
        outcomes.append(outcome)
        print(f"  {outcome.seconds:.1f} s", file=sys.stderr)

    print(_machine())
    print(f"Load average (1 min) before the first contender: {load_before:.1f}; after the last: {os.getloadavg()[0]:.1f}.")
    print()
    print(_table(outcomes, args.mark))
    print()
    print(_floor_table(arrays, args))
    return 0


def _default_workers(n_trials: int) -> int:
    return default_cpu_workers(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), n_trials)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark hpo against the usual recipes.")
    parser.add_argument("--data", required=True, help="CSV file, or a zip file that contains one CSV")
    parser.add_argument("--target", default="Quality", help="target column (default: Quality)")
    parser.add_argument("--n-trials", type=int, default=30, help="trial budget of every contender (default: 30)")
    parser.add_argument("--example-epochs", type=int, default=10, help="epochs per trial of (a) and (c), as in the Optuna example (default: 10)")
    parser.add_argument("--full-batch-epochs", type=int, default=200, help="epochs per trial of (b) (default: 200)")
    parser.add_argument("--hpo-max-epochs", type=int, help="max_epochs of (d) and (e) (default: hpo's default)")
    parser.add_argument("--mark", type=float, default=0.913, help="validation accuracy whose first reach is timed (default: 0.913)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every sampler and of --rows (default: 0)")
    parser.add_argument("--contenders", default="abcdefg", help="letters of the contenders to run; ratios are to the first one run (default: abcdefg)")
    parser.add_argument("--rows", type=int, help="use a seeded random sample of this many rows of the table (default: all rows)")
    return parser.parse_args(argv)


def _csv_path(path: Path, workdir: Path, n_rows: int | None, seed: int) -> Path:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".csv"))
            archive.extract(name, workdir)
        path = workdir / name
    if n_rows is None:
        return path
    import pandas as pd

    sample = workdir / f"{path.stem}_{n_rows}_rows.csv"
    pd.read_csv(path).sample(n=n_rows, random_state=seed).to_csv(sample, index=False)
    return sample


def _example_network(trial: optuna.Trial, n_inputs: int, n_classes: int) -> nn.Sequential:
    # The Optuna example's space: 1-3 layers of 4-128 units (log scale), dropout 0.2-0.5.
    layers: list[nn.Module] = []
    width = n_inputs
    for i in range(trial.suggest_int("n_layers", 1, EXAMPLE_MAX_LAYERS)):
        units = trial.suggest_int(f"n_units_l{i}", *EXAMPLE_UNITS, log=True)
        layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(trial.suggest_float(f"dropout_l{i}", 0.2, 0.5))]
        width = units
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def _example_optimizer(trial: optuna.Trial, model: nn.Module) -> torch.optim.Optimizer:
    name = trial.suggest_categorical("optimizer", ["Adam", "RMSprop", "SGD"])
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    return getattr(torch.optim, name)(model.parameters(), lr=lr)


def _scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return float((logits.argmax(1) == y).float().mean()), float(functional.cross_entropy(logits, y))


def _optuna_example(arrays: Arrays, args: argparse.Namespace, workdir: Path) -> Outcome:
    x_train, y_train = torch.as_tensor(arrays.x_train), torch.as_tensor(arrays.y_train)
    x_val, y_val = torch.as_tensor(arrays.x_val), torch.as_tensor(arrays.y_val)
    train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=128, shuffle=True)
    val_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=128)

    # Log-losses stay in memory: writing them to the study would slow the recipe down.
    log_losses: dict[int, float] = {}

    def objective(trial: optuna.Trial) -> float:
        model = _example_network(trial, x_train.shape[1], arrays.n_classes)
        optimizer = _example_optimizer(trial, model)
        accuracy = 0.0
        for epoch in range(args.example_epochs):
            model.train()
            for x_batch, y_batch in train_loader:
                optimizer.zero_grad()
                functional.cross_entropy(model(x_batch), y_batch).backward()
                optimizer.step()
            model.eval()
            correct, loss_sum = 0, 0.0
            with torch.no_grad():
                for x_batch, y_batch in val_loader:
                    logits = model(x_batch)
                    correct += int((logits.argmax(1) == y_batch).sum())
                    loss_sum += float(functional.cross_entropy(logits, y_batch, reduction="sum"))
            accuracy = correct / len(y_val)
            log_losses[trial.number] = loss_sum / len(y_val)
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    study, started, seconds, storage_seconds = _run_optuna(objective, args, f"sqlite:///{workdir / 'example.db'}")
    return _from_trials(study.trials, started, seconds, args.mark, storage_seconds, lambda t: len(t.intermediate_values), lambda t: log_losses[t.number])


def _full_batch(arrays: Arrays, args: argparse.Namespace, workdir: Path) -> Outcome:
    x_train, y_train = torch.as_tensor(arrays.x_train), torch.as_tensor(arrays.y_train)
    x_val, y_val = torch.as_tensor(arrays.x_val), torch.as_tensor(arrays.y_val)

    log_losses: dict[int, float] = {}

    def objective(trial: optuna.Trial) -> float:
        model = _example_network(trial, x_train.shape[1], arrays.n_classes)
        optimizer = _example_optimizer(trial, model)
        model.train()
        for _ in range(args.full_batch_epochs):
            optimizer.zero_grad()
            functional.cross_entropy(model(x_train), y_train).backward()
            optimizer.step()
        accuracy, log_losses[trial.number] = _scores(model, x_val, y_val)
        return accuracy

    study, started, seconds, storage_seconds = _run_optuna(objective, args, f"sqlite:///{workdir / 'full_batch.db'}")
    return _from_trials(study.trials, started, seconds, args.mark, storage_seconds, lambda t: args.full_batch_epochs, lambda t: log_losses[t.number])


def _run_optuna(objective: Callable[[optuna.Trial], float], args: argparse.Namespace, storage: str) -> tuple[optuna.Study, float, float, float]:
    study = optuna.create_study(direction="maximize", storage=storage, sampler=optuna.samplers.TPESampler(seed=args.seed))
    with _StorageTimer() as timer:
        started = time.time()
        study.optimize(objective, n_trials=args.n_trials)
        seconds = time.time() - started
    return study, started, seconds, timer.seconds


def _from_trials(
    trials: list[optuna.trial.FrozenTrial],
    started: float,
    seconds: float,
    mark: float,
    storage_seconds: float | None,
    epochs_of: Callable[[optuna.trial.FrozenTrial], int],
    log_loss_of: Callable[[optuna.trial.FrozenTrial], float],
) -> Outcome:
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(finished, key=lambda t: t.value or 0.0)
    reached = [t.datetime_complete.timestamp() - started for t in finished if t.value is not None and t.value >= mark and t.datetime_complete]
    return Outcome(
        name="",
        seconds=seconds,
        n_trials=len(trials),
        n_epochs=sum(epochs_of(t) for t in trials),
        best_accuracy=float(best.value or 0.0),
        best_log_loss=log_loss_of(best),
        seconds_to_mark=min(reached) if reached else None,
        storage_share=None if storage_seconds is None else storage_seconds / seconds,
    )


def _sklearn_search(arrays: Arrays, args: argparse.Namespace) -> Outcome:
    from scipy.stats import loguniform
    from sklearn.model_selection import PredefinedSplit, RandomizedSearchCV
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(args.seed)
    low, high = np.log(EXAMPLE_UNITS[0]), np.log(EXAMPLE_UNITS[1])
    shapes = [tuple(int(round(np.exp(rng.uniform(low, high)))) for _ in range(rng.integers(1, EXAMPLE_MAX_LAYERS + 1))) for _ in range(500)]
    space = {
        "hidden_layer_sizes": shapes,
        "alpha": loguniform(1e-7, 1e-2),
        "learning_rate_init": loguniform(1e-5, 1e-1),
        "activation": ["relu", "tanh"],
    }
    x = np.concatenate([arrays.x_train, arrays.x_val])
    y = np.concatenate([arrays.y_train, arrays.y_val])
    # -1 keeps a row in training only; 0 puts it in the one validation fold.
    fold = PredefinedSplit(np.concatenate([np.full(len(arrays.y_train), -1), np.zeros(len(arrays.y_val))]))
    # Scorers run in the worker processes right after each fit, so they can report its finish time and epochs.
    scoring = {"accuracy": "accuracy", "neg_log_loss": "neg_log_loss", "finished_at": _finished_at, "epochs": _n_epochs}
    search = RandomizedSearchCV(
        MLPClassifier(max_iter=args.example_epochs, random_state=args.seed),
        space, n_iter=args.n_trials, scoring=scoring, refit=False, cv=fold, n_jobs=os.cpu_count(), random_state=args.seed,
    )
    started = time.time()
    search.fit(x, y)
    seconds = time.time() - started
    results = search.cv_results_
    accuracy = np.asarray(results["mean_test_accuracy"])
    best = int(np.argmax(accuracy))
    reached = [float(results["mean_test_finished_at"][i]) - started for i in range(len(accuracy)) if accuracy[i] >= args.mark]
    return Outcome(
        name="",
        seconds=seconds,
        n_trials=len(accuracy),
        n_epochs=int(np.sum(results["mean_test_epochs"])),
        best_accuracy=float(accuracy[best]),
        best_log_loss=-float(results["mean_test_neg_log_loss"][best]),
        seconds_to_mark=min(reached) if reached else None,
    )


def _finished_at(estimator: Any, x: Any, y: Any) -> float:
    return time.time()


def _n_epochs(estimator: Any, x: Any, y: Any) -> float:
    return float(estimator.n_iter_)


def _hpo(csv: Path, arrays: Arrays, args: argparse.Namespace, workdir: Path, *, pack: int | str = 1, workers: int | None = None) -> Outcome:
    space = {} if args.hpo_max_epochs is None else {"max_epochs": args.hpo_max_epochs}
    name = f"hpo_pack_{pack}_workers_{workers}"
    with _StorageTimer() as timer:
        started = time.time()
        study = hpo.optimize(
            str(csv), args.target, study_name=name, storage=f"sqlite:///{workdir / name}.db",
            n_trials=args.n_trials, seed=args.seed, device="cpu", space=space or None, pack=pack, workers=workers,
        )
        seconds = time.time() - started
    log_loss = _retrained_log_loss(study.best_trial, arrays)
    # Started worker processes write to the storage outside this process's timer, so the
    # share is known only for a run in one process.
    n_workers = workers if workers is not None else _default_workers(args.n_trials)
    storage_seconds = timer.seconds if n_workers == 1 else None
    return _from_trials(study.trials, started, seconds, args.mark, storage_seconds, lambda t: int(t.user_attrs.get("epochs_run", 0)), lambda t: log_loss)


def _retrained_log_loss(trial: optuna.trial.FrozenTrial, arrays: Arrays) -> float:
    # hpo stores no validation loss, so the best trial's network is retrained alone, with
    # its seed, for its best epoch count, and scored once.
    config = TrialConfig.from_dict(trial.user_attrs["config"])
    data = DeviceData.from_arrays(arrays.x_train, arrays.y_train, arrays.x_val, arrays.y_val, n_classes=arrays.n_classes, device=torch.device("cpu"))
    seed = int(trial.user_attrs["seed"])
    torch.manual_seed(seed)
    model = build_mlp(architecture(config, data.x_train.shape[1], data.n_outputs))
    train(model, config, data, seed=seed, n_epochs=int(trial.user_attrs["best_epoch"]) + 1)
    return evaluate(model, data.x_val, data.y_val)[1]


class _StorageTimer:
    """Time spent in Optuna's RDB storage and in hpo's batched writes, while active.

    Only the outermost storage call is timed, so nested calls are not counted twice.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0
        self._originals: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> _StorageTimer:
        storage_class = optuna.storages.RDBStorage
        names = [n for n, v in vars(storage_class).items() if callable(v) and not n.startswith("__") and not isinstance(v, staticmethod | classmethod)]
        for name in names:
            self._patch(storage_class, name)
        self._patch(hpo.reporting, "_write")
        self._patch(hpo.reporting._ParamQueue, "write")
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)

    def _patch(self, owner: Any, name: str) -> None:
        original = vars(owner)[name]
        self._originals.append((owner, name, original))

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return original(*args, **kwargs)
            self._depth += 1
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self._depth -= 1

        setattr(owner, name, timed)


def _floor_table(arrays: Arrays, args: argparse.Namespace) -> str:
    """Compare hpo's epoch time for a 64-32 network with the epoch's arithmetic floor.

    Both are measured with the torch threads that hpo trains with on a CPU.
    """
    with training_threads(torch.device("cpu")):
        return _floor_lines(arrays)


def _floor_lines(arrays: Arrays) -> str:
    n_rows, n_inputs = arrays.x_train.shape
    hidden = (64, 32)
    widths = [n_inputs, *hidden, arrays.n_classes]
    # Multiply-adds of one row's forward pass; a training step costs about 3 forward passes.
    macs = sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    flops = 3 * 2 * macs * n_rows
    rate = _matmul_flops_per_second()
    floor = flops / rate
    data = DeviceData.from_arrays(arrays.x_train, arrays.y_train, arrays.x_val, arrays.y_val, n_classes=arrays.n_classes, device=torch.device("cpu"))
    lines = [
        f"Arithmetic floor of one epoch of a {'-'.join(map(str, widths))} network on {n_rows} rows: "
        f"{flops / 1e9:.2f} GFLOP at {rate / 1e9:.1f} GFLOP/s (measured 1024x1024 matmul, {torch.get_num_threads()} threads) = {1000 * floor:.1f} ms.",
        "",
        "| engine | batch | ms per network-epoch | x floor |",
        "| --- | ---: | ---: | ---: |",
    ]
    for batch_size in (128, 2048):
        config = TrialConfig(hidden=hidden, activation="relu", dropout=0.0, optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=batch_size, max_epochs=2, patience=10, momentum=0.9)
        torch.manual_seed(0)
        model = build_mlp(architecture(config, n_inputs, arrays.n_classes))
        train(model, config, data, seed=0, n_epochs=1)  # warm-up: the first steps allocate and initialize
        seconds = train(model, config, data, seed=1, n_epochs=2).seconds / 2
        lines.append(f"| hpo, one network | {batch_size} | {1000 * seconds:.1f} | {seconds / floor:.1f} |")
        pack = Pack(data, pack_key(config))
        for member in range(8):
            torch.manual_seed(member)
            pack.add(member, config, member, build_mlp(architecture(config, n_inputs, arrays.n_classes)))
        pack.run_epoch()
        started = time.perf_counter()
        for _ in range(2):
            pack.run_epoch()
        seconds = (time.perf_counter() - started) / (2 * 8)
        lines.append(f"| hpo, pack of 8 | {batch_size} | {1000 * seconds:.1f} | {seconds / floor:.1f} |")
    return "\n".join(lines)


def _matmul_flops_per_second() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    started = time.perf_counter()
    n_repeats = 10
    for _ in range(n_repeats):
        torch.mm(a, b)
    return n_repeats * 2 * 1024**3 / (time.perf_counter() - started)


def _table(outcomes: list[Outcome], mark: float) -> str:
    reference = outcomes[0]  # (a) unless --contenders left it out
    lines = [
        f"| contender | wall s | trials/min | network-epochs/s | best val accuracy | its val log-loss | s to {mark} | speed vs (a) | storage share |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in outcomes:
        to_mark = "not reached" if o.seconds_to_mark is None else f"{o.seconds_to_mark:.1f}"
        share = "" if o.storage_share is None else f"{100 * o.storage_share:.1f}%"
        lines.append(
            f"| {o.name} | {o.seconds:.1f} | {60 * o.n_trials / o.seconds:.1f} | {o.n_epochs / o.seconds:.2f} | "
            f"{o.best_accuracy:.4f} | {o.best_log_loss:.4f} | {to_mark} | {reference.seconds / o.seconds:.1f}x | {share} |"
        )
    return "\n".join(lines)


def _machine() -> str:
    return (
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), optuna {optuna.__version__}."
    )


if __name__ == "__main__":
    sys.exit(main())
