"""Learning-curve figures of a study's trials: the validation metric and the training loss per epoch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

_STATE_STYLES = {
    optuna.trial.TrialState.COMPLETE: {"color": "#1f77b4", "dash": "solid"},
    optuna.trial.TrialState.PRUNED: {"color": "#d62728", "dash": "dot"},
}
_COLORSCALE = "Viridis"


def validation_curves_figure(trials: Sequence[optuna.trial.FrozenTrial], metric: str = "accuracy") -> go.Figure:
    """Draw each trial's reported validation ``metric`` per epoch, complete and pruned trials apart.

    Complete trials are solid blue lines, pruned trials dotted red lines that end in a cross
    at the epoch where they were stopped. Trials in other states are left out.

    Raises:
        ValueError: When no complete or pruned trial reported a value.
    """
    figure = go.Figure()
    shown_states: set[optuna.trial.TrialState] = set()
    for trial in trials:
        style = _STATE_STYLES.get(trial.state)
        if style is None or not trial.intermediate_values:
            continue
        steps = sorted(trial.intermediate_values)
        values = [trial.intermediate_values[step] for step in steps]
        is_pruned = trial.state == optuna.trial.TrialState.PRUNED
        figure.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines+markers",
                name=trial.state.name.lower(),
                legendgroup=trial.state.name,
                showlegend=trial.state not in shown_states,
                line={"color": style["color"], "dash": style["dash"], "width": 1.5},
                marker={"size": [4] * (len(steps) - 1) + [10 if is_pruned else 4], "symbol": [*(["circle"] * (len(steps) - 1)), "x" if is_pruned else "circle"]},
                opacity=0.8,
                hovertemplate=f"trial {trial.number} ({trial.state.name.lower()})<br>epoch %{{x}}<br>{metric} %{{y:.4f}}<extra></extra>",
            )
        )
        shown_states.add(trial.state)
    if not figure.data:
        raise ValueError(f"no complete or pruned trial reported a validation {metric} yet")
    figure.update_layout(title=f"Validation {metric} per epoch", xaxis_title="epoch", yaxis_title=f"validation {metric}", legend_title="trial state")
    return figure


def train_loss_by_lr_figure(trials: Sequence[optuna.trial.FrozenTrial]) -> go.Figure:
    """Draw each trial's training loss per epoch, coloured by its learning rate on one log scale.

    Pruned trials are dotted. The colour bar shows log10 of the learning rate, so trials
    with similar rates share a colour whatever their other parameters.

    Raises:
        ValueError: When no trial has both a training-loss curve and a learning rate.
    """
    curves: list[tuple[optuna.trial.FrozenTrial, list[float | None], float]] = []
    for trial in trials:
        loss, lr = _loss_curve(trial), _learning_rate(trial)
        if loss and lr is not None:
            curves.append((trial, loss, lr))
    if not curves:
        raise ValueError("no trial stored a training-loss curve and a learning rate yet")
    log_lrs = [math.log10(lr) for _, _, lr in curves]
    low, high = min(log_lrs), max(log_lrs)
    span = high - low or 1.0

    figure = go.Figure()
    for (trial, loss, lr), log_lr in zip(curves, log_lrs):
        color = sample_colorscale(_COLORSCALE, [(log_lr - low) / span])[0]
        figure.add_trace(
            go.Scatter(
                x=list(range(len(loss))),
                y=loss,
                mode="lines",
                line={"color": color, "width": 1.5, "dash": "dot" if trial.state == optuna.trial.TrialState.PRUNED else "solid"},
                showlegend=False,
                hovertemplate=f"trial {trial.number} ({trial.state.name.lower()})<br>lr {lr:.3g}<br>epoch %{{x}}<br>loss %{{y:.4f}}<extra></extra>",
            )
        )
    # An invisible trace carries the colour bar, since line traces cannot show one.
    figure.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="markers",
            showlegend=False,
            hoverinfo="skip",
            marker={"color": [low, high], "colorscale": _COLORSCALE, "cmin": low, "cmax": high, "showscale": True, "colorbar": {"title": {"text": "log10(lr)"}}},
        )
    )
    figure.update_layout(title="Training loss per epoch by learning rate (dotted: pruned)", xaxis_title="epoch", yaxis_title="training loss", yaxis_type="log")
    return figure


def _learning_rate(trial: optuna.trial.FrozenTrial) -> float | None:
    # A fixed learning rate is no trial parameter, but the stored trial config has it.
    config = trial.user_attrs.get("config")
    value = trial.params.get("lr", config.get("lr") if isinstance(config, dict) else None)
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def _loss_curve(trial: optuna.trial.FrozenTrial) -> list[float | None]:
    values: Any = trial.user_attrs.get("train_loss")
    if not isinstance(values, list):
        return []
    # A non-finite or zero loss cannot sit on the log axis; None leaves a gap at its epoch.
    curve = [float(v) if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else None for v in values]
    return curve if any(v is not None for v in curve) else []
