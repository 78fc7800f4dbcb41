"""Glue between an Optuna trial and the engine: suggestions in; reports, pruning and attributes out."""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
import torch

from hpo.budget import Budget, apply_budget
from hpo.device import describe_device, free_device_memory
from hpo.engine import DeviceData, EpochStats, NonFiniteLossError, train
from hpo.metrics import METRICS, Metric
from hpo.model import build_mlp
from hpo.reporting import DirectReporter, TrialReporter, batched_params
from hpo.space import SearchSpace, TrialConfig, suggest_config

_logger = logging.getLogger(__name__)

# Trial user attribute that explains why a trial failed or was pruned.
REASON_ATTR = "reason"
_MAX_REASON_CHARS = 300


class NonFiniteObjectiveError(RuntimeError):
    """The objective value is NaN or infinite, which Optuna would store as a COMPLETE trial."""


def checked_value(trial: optuna.Trial, value: float) -> float:
    """Return ``value`` if it is finite; else store the reason on ``trial`` and raise.

    Optuna stores an infinite value as a COMPLETE trial, which would then win (or lose)
    every comparison; a failed trial is kept out of the sampler's model and the finalizer.

    Raises:
        NonFiniteObjectiveError: When ``value`` is NaN or infinite.
    """
    if math.isfinite(value):
        return value
    reason = f"non-finite objective value {value}"
    trial.set_user_attr(REASON_ATTR, reason)
    raise NonFiniteObjectiveError(reason)


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Derive a trial's seed from the study seed and the trial number, stable across workers."""
    return (study_seed * 1_000_003 + trial_number) % (2**31 - 1)


def parameter_count(arch: dict[str, Any]) -> int:
    """Return the number of trainable parameters of the network ``build_mlp(arch)`` builds."""
    widths = [int(arch["n_inputs"]), *(int(w) for w in arch["hidden"]), int(arch["n_outputs"])]
    return sum(width_in * width_out + width_out for width_in, width_out in zip(widths, widths[1:]))


def architecture(config: TrialConfig, n_inputs: int, n_outputs: int) -> dict[str, Any]:
    """Return the architecture description that ``hpo.model.build_mlp`` takes."""
    return {
        "n_inputs": n_inputs,
        "hidden": list(config.hidden),
        "activation": config.activation,
        "dropout": config.dropout,
        "n_outputs": n_outputs,
    }


class Objective:
    """Train one network per trial and return its best validation score of ``metric``.

    Each trial reports the validation score after every epoch (step = epoch index), is
    pruned when the pruner says so, and stores as user attributes: ``seed``, ``n_params``,
    ``epochs_run``, ``best_epoch``, ``train_seconds``, ``device``, ``config`` (the full
    trial config) and ``train_loss`` (the per-epoch training loss curve). A trial that
    fails or is pruned also stores a short ``reason``. With a ``budget``, each trial
    also gets Optuna constraints, and a network over budget is pruned before training.
    """

    def __init__(
        self,
        space: SearchSpace,
        data: DeviceData,
        *,
        seed: int,
        metric: Metric = METRICS["accuracy"],
        budget: Budget | None = None,
    ) -> None:
        self.space = space
        self.data = data
        self.seed = seed
        self.metric = metric
        self.budget = budget
        self.device_name = describe_device(data.device)
        self._reporter: TrialReporter | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        with batched_params(trial):
            config = suggest_config(trial, self.space, task=self.data.task)
        seed = trial_seed(self.seed, trial.number)
        arch = architecture(config, self.data.x_train.shape[1], self.data.n_outputs)

        reporter = self.reporter(trial)
        set_start_attrs(reporter, trial, seed=seed, n_params=parameter_count(arch), device=self.device_name, config=config)
        curve: list[float] = []

        try:
            if self.budget is not None and self.budget.is_active:
                apply_budget(trial, arch, parameter_count(arch), self.budget)
            return self.run_trial(trial, config, arch, seed, curve)
        except optuna.TrialPruned as err:
            set_curve_attrs(reporter, trial, curve)
            reporter.set_user_attr(trial, REASON_ATTR, str(err))
            raise
        except NonFiniteLossError as err:
            set_curve_attrs(reporter, trial, curve)
            reporter.set_user_attr(trial, REASON_ATTR, str(err))
            raise
        except torch.OutOfMemoryError as err:
            set_curve_attrs(reporter, trial, curve)
            reporter.set_user_attr(trial, REASON_ATTR, f"out of memory at batch size {config.batch_size}")
            raise RuntimeError(f"out of memory at batch size {config.batch_size}") from err
        except Exception as err:
            set_curve_attrs(reporter, trial, curve)
            reporter.set_user_attr(trial, REASON_ATTR, failure_reason(err))
            raise
        except KeyboardInterrupt:
            # Optuna stores the trial as FAIL and re-raises, which stops the study.
            self._finish_attrs(trial, curve)
            trial.set_user_attr(REASON_ATTR, f"interrupted at epoch {len(curve)}")
            raise
        finally:
            free_device_memory(self.data.device)
            # study.optimize tells the trial finished after this returns, so nothing may stay queued.
            reporter.flush()

    def reporter(self, trial: optuna.Trial) -> TrialReporter | DirectReporter:
        """Return the batched reporter of ``trial``'s study, or a direct one for a ``FixedTrial``."""
        if not isinstance(trial, optuna.Trial):
            return DirectReporter()
        if self._reporter is None or self._reporter.study is not trial.study:
            self._reporter = TrialReporter(trial.study)
        return self._reporter

    def run_trial(self, trial: optuna.Trial, config: TrialConfig, arch: dict[str, Any], seed: int, curve: list[float]) -> float:
        """Train one network on the validation split and return its best validation score.

        ``curve`` collects the per-epoch training loss as training goes, so that a pruned
        or failed trial still stores the epochs it ran.
        """
        torch.manual_seed(seed)
        model = build_mlp(arch).to(self.data.device)
        reporter = self.reporter(trial)

        def on_epoch(stats: EpochStats) -> None:
            curve.append(round(stats.train_loss, 6))
            assert stats.val_score is not None
            reporter.report(trial, stats.val_score, stats.epoch)
            if reporter.should_prune(trial):
                raise optuna.TrialPruned(pruned_reason(stats.epoch, self.metric.name, stats.val_score))
            reporter.flush_if_due()

        result = train(model, config, self.data, seed=seed, on_epoch=on_epoch, metric=self.metric)
        assert result.best_score is not None and result.best_epoch is not None
        set_curve_attrs(reporter, trial, curve)
        set_result_attrs(reporter, trial, best_epoch=result.best_epoch, seconds=result.seconds)
        return checked_value(trial, result.best_score)

    @staticmethod
    def _finish_attrs(trial: optuna.Trial, curve: list[float]) -> None:
        trial.set_user_attr("epochs_run", len(curve))
        trial.set_user_attr("train_loss", curve)


def set_start_attrs(reporter: TrialReporter | DirectReporter, trial: optuna.Trial, *, seed: int, n_params: int, device: str, config: TrialConfig) -> None:
    """Queue the user attributes every trial gets when training starts."""
    reporter.set_user_attr(trial, "seed", seed)
    reporter.set_user_attr(trial, "n_params", n_params)
    reporter.set_user_attr(trial, "device", device)
    reporter.set_user_attr(trial, "config", config.to_dict())


def set_curve_attrs(reporter: TrialReporter | DirectReporter, trial: optuna.Trial, curve: list[float]) -> None:
    """Queue the epoch count and the per-epoch training loss curve (rounded to 6 digits)."""
    reporter.set_user_attr(trial, "epochs_run", len(curve))
    reporter.set_user_attr(trial, "train_loss", curve)


def set_result_attrs(reporter: TrialReporter | DirectReporter, trial: optuna.Trial, *, best_epoch: int, seconds: float) -> None:
    """Queue the attributes of a completed trial: its best epoch and training time."""
    reporter.set_user_attr(trial, "best_epoch", best_epoch)
    reporter.set_user_attr(trial, "train_seconds", round(seconds, 3))


def pruned_reason(epoch: int, metric_name: str, score: float) -> str:
    """Return the ``reason`` stored on a trial pruned at ``epoch`` with validation ``score``."""
    return f"pruned at epoch {epoch} with validation {metric_name} {score:.4f}"


def failure_reason(err: BaseException) -> str:
    """Return the ``reason`` stored on a trial that failed with ``err``, cut to a short line."""
    return f"{type(err).__name__}: {err}"[:_MAX_REASON_CHARS]
