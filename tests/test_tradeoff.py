"""The figure of validation metric against parameter count."""

from __future__ import annotations

import optuna
import pytest

from hpo.tradeoff import size_tradeoff_figure


def _trial(value: float, n_params: int, over_by: float = 0.0) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        value=value, params={}, distributions={},
        user_attrs={"n_params": n_params}, system_attrs={"constraints:n_params": over_by},
    )


def test_size_tradeoff_figure_marks_front_and_over_budget() -> None:
    study = optuna.create_study(direction="maximize")
    for value, n_params, over_by in [(0.90, 1000, 0.0), (0.85, 200, 0.0), (0.80, 500, 0.0), (0.97, 9000, 5000.0)]:
        study.add_trial(_trial(value, n_params, over_by))

    figure = size_tradeoff_figure(study, "balanced_accuracy")

    traces = {trace.name: trace for trace in figure.data}
    assert list(traces["trials"].x) == [1000, 200, 500]
    assert list(traces["over budget"].x) == [9000]
    assert list(traces["Pareto front"].x) == [200, 1000]
    assert figure.layout.xaxis.type == "log"
    assert figure.layout.yaxis.title.text == "validation balanced_accuracy"


def test_size_tradeoff_figure_without_trials_raises() -> None:
    with pytest.raises(ValueError, match="needs 1 completed trial"):
        size_tradeoff_figure(optuna.create_study())
