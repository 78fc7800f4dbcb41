"""Parameter and latency budgets as Optuna constraints, and the metric-size Pareto front."""

from __future__ import annotations

import optuna
import pytest

import hpo
from hpo.budget import Budget, pareto_front
from hpo.exceptions import InputError
from hpo.finalizer import best_trial
from hpo.model import build_mlp, count_parameters
from hpo.objective import REASON_ATTR, parameter_count

_COMPLETE = optuna.trial.TrialState.COMPLETE
_PRUNED = optuna.trial.TrialState.PRUNED


@pytest.mark.parametrize("hidden", [[], [8], [16, 4], [3, 5, 7]])
def test_parameter_count_matches_built_network(hidden: list[int]) -> None:
    arch = {"n_inputs": 6, "hidden": hidden, "activation": "relu", "dropout": 0.1, "n_outputs": 3}

    assert parameter_count(arch) == count_parameters(build_mlp(arch))


def test_optimize_max_params_prunes_over_budget() -> None:
    space = {"n_layers": [1, 2], "n_units": [4, 128], "max_epochs": 3, "batch_size": 32}

    study = hpo.optimize("iris", n_trials=8, space=space, max_params=300, pruner="none", device="cpu")

    over = [t for t in study.trials if t.user_attrs["n_params"] > 300]
    assert over
    for trial in over:
        assert trial.state == _PRUNED
        assert trial.user_attrs[REASON_ATTR].startswith("over budget:")
        assert trial.constraints["n_params"] > 0
    complete = [t for t in study.trials if t.state == _COMPLETE]
    assert complete
    assert all(t.constraints["n_params"] <= 0 for t in complete)
    assert study.best_trial.user_attrs["n_params"] <= 300
    assert study.user_attrs["hpo_settings"]["constraints"] == {"max_params": 300, "max_latency_ms": None}


def test_optimize_max_latency_prunes_slow_network() -> None:
    study = hpo.optimize("iris", n_trials=1, space={"max_epochs": 2}, max_latency_ms=1e-6, device="cpu")

    trial = study.trials[0]
    assert trial.state == _PRUNED
    assert "--max-latency-ms" in trial.user_attrs[REASON_ATTR]
    assert trial.user_attrs["latency_ms"] > 0
    assert trial.constraints["latency_ms"] > 0


def _trial(value: float, n_params: int, over_by: float) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        value=value,
        params={},
        distributions={},
        user_attrs={"n_params": n_params, "config": {}, "seed": 0, "best_epoch": 0},
        system_attrs={"constraints:n_params": over_by},
    )


def test_best_trial_skips_over_budget_trial() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(_trial(0.99, 5000, over_by=4000.0))
    study.add_trial(_trial(0.80, 900, over_by=-100.0))
    study.add_trial(_trial(0.70, 500, over_by=-500.0))

    assert best_trial(study).number == 1
    assert study.best_trial.number == 1


def test_pareto_front_keeps_non_dominated_trials() -> None:
    study = optuna.create_study(direction="maximize")
    for value, n_params in [(0.90, 1000), (0.85, 200), (0.80, 500), (0.95, 4000), (0.95, 5000)]:
        study.add_trial(_trial(value, n_params, over_by=0.0))

    front = pareto_front(study)

    assert [t.number for t in front] == [1, 0, 3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_params": 0}, "--max-params must be a positive integer"), ({"max_latency_ms": -1.0}, "--max-latency-ms must be a positive")],
)
def test_budget_invalid_limit_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Budget(**kwargs)
