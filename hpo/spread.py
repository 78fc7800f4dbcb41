"""Seed spread: retrain a configuration with several seeds and compare trials against that noise."""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from hpo.engine import DeviceData, predict_logits
from hpo.metrics import Metric, compute_metric
from hpo.objective import trial_seed
from hpo.retrain import fit_network
from hpo.space import TrialConfig

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedSpread:
    """Test scores of one trial's configuration retrained with several seeds.

    Attributes:
        trial_number: The trial whose configuration was retrained.
        validation_score: The trial's own validation value of the metric.
        seeds: Seeds of the runs; the first is the trial's own seed.
        values: Test value of the metric of each run, in the order of ``seeds``.
    """

    trial_number: int
    validation_score: float
    seeds: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        """Mean of the test values."""
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation of the test values (0.0 for a single run)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the spread as JSON-able values."""
        return {
            "trial_number": self.trial_number,
            "validation": self.validation_score,
            "seeds": list(self.seeds),
            "values": [round(v, 6) for v in self.values],
            "mean": round(self.mean, 6),
            "std": round(self.std, 6),
        }


@dataclass(frozen=True)
class MarginCheck:
    """Whether the best trial's lead over the runner-up exceeds the seed noise."""

    winner: int
    runner_up: int
    margin: float
    noise: float

    @property
    def is_larger_than_noise(self) -> bool:
        """True when the margin exceeds the pooled seed standard deviation."""
        return self.margin > self.noise

    def to_dict(self) -> dict[str, Any]:
        """Return the check as JSON-able values."""
        return {
            "winner": self.winner,
            "runner_up": self.runner_up,
            "margin": round(self.margin, 6),
            "noise": round(self.noise, 6),
            "larger_than_noise": self.is_larger_than_noise,
        }


def spread_seeds(seed: int, n_seeds: int) -> list[int]:
    """Return ``n_seeds`` seeds: ``seed`` itself, then seeds derived from it."""
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1; got {n_seeds}")
    return [seed] + [trial_seed(seed, i) for i in range(1, n_seeds)]


def score_on_test(network: torch.nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, metric: Metric, *, y_scale: float = 1.0) -> float:
    """Return ``metric`` of ``network`` on the test part."""
    return compute_metric(metric.name, predict_logits(network, x_test), y_test, y_scale=y_scale)


def measure_spread(
    trial: optuna.trial.FrozenTrial,
    data: DeviceData,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    metric: Metric,
    n_seeds: int,
    *,
    known: dict[int, float] | None = None,
) -> SeedSpread:
    """Retrain ``trial``'s configuration with ``n_seeds`` seeds on ``data`` and test each run.

    Each run trains for the trial's best-epoch count, as the final model does.

    Args:
        trial: A completed trial with ``config``, ``seed`` and ``best_epoch`` attributes.
        data: The final training data (train+validation), without a validation part.
        x_test: Test features on the same device.
        y_test: Test targets on the same device.
        metric: The study's metric.
        n_seeds: Number of runs, >= 1.
        known: Test values already measured, by seed; those seeds are not trained again.

    Returns:
        The test values of every run.
    """
    config = TrialConfig.from_dict(trial.user_attrs["config"])
    n_epochs = int(trial.user_attrs["best_epoch"]) + 1
    seeds = spread_seeds(int(trial.user_attrs["seed"]), n_seeds)
    values = []
    for seed in seeds:
        if known is not None and seed in known:
            values.append(known[seed])
            continue
        network, _, _ = fit_network(data, config, seed=seed, metric=metric, n_epochs=n_epochs)
        values.append(score_on_test(network, x_test, y_test, metric, y_scale=data.y_scale))
        _logger.info("Trial %d with seed %d: test %s %.5f.", trial.number, seed, metric.name, values[-1])
    return SeedSpread(trial_number=trial.number, validation_score=float(trial.value), seeds=tuple(seeds), values=tuple(values))  # type: ignore[arg-type]


def check_margin(spreads: list[SeedSpread], metric: Metric) -> MarginCheck | None:
    """Compare the first spread (the best trial by validation) with the best of the others.

    The margin is the winner's mean test value minus the runner-up's, signed so that a
    positive margin favours the winner. The noise is the pooled standard deviation of
    the two, ``sqrt((std_1^2 + std_2^2) / 2)``.

    Returns:
        The check, or None with fewer than two spreads.
    """
    if len(spreads) < 2:
        return None
    sign = 1.0 if metric.higher_is_better else -1.0
    winner = spreads[0]
    runner_up = max(spreads[1:], key=lambda s: sign * s.mean)
    margin = sign * (winner.mean - runner_up.mean)
    noise = math.sqrt((winner.std**2 + runner_up.std**2) / 2)
    return MarginCheck(winner=winner.trial_number, runner_up=runner_up.trial_number, margin=margin, noise=noise)
