"""The search space: defaults, TOML overrides, validation, and trial -> trial config."""

from __future__ import annotations

import logging
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import optuna

from hpo.exceptions import InputError

_logger = logging.getLogger(__name__)

ACTIVATIONS = ("relu", "tanh", "gelu", "silu", "leaky_relu")
OPTIMIZERS = ("adam", "adamw", "sgd")
# "balanced" weighs each class's rows by n_rows / (n_classes * n_rows_of_class) in the loss.
CLASS_WEIGHTS = ("none", "balanced")
# Metrics that count every row alike: weighting a class up can only cost them, so a default
# space does not search class_weight for them (see ``for_metric``).
_ROW_METRICS = ("accuracy", "log_loss")
MAX_LAYERS = 16
MAX_UNITS = 8192

# Parameters searched over a numeric interval: name -> (log scale?, is integer?).
_RANGES = {
    "n_layers": (False, True),
    "n_units": (True, True),
    "dropout": (False, False),
    "lr": (True, False),
    "weight_decay": (True, False),
}
_CHOICES = ("activation", "optimizer", "batch_size", "class_weight")
_FIXED = ("max_epochs", "patience", "momentum")


@dataclass(frozen=True)
class SearchSpace:
    """Ranges, choices and fixed values of the MLP search.

    A range is a ``[low, high]`` pair, or one number to fix the parameter. A choice is a
    list, or one value to fix it. ``max_epochs`` caps each trial's epochs, ``patience``
    stops a trial after that many epochs without a better validation score, and
    ``momentum`` is used by SGD only. ``class_weight`` applies to classification only.
    """

    # Defaults sized for fast trials: per row, a 5-layer 512-unit network costs about 400x the
    # multiply-adds of a 64-32 one and 30x those of the widest default (3 layers of 128).
    # Wider searches stay available, e.g. n_layers = [1, 5] and n_units = [8, 512].
    n_layers: list[int] | int = field(default_factory=lambda: [1, 3])
    n_units: list[int] | int = field(default_factory=lambda: [8, 128])
    activation: list[str] | str = field(default_factory=lambda: list(ACTIVATIONS))
    dropout: list[float] | float = field(default_factory=lambda: [0.0, 0.5])
    # SGD with momentum needs larger learning rates than the Adam family, so one shared lr
    # range would suit only one of them. SGD stays available as a choice.
    optimizer: list[str] | str = field(default_factory=lambda: ["adam", "adamw"])
    # Centred on 1e-3..1e-2, where Adam trained the ocean and synthetic sets well within a few epochs.
    lr: list[float] | float = field(default_factory=lambda: [1e-4, 3e-2])
    weight_decay: list[float] | float = field(default_factory=lambda: [1e-7, 1e-2])
    # Per-step overhead dominates a small network's epoch, so batch 64 would take about twice as long as 128.
    batch_size: list[int] | int = field(default_factory=lambda: [128, 256, 512, 1024])
    class_weight: list[str] | str = field(default_factory=lambda: list(CLASS_WEIGHTS))
    max_epochs: int = 30
    # Replayed on the recorded curves of 16-20 trials on 6 data sets, patience 5 kept every
    # study's best score and trained 9-33% fewer epochs than 8, while 3 and 4 lost accuracy
    # on 3 or 4 of them (docs/benchmark.md).
    patience: int = 5
    momentum: float = 0.9

    def __post_init__(self) -> None:
        errors = _validate(self)
        if errors:
            raise InputError("invalid search space: " + "; ".join(errors) + ".")

    def to_dict(self) -> dict[str, Any]:
        """Return the space as JSON-able values, the form stored on a study."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, origin: str = "search space") -> SearchSpace:
        """Build a space from defaults updated with ``values``.

        Raises:
            InputError: For an unknown key or an invalid range, choice or value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown key(s) {', '.join(unknown)} in {origin}; known keys are: {', '.join(sorted(known))}.")
        return replace(cls(), **values)

    def for_metric(self, metric: str, *, class_weight_given: bool) -> SearchSpace:
        """Return the space to search for ``metric``.

        Unless the user set ``class_weight``, it is fixed to ``none`` for metrics that
        count every row alike (accuracy, log-loss): balanced weighting trades the
        majority class for the others, which such a metric only penalizes.
        """
        if class_weight_given or metric not in _ROW_METRICS:
            return self
        return replace(self, class_weight="none")

    @property
    def max_layers(self) -> int:
        """Upper bound of the number of hidden layers."""
        return _high(self.n_layers)


@dataclass(frozen=True)
class TrialConfig:
    """Plain values that fully describe one trial's network and training."""

    hidden: tuple[int, ...]
    activation: str
    dropout: float
    optimizer: str
    lr: float
    weight_decay: float
    batch_size: int
    max_epochs: int
    patience: int
    momentum: float
    class_weight: str = "none"

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-able values."""
        values = asdict(self)
        values["hidden"] = list(self.hidden)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """Rebuild a config from ``to_dict`` output."""
        return cls(**{**values, "hidden": tuple(int(u) for u in values["hidden"])})


def load_space_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file and return its tables as dicts.

    Raises:
        InputError: When the file is missing or is not valid TOML.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputError(f"config file not found: {path}.")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"config file {path} is not valid TOML: {err}.") from err


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``KEY=VALUE`` search-space override, with VALUE in TOML syntax.

    Example: ``n_layers=[1, 3]``, ``activation="relu"``, ``max_epochs=50``.

    Raises:
        InputError: When the text is not ``KEY=VALUE`` or VALUE is not valid TOML.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"invalid --space value {text!r}; write KEY=VALUE, e.g. n_layers=[1,3].")
    try:
        parsed = tomllib.loads(f"value = {value.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        # A bare word such as relu is meant as a string.
        parsed = value.strip()
    return key.strip(), parsed


def suggest_config(trial: optuna.Trial, space: SearchSpace, *, task: str = "classification") -> TrialConfig:
    """Ask the trial for every searched parameter and return the trial's config.

    ``class_weight`` is suggested for classification only; regression uses ``none``.

    Widths are suggested for every possible layer (``n_units_l0`` up to the largest
    ``n_layers``) in every trial, and layers beyond the trial's depth ignore theirs.
    This keeps the search space the same in each trial, so Optuna's multivariate TPE
    models all parameters jointly; widths suggested only for deep trials would fall
    back to independent sampling and lose their relation to depth and learning rate.
    """
    n_layers = _suggest_range(trial, "n_layers", space.n_layers)
    widths = [_suggest_range(trial, f"n_units_l{i}", space.n_units, kind="n_units") for i in range(space.max_layers)]
    return TrialConfig(
        hidden=tuple(int(w) for w in widths[:n_layers]),
        activation=_suggest_choice(trial, "activation", space.activation),
        dropout=float(_suggest_range(trial, "dropout", space.dropout)),
        optimizer=_suggest_choice(trial, "optimizer", space.optimizer),
        lr=float(_suggest_range(trial, "lr", space.lr)),
        weight_decay=float(_suggest_range(trial, "weight_decay", space.weight_decay)),
        batch_size=int(_suggest_choice(trial, "batch_size", space.batch_size)),
        max_epochs=space.max_epochs,
        patience=space.patience,
        momentum=space.momentum,
        class_weight=_suggest_choice(trial, "class_weight", space.class_weight) if task == "classification" else "none",
    )


def _suggest_range(trial: optuna.Trial, name: str, bounds: Any, *, kind: str | None = None) -> Any:
    if not isinstance(bounds, list):
        return bounds
    low, high = bounds
    if low == high:
        return low
    log, is_int = _RANGES[kind or name]
    if is_int:
        return trial.suggest_int(name, int(low), int(high), log=log)
    return trial.suggest_float(name, float(low), float(high), log=log)


def _suggest_choice(trial: optuna.Trial, name: str, choices: Any) -> Any:
    if not isinstance(choices, list):
        return choices
    if len(choices) == 1:
        return choices[0]
    return trial.suggest_categorical(name, choices)


def _high(bounds: Any) -> int:
    return int(bounds[1]) if isinstance(bounds, list) else int(bounds)


def _validate(space: SearchSpace) -> list[str]:
    errors: list[str] = []
    for name, (log, is_int) in _RANGES.items():
        errors.extend(_check_range(name, getattr(space, name), log=log, is_int=is_int))
    for name in _CHOICES:
        errors.extend(_check_choices(name, getattr(space, name)))
    if errors:
        return errors

    limits = {
        "n_layers": (1, MAX_LAYERS),
        "n_units": (1, MAX_UNITS),
        "dropout": (0.0, 0.95),
        "lr": (1e-8, 10.0),
        "weight_decay": (1e-12, 1.0),
    }
    for name, (lowest, highest) in limits.items():
        values = getattr(space, name)
        low, high = (values if isinstance(values, list) else [values, values])
        if name == "weight_decay" and not isinstance(values, list) and values == 0:
            continue  # A fixed weight decay of 0 turns it off.
        if low < lowest or high > highest:
            errors.append(f"{name} must lie within {lowest:g}..{highest:g}; got {values}")

    for name, allowed in (("activation", ACTIVATIONS), ("optimizer", OPTIMIZERS), ("class_weight", CLASS_WEIGHTS)):
        values = getattr(space, name)
        bad = [v for v in (values if isinstance(values, list) else [values]) if v not in allowed]
        if bad:
            errors.append(f"unknown {name} {', '.join(map(repr, bad))}; choose from {', '.join(allowed)}")
    sizes = space.batch_size if isinstance(space.batch_size, list) else [space.batch_size]
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
        errors.append(f"batch_size values must be positive integers; got {space.batch_size}")

    for name, lowest in (("max_epochs", 1), ("patience", 1)):
        value = getattr(space, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
            errors.append(f"{name} must be an integer >= {lowest}; got {value!r}")
    if not isinstance(space.momentum, (int, float)) or not 0.0 <= space.momentum < 1.0:
        errors.append(f"momentum must be in [0, 1); got {space.momentum!r}")
    return errors


def _check_range(name: str, value: Any, *, log: bool, is_int: bool) -> list[str]:
    number = (int,) if is_int else (int, float)
    if isinstance(value, bool):
        return [f"{name} must be a number or a [low, high] pair; got {value!r}"]
    if isinstance(value, number):
        return [] if math.isfinite(value) else [f"{name} must be finite; got {value!r}"]
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, number) and not isinstance(v, bool) for v in value):
        kind = "integers" if is_int else "numbers"
        return [f"{name} must be one value or a [low, high] pair of {kind}; got {value!r}"]
    low, high = value
    if low > high:
        return [f"{name} has low {low} above high {high}; swap them"]
    if log and low <= 0:
        return [f"{name} is searched on a log scale, so low must be > 0; got {low}"]
    return []


def _check_choices(name: str, value: Any) -> list[str]:
    if isinstance(value, list):
        if not value:
            return [f"{name} needs at least one choice"]
        if len(set(map(str, value))) != len(value):
            return [f"{name} lists a choice twice: {value}"]
    return []
