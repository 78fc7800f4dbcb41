"""Measure finished trials per minute of `hpo optimize --workers K` and check each run's study.

Each run starts a fresh study (a new SQLite file, or a new PostgreSQL database that is
dropped afterwards) and runs a small, fixed trial: one hidden layer of 16 units, Adam,
3 epochs on the built-in 1,000-row synthetic set, no pruning. Every run is checked:
exactly --n-trials counted trials, unique trial numbers, nothing RUNNING or WAITING, and
no "database is locked" in the output. Prints one Markdown table row per run.

Usage:
    .venv/bin/python scripts/bench_workers.py --storages sqlite,postgresql --workers 1,2,4 --n-trials 40
    .venv/bin/python scripts/bench_workers.py --storages sqlite --workers 8 --n-trials 200 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpo.run_plan import COUNTED_ATTR, is_counted  # noqa: E402

FIXED_TRIAL = [
    "--space", "n_layers=1", "--space", "n_units=16", "--space", 'activation="relu"', "--space", "dropout=0.0",
    "--space", 'optimizer="adam"', "--space", "lr=0.001", "--space", "weight_decay=0", "--space", "batch_size=128",
    "--max-epochs", "3", "--pruner", "none",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storages", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--n-trials", type=int, default=40, help="trials per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per storage and worker count")
    parser.add_argument("--postgresql", default="postgresql+psycopg2://postgres@127.0.0.1:5432/test", help="URL of a PostgreSQL database from which fresh databases are created")
    parser.add_argument("--heartbeat-interval", type=float, help="passed to hpo optimize")
    parser.add_argument("--grace-period", type=float, help="passed to hpo optimize")
    args = parser.parse_args()

    print("| storage | workers | run | trials | lost | wall s | span s (first start to last end) | trials/min in span | vs 1 worker | checks |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    baseline: dict[str, float] = {}
    all_ok = True
    for storage in args.storages.split(","):
        for n_workers in (int(part) for part in args.workers.split(",")):
            for repeat in range(1, args.repeats + 1):
                row = _run_once(storage, n_workers, args)
                if n_workers == 1:
                    baseline.setdefault(storage, row["rate"])
                ratio = f"{row['rate'] / baseline[storage]:.2f}" if storage in baseline else "n/a"
                all_ok &= row["ok"]
                print(
                    f"| {storage} | {n_workers} | {repeat} | {row['counted']} | {row['lost']} | {row['wall']:.1f} | {row['span']:.1f} | "
                    f"{row['rate']:.1f} | {ratio} | {row['checks']} |",
                    flush=True,
                )
    return 0 if all_ok else 1


def _run_once(storage: str, n_workers: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as folder:
        url, cleanup = _fresh_storage(storage, Path(folder), args.postgresql)
        try:
            command = [
                sys.executable, "-m", "hpo", "optimize", "--quiet", "--study", "bench", "--storage", url,
                "--n-trials", str(args.n_trials), "--workers", str(n_workers), "--device", "cpu", *FIXED_TRIAL,
            ]
            if args.heartbeat_interval is not None:
                command += ["--heartbeat-interval", str(args.heartbeat_interval)]
            if args.grace_period is not None:
                command += ["--grace-period", str(args.grace_period)]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            started = time.monotonic()
            result = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env)
            wall = time.monotonic() - started
            trials = optuna.load_study(study_name="bench", storage=url).get_trials(deepcopy=False)
        finally:
            cleanup()

    states = Counter(trial.state for trial in trials)
    counted = sum(1 for trial in trials if is_counted(trial))
    lost = sum(1 for trial in trials if trial.user_attrs.get(COUNTED_ATTR) is False)
    numbers = [trial.number for trial in trials]
    problems = []
    if result.returncode != 0:
        problems.append(f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1:]}")
    if counted != args.n_trials:
        problems.append(f"{counted} counted")
    if len(numbers) != len(set(numbers)):
        problems.append("duplicate numbers")
    if states[TrialState.RUNNING] or states[TrialState.WAITING]:
        problems.append(f"{states[TrialState.RUNNING]} running, {states[TrialState.WAITING]} waiting")
    if "database is locked" in result.stderr:
        problems.append("lock error in output")
    finished = [t for t in trials if t.datetime_complete is not None and t.datetime_start is not None and is_counted(t)]
    span = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds() if finished else float("nan")
    return {
        "counted": counted, "lost": lost, "wall": wall, "span": span, "rate": 60 * len(finished) / span if span else float("nan"),
        "ok": not problems, "checks": "ok" if not problems else "; ".join(problems),
    }


def _fresh_storage(kind: str, folder: Path, postgresql_admin: str):
    if kind == "sqlite":
        return f"sqlite:///{folder / 'bench.db'}", lambda: None
    if kind != "postgresql":
        raise SystemExit(f"unknown storage {kind!r}; use sqlite or postgresql")
    import sqlalchemy

    name = f"hpo_bench_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(postgresql_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sqlalchemy.engine.make_url(postgresql_admin).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return url, drop


if __name__ == "__main__":
    sys.exit(main())
