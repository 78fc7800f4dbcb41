"""Command-line interface: parse arguments, call the Python API, map errors to exit codes.

Exit codes: 0 success, 1 a study or storage problem, 2 bad input or usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from hpo import __version__
from hpo.exceptions import HpoError
from hpo.space import SearchSpace

_logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_LOGGING_FLAGS = (
    (("--debug",), "show tracebacks of errors and of failed trials"),
    (("-v", "--verbose"), "log per-epoch details (DEBUG level)"),
    (("-q", "--quiet"), "log warnings and errors only"),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hpo`` command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet, args.debug)
    try:
        return int(args.handler(args))
    except HpoError as err:
        if args.debug:
            _logger.exception("hpo failed")
        print(f"hpo: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("hpo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subcommand per operation."""
    parser = argparse.ArgumentParser(prog="hpo", description="Hyperparameter optimization of PyTorch MLPs on tabular data.")
    parser.add_argument("--version", action="version", version=f"hpo {__version__}")
    # The logging flags work before and after the command name. SUPPRESS keeps a
    # subcommand's unset flag from overwriting one given before the command.
    for flags, help_text in _LOGGING_FLAGS:
        parser.add_argument(*flags, action="store_true", help=help_text)
    common = argparse.ArgumentParser(add_help=False)
    for flags, help_text in _LOGGING_FLAGS:
        common.add_argument(*flags, action="store_true", default=argparse.SUPPRESS, help=help_text)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_optimize(sub.add_parser("optimize", parents=[common], help="run trials on a new or existing study", description="Run trials on a new or existing study."))
    _add_finalize(sub.add_parser("finalize", parents=[common], help="retrain the best trial and save the model", description="Retrain the best trial on train+validation, test it once and save the bundle."))
    _add_predict(sub.add_parser("predict", parents=[common], help="predict a table with a saved model", description="Predict a CSV or Parquet file with a saved bundle."))
    return parser


def _add_optimize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="CSV/Parquet file or built-in set (synthetic, iris, wine, breast_cancer, digits); default: synthetic, or the stored data of an existing --study")
    p.add_argument("--target", help="target column to predict (required for files)")
    p.add_argument("--ignore-columns", type=_comma_list, help="comma-separated columns to drop, e.g. id,timestamp")
    p.add_argument("--study", dest="study_name", help="study name (letters, digits, _ . -); default: the data set name or file stem")
    p.add_argument("--storage", help="Optuna storage URL; default: sqlite:///study_db/<study>.db")
    p.add_argument("--n-trials", type=int, help="trials to add in this run (default: 20)")
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
    p.set_defaults(handler=_run_optimize)


def _add_finalize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", dest="study_name", required=True, help="study to finalize")
    p.add_argument("--storage", help="Optuna storage URL; default: sqlite:///study_db/<study>.db")
    p.add_argument("--out", required=True, help="folder for model.json and model.pt, e.g. models/ocean")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--seeds", type=int, default=1, help="train the best configuration this many times with different seeds and print the mean and standard deviation of the test metric (default: 1)")
    p.add_argument("--top-k", type=int, default=1, help="also retrain the next best trials, K in all, with --seeds seeds each, and tell whether the best trial's lead exceeds the seed noise (default: 1)")
    p.set_defaults(handler=_run_finalize)


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="bundle folder written by 'hpo finalize'")
    p.add_argument("--data", required=True, help="CSV or Parquet file with the feature columns")
    p.add_argument("--output", help="CSV file for the predictions; default: write CSV to stdout")
    p.set_defaults(handler=_run_predict)


def _run_optimize(args: argparse.Namespace) -> int:
    from hpo.config import OPTION_TYPES, read_config
    from hpo.space import SearchSpace, parse_override
    from hpo.study import optimize

    options, space_values = read_config(args.config)
    for name in OPTION_TYPES:
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    for text in args.space:
        key, value = parse_override(text)
        space_values[key] = value
    if args.max_epochs is not None:
        space_values["max_epochs"] = args.max_epochs

    space = SearchSpace.from_dict(space_values, origin=args.config or "--space") if space_values else None
    show_bar = not args.quiet and sys.stderr.isatty()
    study = optimize(space=space, show_progress_bar=show_bar, **options)
    _print_study_summary(study)
    return EXIT_OK


def _run_finalize(args: argparse.Namespace) -> int:
    from hpo.finalizer import finalize

    result = finalize(args.study_name, args.out, storage=args.storage, device=args.device, n_seeds=args.seeds, top_k=args.top_k)
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


def _print_study_summary(study: Any) -> None:
    import optuna

    from hpo.baseline import stored_baseline
    from hpo.storage import SETTINGS_ATTR, mask_password

    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {state.name.lower(): states.count(state) for state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)}
    url = mask_password(study._storage._backend.url if hasattr(study._storage, "_backend") else study._storage.url)
    print(f"Study {study.study_name!r} in {url}: {len(states)} trials ({counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed).")
    try:
        best = study.best_trial
    except ValueError:
        print("No trial completed yet.")
        return
    metric = study.user_attrs.get(SETTINGS_ATTR, {}).get("metric", "accuracy")
    print(f"Best trial {best.number}: validation {metric} {best.value:.5f}{_baseline_note(stored_baseline(study))}")
    for key, value in best.user_attrs.get("config", {}).items():
        print(f"  {key} = {value}")
    if any(study.user_attrs.get(SETTINGS_ATTR, {}).get("constraints", {}).values()):
        _print_pareto_front(study, metric)


def _print_pareto_front(study: Any, metric: str) -> None:
    from hpo.budget import pareto_front

    print(f"Pareto front of validation {metric} against parameter count:")
    for trial in pareto_front(study):
        print(f"  trial {trial.number}: {metric} {trial.value:.5f}, {trial.user_attrs['n_params']} parameters")


def _baseline_note(baseline: dict[str, Any] | None) -> str:
    if not baseline:
        return ""
    return f" ({baseline.get('kind', 'majority')} baseline {baseline['value']:.5f})"


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _configure_logging(verbose: bool, quiet: bool, debug: bool) -> None:
    import optuna

    level = logging.INFO
    if verbose:
        level = logging.DEBUG
    elif quiet:
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("hpo")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # hpo logs each trial and its failure reason itself. Optuna's own per-trial lines would
    # repeat them, with a traceback for each failed trial, so they show only with --debug.
    optuna.logging.set_verbosity(optuna.logging.WARNING if debug else optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
