"""Command-line interface: parse arguments, call the Python API, map errors to exit codes.

Exit codes: 0 success (for ``optimize``: the study has a completed trial), 1 a study or
storage problem (including a study where no trial completed), 2 bad input or usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from hpo import __version__
from hpo.exceptions import HpoError
from hpo.parent_watch import PARENT_PID_ENV
from hpo.space import SearchSpace

_logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_DEBUG_HELP = "show tracebacks of errors and of failed trials"
_STORAGE_HELP = (
    "Optuna storage URL; default: $HPO_STORAGE, else sqlite:///study_db/<study>.db. "
    "Put a URL with a password in HPO_STORAGE or the config file, since other users can read command lines"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hpo`` command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet, args.log_format, args.debug)
    _warn_password_on_command_line(getattr(args, "storage", None))
    try:
        if args.command not in ("optimize", "worker"):
            return int(args.handler(args))
        from hpo.trial_loop import interrupt_handlers

        with interrupt_handlers():
            return int(args.handler(args))
    except HpoError as err:
        if args.debug:
            _logger.exception("hpo failed")
        print(f"hpo: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        # A worker started by 'hpo optimize' shares its stderr, and the parent reports the interrupt once.
        if args.command != "worker" or PARENT_PID_ENV not in os.environ:
            print("hpo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subcommand per operation."""
    parser = argparse.ArgumentParser(prog="hpo", description="Hyperparameter optimization of PyTorch MLPs on tabular data.")
    parser.add_argument("--version", action="version", version=f"hpo {__version__}")
    # --debug works before and after the command name. SUPPRESS keeps a subcommand's
    # unset flag from overwriting one given before the command.
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    common.add_argument("-v", "--verbose", action="count", default=0, help="-v: one line per finished trial; -vv: also trial starts and per-epoch details")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no per-trial lines; log warnings and errors only")
    common.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="text (default), or json: one JSON object per line on stderr, including every trial event "
        "(trial_started, trial_finished, trial_pruned, trial_failed, study_finished); json turns off the progress bar",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_optimize(sub.add_parser("optimize", parents=[common], help="run trials on a new or existing study", description="Run trials on a new or existing study."))
    _add_worker(sub.add_parser("worker", parents=[common], help="join a study as one more worker", description="Run queued trials of an existing study; the study stores everything else."))
    _add_finalize(sub.add_parser("finalize", parents=[common], help="retrain the best trial and save the model", description="Retrain the best trial on train+validation, test it once and save the bundle."))
    _add_predict(sub.add_parser("predict", parents=[common], help="predict a table with a saved model", description="Predict a CSV or Parquet file with a saved bundle."))
    _add_views(sub, common)
    return parser


def _add_optimize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="CSV/Parquet file or built-in set (synthetic, iris, wine, breast_cancer, digits); default: synthetic, or the stored data of an existing --study")
    p.add_argument("--target", help="target column to predict (required for files)")
    p.add_argument("--ignore-columns", type=_comma_list, help="comma-separated columns to drop, e.g. id,timestamp")
    p.add_argument("--study", dest="study_name", help="study name (letters, digits, _ . -); default: the data set name or file stem")
    p.add_argument("--storage", help=_STORAGE_HELP)
    p.add_argument("--new-study", action="store_true", help="start a new study <study>-2 (or the next free suffix) when --study exists, running the old study's 5 best trials first")
    p.add_argument("--n-trials", type=int, help="trials to add in this run (default: 20, or as many as fit in --timeout when that is given alone)")
    p.add_argument(
        "--no-starting-point", dest="starting_point", action="store_const", const=False,
        help="leave the first trial of a new study to the sampler too (default: run hpo's starting configuration first: 2 ReLU layers of 64, Adam, lr 3e-3, batch 256, values outside the space left to the sampler)",
    )
    p.add_argument("--timeout", type=float, help="seconds after which no new trial starts (default: no limit)")
    p.add_argument("--seed", type=int, help="seed of the sampler, the split and each trial (default: 0)")
    p.add_argument("--pruner", choices=("median", "successive-halving", "hyperband", "wilcoxon", "none"), help="pruner (default: median, or wilcoxon with --cv; wilcoxon needs --cv)")
    p.add_argument("--max-params", type=int, help="parameter budget: trials whose network has more trainable parameters are pruned before training and never become the best trial, e.g. 20000 (default: no limit)")
    p.add_argument("--max-latency-ms", type=float, help="latency budget in milliseconds: median CPU time of one forward pass of one row on one thread; slower networks are pruned before training (default: no limit)")
    p.add_argument("--cv", type=int, help="cross-validate each trial with K folds of train+validation instead of one validation split, e.g. --cv 5 (default: off); the test part stays untouched")
    p.add_argument(
        "--metric", choices=("accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss", "rmse", "mae", "r2"),
        help="validation metric to optimize (default: accuracy, or rmse for regression); log_loss, rmse and mae "
        "are minimized, the others maximized; on skewed classes prefer balanced_accuracy or f1_macro",
    )
    p.add_argument(
        "--task", choices=("auto", "classification", "regression"),
        help="what to predict (default: auto, which takes a numeric target with more than 20 distinct values as regression)",
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: auto, CUDA when present)")
    p.add_argument("--config", help="TOML file with [optimize] options and [space] ranges; flags override it")
    p.add_argument("--space", action="append", default=[], metavar="KEY=VALUE", help=f"override one search-space entry, VALUE in TOML syntax, e.g. n_layers=[1,3] or activation=\"relu\"; repeatable. Keys: {', '.join(f.name for f in fields(SearchSpace))}")
    p.add_argument("--max-epochs", type=int, help="maximum epochs per trial (default: 30)")
    p.add_argument("--pack", type=_pack_size, help="train up to K trials of each worker together as one stacked computation, or 'auto' to size packs from the data and device (default: 1, one trial at a time)")
    p.add_argument("--workers", type=int, help="workers sharing the trials (default: one per visible GPU; on a CPU one per core, at most 8 and one per 4 trials; 0 only queues the trials for 'hpo worker')")
    p.add_argument("--gpus", type=_int_list, help="comma-separated CUDA device indices for the workers, e.g. 0,1 (default: all visible)")
    p.add_argument("--workers-per-gpu", type=int, help="workers sharing each GPU (default: 1)")
    p.add_argument("--heartbeat-interval", type=float, help="seconds between heartbeats of a running trial (default: 5)")
    p.add_argument("--grace-period", type=float, help="seconds without a heartbeat after which a trial counts as lost and runs again (default: 30)")
    p.set_defaults(handler=_run_optimize)


def _add_worker(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", dest="study_name", required=True, help="study to join, started with 'hpo optimize'")
    p.add_argument("--storage", help=_STORAGE_HELP)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--threads", type=int, help="torch threads of this worker (default: $HPO_TORCH_THREADS, else 1 on a CPU; start one worker per core)")
    p.add_argument("--pack", type=_pack_size, default=1, help="train up to K trials of this worker together as one stacked computation, or 'auto' (default: 1)")
    p.set_defaults(handler=_run_worker)


def _add_finalize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", dest="study_name", required=True, help="study to finalize")
    p.add_argument("--storage", help=_STORAGE_HELP)
    p.add_argument("--out", required=True, help="folder for model.json and model.pt, e.g. models/ocean")
    p.add_argument("--data", help="the study's data file at its new path, if it was moved; its content must be unchanged")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--seeds", type=int, default=1, help="train the best configuration this many times with different seeds and print the mean and standard deviation of the test metric (default: 1)")
    p.add_argument("--top-k", type=int, default=1, help="also retrain the next best trials, K in all, with --seeds seeds each, and tell whether the best trial's lead exceeds the seed noise (default: 1)")
    p.set_defaults(handler=_run_finalize)


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="bundle folder written by 'hpo finalize'")
    p.add_argument("--data", required=True, help="CSV or Parquet file with the feature columns")
    p.add_argument("--output", help="CSV file for the predictions; default: write CSV to stdout")
    p.set_defaults(handler=_run_predict)


def _add_views(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("dashboard", parents=[common], help="browse studies in optuna-dashboard", description="Serve optuna-dashboard on a study's storage, read-only unless --writable.")
    p.add_argument("--study", dest="study_name", help="study to open; also selects its default storage file")
    p.add_argument("--storage", help="Optuna storage URL; default: sqlite:///study_db/<study>.db")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1); other than loopback only with --allow-remote-unauthenticated")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080; 0 picks a free one)")
    p.add_argument("--writable", action="store_true", help="let the dashboard change and delete studies and artifacts (default: SQLite opened read-only)")
    p.add_argument("--allow-remote-unauthenticated", dest="allow_remote", action="store_true", help="allow a non-loopback --host, knowing that optuna-dashboard has no login")
    p.set_defaults(handler=_run_dashboard)

    p = sub.add_parser("report", parents=[common], help="write an HTML report and trials.csv", description="Write report.html (self-contained, opens offline) and trials.csv for a study.")
    p.add_argument("--study", dest="study_name", required=True, help="study to report on")
    p.add_argument("--storage", help="Optuna storage URL; default: sqlite:///study_db/<study>.db")
    p.add_argument("--out", required=True, help="folder for report.html and trials.csv, e.g. reports/ocean")
    p.set_defaults(handler=_run_report)

    p = sub.add_parser("studies", parents=[common], help="list studies with trial counts and best values", description="List the studies of a storage, or of every file in study_db/.")
    p.add_argument("--storage", help="Optuna storage URL; default: every SQLite file in $HPO_STUDY_DIR or ./study_db")
    p.add_argument("--format", dest="output_format", choices=("table", "json"), default="table", help="table (default) or json (one object per study, one per line)")
    p.set_defaults(handler=_run_studies)

    p = sub.add_parser("show", parents=[common], help="show the best trial's parameters and metrics", description="Show the best trial of a study as tables of parameters and metrics.")
    p.add_argument("--study", dest="study_name", required=True, help="study to show")
    p.add_argument("--storage", help="Optuna storage URL; default: sqlite:///study_db/<study>.db")
    p.add_argument("--format", dest="output_format", choices=("table", "json"), default="table", help="table (default) or json")
    p.set_defaults(handler=_run_show)


def _run_optimize(args: argparse.Namespace) -> int:
    import optuna

    from hpo.config import OPTION_TYPES, read_config
    from hpo.overview import finish_run
    from hpo.space import SearchSpace, parse_override
    from hpo.study import optimize

    options, space_values = read_config(args.config)
    for name in OPTION_TYPES:
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    if args.gpus is not None:
        options["gpus"] = args.gpus
    for text in args.space:
        key, value = parse_override(text)
        space_values[key] = value
    if args.max_epochs is not None:
        space_values["max_epochs"] = args.max_epochs
    if options.get("timeout") is not None and "n_trials" not in options:
        options["n_trials"] = None  # a time limit alone runs trials until it passes

    if space_values:
        SearchSpace.from_dict(space_values, origin=args.config or "--space")  # reports errors with their origin
    space = space_values or None
    show_bar = not args.quiet and args.log_format == "text" and sys.stderr.isatty()
    study = optimize(space=space, show_progress_bar=show_bar, new_study=args.new_study, worker_args=_worker_args(args), **options)
    if options.get("workers") == 0:
        n_waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
        print(f"Study {study.study_name!r}: {n_waiting} trials queued; start workers with 'hpo worker --study {study.study_name}'.")
        return EXIT_OK
    print(finish_run(study))
    return EXIT_OK


def _run_worker(args: argparse.Namespace) -> int:
    from hpo.workers import run_worker

    stats = run_worker(args.study_name, args.storage, device=args.device, n_threads=args.threads, pack=args.pack)
    summary = f"Worker ended {stats.n_complete} complete, {stats.n_pruned} pruned and {stats.n_failed} failed trials."
    if PARENT_PID_ENV in os.environ:
        # A worker started by 'hpo optimize' shares its stdout, which scripts read for the study summary alone.
        _logger.info(summary)
    else:
        print(summary)
    return EXIT_OK


def _run_finalize(args: argparse.Namespace) -> int:
    from hpo.finalizer import finalize

    result = finalize(args.study_name, args.out, storage=args.storage, device=args.device, n_seeds=args.seeds, top_k=args.top_k, data=args.data)
    test = result.test_metrics
    metric = result.metric
    print(
        f"Final model from trial {result.trial_number}: validation {metric} {result.validation_score:.5f}, "
        f"test {metric} {test[metric]:.5f} on {test['n_rows']} rows{_baseline_note(result.baseline)}."
    )
    others = ", ".join(f"{name} {value:.5f}" for name, value in test.items() if name not in (metric, "n_rows"))
    print(f"Other test metrics: {others}")
    for row in result.per_class or []:
        print(f"  class {row['class']}: precision {row['precision']:.3f}, recall {row['recall']:.3f}, {row['support']} rows")
    for spread in result.spreads:
        print(f"Trial {spread.trial_number} over {len(spread.values)} seeds: test {metric} {spread.mean:.5f} ± {spread.std:.5f} (validation {spread.validation_score:.5f})")
    if result.margin is not None:
        check = result.margin
        relation = "larger" if check.is_larger_than_noise else "not larger"
        verb = "leads" if check.margin >= 0 else "trails"
        print(f"Trial {check.winner} {verb} trial {check.runner_up} by {abs(check.margin):.5f} test {metric} on average; the lead is {relation} than the seed noise (pooled std {check.noise:.5f}).")
    print(f"Saved to {result.out_dir}")
    return EXIT_OK


def _run_predict(args: argparse.Namespace) -> int:
    from hpo.predict import predict_file

    result = predict_file(args.model, args.data, args.output)
    if args.output is None:
        result.predictions.to_csv(sys.stdout, index=False)
    if result.accuracy is not None:
        print(f"accuracy {result.accuracy:.5f} on {result.n_scored} rows", file=sys.stderr if args.output is None else sys.stdout)
    if result.scores is not None:
        scores = ", ".join(f"{name} {value:.5f}" for name, value in result.scores.items())
        print(f"{scores} on {result.n_scored} rows", file=sys.stderr if args.output is None else sys.stdout)
    return EXIT_OK


def _run_dashboard(args: argparse.Namespace) -> int:
    from hpo.dashboard import DashboardInfo, serve_dashboard

    def announce(info: DashboardInfo) -> None:
        mode = "writable" if info.writable else "read-only"
        print(f"Dashboard of {info.storage} ({mode}) at {info.url}", flush=True)
        print("Press Ctrl+C to stop.", flush=True)

    try:
        serve_dashboard(args.study_name, args.storage, host=args.host, port=args.port, writable=args.writable, allow_remote=args.allow_remote, on_ready=announce)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def _run_report(args: argparse.Namespace) -> int:
    from hpo.report import write_report

    result = write_report(args.study_name, args.out, storage=args.storage)
    print(f"Wrote {result.html_path} and {result.csv_path}")
    for figure_id, reason in result.missing_figures.items():
        print(f"  left out {figure_id}: {reason}")
    return EXIT_OK


def _run_studies(args: argparse.Namespace) -> int:
    import json

    from hpo.overview import format_table, list_studies

    rows = list_studies(args.storage)
    if args.output_format == "json":
        for row in rows:
            print(json.dumps(row.to_dict()))
        return EXIT_OK
    if not rows:
        print("No studies found.")
        return EXIT_OK
    headers = ["study", "trials", "complete", "pruned", "failed", "running", "best trial", "best value", "storage"]
    table = [[r.study_name, r.n_trials, r.complete, r.pruned, r.failed, r.running, r.best_trial, r.best_value, r.storage] for r in rows]
    print(format_table(headers, table))
    return EXIT_OK


def _run_show(args: argparse.Namespace) -> int:
    import json

    from hpo.overview import format_table, show_best_trial

    view = show_best_trial(args.study_name, args.storage)
    if args.output_format == "json":
        print(json.dumps(view.to_dict()))
        return EXIT_OK
    counts = view.counts
    print(f"Study {view.study_name!r} in {view.storage}: {counts['n_trials']} trials ({counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed)")
    print(f"Best trial {view.trial_number}\n")
    print(format_table(["parameter", "value"], [list(row) for row in view.params]))
    print()
    print(format_table(["metric", "value"], [list(row) for row in view.metrics]))
    return EXIT_OK


def _baseline_note(baseline: dict[str, Any] | None) -> str:
    if not baseline:
        return ""
    return f" ({baseline.get('kind', 'majority')} baseline {baseline['value']:.5f})"


def _warn_password_on_command_line(url: str | None) -> None:
    from hpo.storage import mask_password

    if url is not None and mask_password(url) != url:
        _logger.warning("The --storage URL holds a password, which other users of this machine can read in the process list; set HPO_STORAGE or the config file's storage key instead.")


def _pack_size(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"invalid pack size {text!r}; use a positive integer or auto")
    return size


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in _comma_list(text)]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 0,1; got {text!r}") from err


def _worker_args(args: argparse.Namespace) -> list[str]:
    """Return the logging options that worker processes started by ``optimize`` inherit."""
    worker_args = ["--log-format", args.log_format]
    if args.quiet:
        worker_args.append("--quiet")
    elif args.verbose:
        worker_args.append("-" + "v" * args.verbose)
    if getattr(args, "debug", False):
        worker_args.append("--debug")
    return worker_args


def _configure_logging(verbose: int, quiet: bool, log_format: str, debug: bool) -> None:
    import optuna

    from hpo.events import JsonFormatter
    from hpo.progress import ProgressLogHandler

    level = logging.INFO
    if quiet:
        level = logging.WARNING
    elif verbose >= 2:
        level = logging.DEBUG
    # Trial events: failures by default, every finished trial at -v, starts too at -vv, all in JSON.
    event_level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler: logging.Handler
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        event_level = logging.DEBUG
    else:
        handler = ProgressLogHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("hpo")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.getLogger("hpo.events").setLevel(event_level)
    if log_format == "json":
        # Optuna's and Python's warnings join the same stream, so that every line is JSON.
        optuna.logging.disable_default_handler()
        for name in ("optuna", "py.warnings"):
            logging.getLogger(name).handlers[:] = [handler]
            logging.getLogger(name).propagate = False
        logging.captureWarnings(True)
    # hpo logs each trial and its failure reason itself. Optuna's own per-trial lines would
    # repeat them, with a traceback for each failed trial, so they show only with --debug.
    optuna.logging.set_verbosity(optuna.logging.WARNING if debug else optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
