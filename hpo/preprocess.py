"""Fit preprocessing on training rows and apply it, with the fitted state as plain JSON."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hpo.exceptions import InputError

_logger = logging.getLogger(__name__)

_MAX_CATEGORIES = 200


@dataclass(frozen=True)
class NumericColumn:
    """A numeric feature: imputed with the training median, then standardized."""

    name: str
    median: float
    mean: float
    scale: float


@dataclass(frozen=True)
class CategoricalColumn:
    """A string, boolean or categorical feature: imputed with the most frequent value, then one-hot."""

    name: str
    most_frequent: str
    categories: list[str]


@dataclass(frozen=True)
class Preprocessing:
    """Fitted preprocessing of the feature columns, in model input order."""

    numeric: list[NumericColumn] = field(default_factory=list)
    categorical: list[CategoricalColumn] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """Raw feature column names this preprocessing reads."""
        return [c.name for c in self.numeric] + [c.name for c in self.categorical]

    @property
    def encoded_names(self) -> list[str]:
        """Names of the model's input features after one-hot encoding."""
        names = [c.name for c in self.numeric]
        for column in self.categorical:
            names.extend(f"{column.name}={category}" for category in column.categories)
        return names

    @property
    def n_inputs(self) -> int:
        """Width of the model's input layer."""
        return len(self.encoded_names)

    def to_dict(self) -> dict[str, Any]:
        """Return the fitted state as JSON-able values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Rebuild preprocessing from ``to_dict`` output.

        Raises:
            InputError: When a field is missing or has the wrong type.
        """
        try:
            numeric = [NumericColumn(str(c["name"]), float(c["median"]), float(c["mean"]), float(c["scale"])) for c in data["numeric"]]
            categorical = [
                CategoricalColumn(str(c["name"]), str(c["most_frequent"]), [str(v) for v in c["categories"]])
                for c in data["categorical"]
            ]
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"invalid preprocessing description: {err!r}") from err
        return cls(numeric=numeric, categorical=categorical)


def fit_preprocessing(frame: pd.DataFrame, features: tuple[str, ...] | list[str]) -> Preprocessing:
    """Fit imputation, scaling and one-hot encoding on ``frame`` (the training rows only).

    Args:
        frame: Training rows.
        features: Feature columns, in the order the model should see them (numeric first
            in the encoded input, then each categorical column's one-hot block).

    Returns:
        The fitted preprocessing.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric_names = [c for c in features if _is_numeric(frame[c])]
    categorical_names = [c for c in features if c not in numeric_names]

    numeric: list[NumericColumn] = []
    if numeric_names:
        values = _finite_or_nan(frame[numeric_names].to_numpy(dtype=np.float64), numeric_names, "the training rows")
        imputer = SimpleImputer(strategy="median", keep_empty_features=True).fit(values)
        with np.errstate(over="ignore", invalid="ignore"):
            scaler = StandardScaler().fit(imputer.transform(values))
        for i, name in enumerate(numeric_names):
            column = NumericColumn(name, float(imputer.statistics_[i]), float(scaler.mean_[i]), float(scaler.scale_[i]))
            if not all(np.isfinite([column.median, column.mean, column.scale])):
                raise InputError(
                    f"numeric column {name!r} has values too large to standardize (largest magnitude "
                    f"{np.nanmax(np.abs(values[:, i])):.3g}); rescale it or drop it with --ignore-columns."
                )
            numeric.append(column)

    categorical: list[CategoricalColumn] = []
    if categorical_names:
        values = _as_strings(frame[categorical_names])
        imputer = SimpleImputer(strategy="most_frequent").fit(values)
        encoder = OneHotEncoder(handle_unknown="ignore").fit(imputer.transform(values))
        for i, name in enumerate(categorical_names):
            categories = [str(v) for v in encoder.categories_[i]]
            if len(categories) > _MAX_CATEGORIES:
                _logger.warning(
                    "Column %r has %d distinct values, which makes %d one-hot inputs; "
                    "if it is an id, pass it to --ignore-columns.",
                    name, len(categories), len(categories),
                )
            categorical.append(CategoricalColumn(name, str(imputer.statistics_[i]), categories))

    _log_missing(frame, features)
    return Preprocessing(numeric=numeric, categorical=categorical)


def apply_preprocessing(prep: Preprocessing, frame: pd.DataFrame, *, source: str = "the data") -> np.ndarray:
    """Turn raw feature columns into the model's float32 input matrix.

    Extra columns are ignored. Unseen category values become an all-zero one-hot row,
    with one warning per column that counts them.

    Raises:
        InputError: When a feature column is missing or a numeric column contains text.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame with the feature columns; got {type(frame).__name__}.")
    missing = [c for c in prep.columns if c not in frame.columns]
    if missing:
        raise InputError(f"{source} lacks feature column(s) {', '.join(map(repr, missing))}; the model needs: {', '.join(prep.columns)}.")

    blocks: list[np.ndarray] = []
    if prep.numeric:
        names = [c.name for c in prep.numeric]
        try:
            values = frame[names].apply(pd.to_numeric).to_numpy(dtype=np.float64)
        except (ValueError, TypeError) as err:
            raise InputError(_non_numeric_message(frame, names, source, err)) from err
        medians = np.array([c.median for c in prep.numeric])
        means = np.array([c.mean for c in prep.numeric])
        scales = np.array([c.scale for c in prep.numeric])
        values = _finite_or_nan(values, names, source)
        values = np.where(np.isnan(values), medians, values)
        blocks.append((values - means) / scales)

    for column in prep.categorical:
        raw = _as_strings(frame[[column.name]])[:, 0]
        raw = np.where(pd.isna(raw), column.most_frequent, raw)
        index = {category: i for i, category in enumerate(column.categories)}
        one_hot = np.zeros((len(raw), len(column.categories)))
        positions = np.array([index.get(v, -1) for v in raw], dtype=np.int64)
        known = positions >= 0
        one_hot[np.nonzero(known)[0], positions[known]] = 1.0
        n_unseen = int((~known).sum())
        if n_unseen:
            _logger.warning("Column %r in %s has %d value(s) not seen in training; they are encoded as all zeros.", column.name, source, n_unseen)
        blocks.append(one_hot)

    if not blocks:
        return np.zeros((len(frame), 0), dtype=np.float32)
    return np.hstack(blocks).astype(np.float32)


def _finite_or_nan(values: np.ndarray, names: list[str], source: str) -> np.ndarray:
    # Infinities cannot be standardized, so they are imputed like missing values.
    infinite = np.isinf(values)
    for i in np.nonzero(infinite.any(axis=0))[0]:
        _logger.warning("Column %r in %s has %d infinite value(s); they are imputed like missing ones.", names[i], source, int(infinite[:, i].sum()))
    return np.where(infinite, np.nan, values)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _as_strings(frame: pd.DataFrame) -> np.ndarray:
    # Categories are compared as strings, so that JSON round trips keep them equal;
    # missing values stay NaN, the marker SimpleImputer looks for.
    values = frame.to_numpy(dtype=object)
    strings = values.astype(str).astype(object)
    strings[pd.isna(values)] = np.nan
    return strings


def _log_missing(frame: pd.DataFrame, features: tuple[str, ...] | list[str]) -> None:
    counts = frame[list(features)].isna().sum()
    for name, count in counts[counts > 0].items():
        _logger.info("Imputing %d missing value(s) in column %r.", int(count), name)


def _non_numeric_message(frame: pd.DataFrame, names: list[str], source: str, err: Exception) -> str:
    """Name the first numeric feature column with a value that is not a number, and that value."""
    for name in names:
        parsed = pd.to_numeric(frame[name], errors="coerce")
        bad = frame[name][parsed.isna() & frame[name].notna()]
        if len(bad):
            return (
                f"feature column {name!r} in {source} must be numeric, but it has {bad.iloc[0]!r} "
                f"(first at row {bad.index[0]}, counting data rows from 0); fix or remove the rows with such values."
            )
    return f"a numeric feature column in {source} contains non-numeric values: {err}"
