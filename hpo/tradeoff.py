"""Figure of the validation metric against network size, with the Pareto front of the two."""

from __future__ import annotations

import math

import optuna
import plotly.graph_objects as go

from hpo.budget import pareto_front


def size_tradeoff_figure(study: optuna.Study, metric: str = "accuracy") -> go.Figure:
    """Draw every completed trial's validation ``metric`` against its parameter count.

    The x axis is logarithmic. The Pareto front (no other trial is at least as good with
    at most as many parameters) is a step line through its trials, and trials with a
    broken constraint are grey crosses.

    Raises:
        ValueError: When no completed trial has a finite value and a parameter count.
    """
    trials = [
        t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value) and "n_params" in t.user_attrs
    ]
    if not trials:
        raise ValueError("needs 1 completed trial with a parameter count; the study has none")

    feasible = [t for t in trials if all(v <= 0.0 for v in t.constraints.values())]
    infeasible = [t for t in trials if t not in feasible]
    front = pareto_front(study)
    figure = go.Figure()
    figure.add_trace(_scatter(feasible, "trials", {"color": "#1f77b4", "size": 7}))
    if infeasible:
        figure.add_trace(_scatter(infeasible, "over budget", {"color": "#999999", "symbol": "x", "size": 7}))
    figure.add_trace(go.Scatter(
        x=[t.user_attrs["n_params"] for t in front],
        y=[t.value for t in front],
        mode="lines+markers",
        line={"shape": "hv", "color": "#d62728"},
        marker={"size": 9},
        name="Pareto front",
        text=[f"trial {t.number}" for t in front],
    ))
    figure.update_layout(
        xaxis={"title": "trainable parameters", "type": "log"},
        yaxis={"title": f"validation {metric}"},
        legend={"orientation": "h"},
    )
    return figure


def _scatter(trials: list[optuna.trial.FrozenTrial], name: str, marker: dict[str, object]) -> go.Scatter:
    return go.Scatter(
        x=[t.user_attrs["n_params"] for t in trials],
        y=[t.value for t in trials],
        mode="markers",
        marker=marker,
        name=name,
        text=[f"trial {t.number}" for t in trials],
    )
