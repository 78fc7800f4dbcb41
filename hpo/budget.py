"""Size and latency budgets of a study, as Optuna constraints, and the metric-size Pareto front."""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from torch import nn

from hpo.exceptions import InputError
from hpo.model import build_mlp

_logger = logging.getLogger(__name__)

# Forward passes timed per trial after the warm-up passes; the median is the latency.
LATENCY_RUNS = 30
LATENCY_WARMUP_RUNS = 5


@dataclass(frozen=True)
class Budget:
    """Limits a trial's network must meet to count as feasible; None means no limit.

    Attributes:
        max_params: Maximum number of trainable parameters.
        max_latency_ms: Maximum median time, in milliseconds, of one forward pass of a
            single row on one CPU thread.
    """

    max_params: int | None = None
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        errors = []
        if self.max_params is not None and (isinstance(self.max_params, bool) or not isinstance(self.max_params, int) or self.max_params < 1):
            errors.append(f"--max-params must be a positive integer; got {self.max_params!r}")
        if self.max_latency_ms is not None and not (math.isfinite(self.max_latency_ms) and self.max_latency_ms > 0):
            errors.append(f"--max-latency-ms must be a positive number of milliseconds; got {self.max_latency_ms!r}")
        if errors:
            raise InputError("; ".join(errors) + ".")

    @property
    def is_active(self) -> bool:
        """Whether any limit is set."""
        return self.max_params is not None or self.max_latency_ms is not None

    def to_dict(self) -> dict[str, Any]:
        """Return the limits as JSON-able values."""
        return {"max_params": self.max_params, "max_latency_ms": self.max_latency_ms}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Budget:
        """Rebuild a budget from ``to_dict`` output (None: no limits)."""
        values = values or {}
        return cls(max_params=values.get("max_params"), max_latency_ms=values.get("max_latency_ms"))


def apply_budget(trial: optuna.Trial, arch: dict[str, Any], n_params: int, budget: Budget) -> None:
    """Set the trial's constraints and prune it before training when it breaks the budget.

    Each limit becomes one constraint through ``trial.set_constraint`` (value minus limit,
    so values <= 0 are feasible). Optuna then leaves the trial out of ``best_trial`` and
    the TPE sampler steers away from infeasible regions. A trial over budget is pruned
    at once, because training cannot change its size or its latency.

    Raises:
        optuna.TrialPruned: When the network breaks a limit.
    """
    violations = []
    if budget.max_params is not None:
        trial.set_constraint("n_params", float(n_params - budget.max_params))
        if n_params > budget.max_params:
            violations.append(f"{n_params} parameters > --max-params {budget.max_params}")
    if budget.max_latency_ms is not None:
        latency = measure_latency_ms(build_mlp(arch))
        trial.set_user_attr("latency_ms", round(latency, 4))
        trial.set_constraint("latency_ms", latency - budget.max_latency_ms)
        if latency > budget.max_latency_ms:
            violations.append(f"latency {latency:.3f} ms > --max-latency-ms {budget.max_latency_ms:g}")
    if violations:
        raise optuna.TrialPruned("over budget: " + ", ".join(violations))


def measure_latency_ms(network: nn.Module) -> float:
    """Return the median time of one forward pass of one row on the CPU, in milliseconds.

    The network is timed in evaluation mode on one thread, which is how a small service
    usually runs it.
    """
    # NOTE: wall-clock timings vary with machine load, so a network near the limit can
    # land on either side of it in different runs.
    network = network.to("cpu").eval()
    n_inputs = next(network.parameters()).shape[1]
    row = torch.zeros(1, n_inputs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(LATENCY_WARMUP_RUNS):
                network(row)
            timings = []
            for _ in range(LATENCY_RUNS):
                started = time.perf_counter()
                network(row)
                timings.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return 1000.0 * statistics.median(timings)


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Return the completed, feasible trials that no other such trial beats on value and ``n_params``.

    A trial is dominated when another has a value at least as good, at most as many
    parameters, and is strictly better in one of them. The front is sorted by ``n_params``.
    """
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = [
        t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value) and "n_params" in t.user_attrs
        and all(value <= 0.0 for value in t.constraints.values())
    ]

    def score(t: optuna.trial.FrozenTrial) -> tuple[float, int]:
        # Lower is better in both coordinates.
        return (-float(t.value) if maximize else float(t.value), int(t.user_attrs["n_params"]))  # type: ignore[arg-type]

    front = []
    for trial in trials:
        mine = score(trial)
        dominated = any(
            other is not trial and all(o <= m for o, m in zip(score(other), mine)) and score(other) != mine
            for other in trials
        )
        if not dominated:
            front.append(trial)
    return sorted(front, key=lambda t: (int(t.user_attrs["n_params"]), t.number))
