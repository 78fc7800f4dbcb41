"""Turn data settings into model-ready arrays: load, split, fit preprocessing, encode."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpo.data import SplitIndices, SplitSpec, Table, encode_labels, load_table, split_rows
from hpo.metrics import CLASSIFICATION, REGRESSION
from hpo.preprocess import Preprocessing, apply_preprocessing, fit_preprocessing

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSettings:
    """Where the data comes from and how it is split; stored on the study as plain values.

    Attributes:
        source: A built-in data set name or the absolute path of a CSV/Parquet file.
        target: The target column.
        ignore_columns: Columns dropped before training.
        split: Split fractions and seed.
        task: ``classification``, ``regression``, or None to detect it from the target.
            A study stores the detected task, so a resumed study never detects again.
    """

    source: str
    target: str | None = None
    ignore_columns: tuple[str, ...] = ()
    split: SplitSpec = field(default_factory=SplitSpec)
    task: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-able values."""
        return {
            "source": self.source,
            "target": self.target,
            "ignore_columns": list(self.ignore_columns),
            "split": {"train": self.split.train, "validation": self.split.validation, "test": self.split.test, "seed": self.split.seed},
            "task": self.task,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataSettings:
        """Rebuild settings from ``to_dict`` output."""
        return cls(
            source=values["source"],
            target=values.get("target"),
            ignore_columns=tuple(values.get("ignore_columns", ())),
            split=SplitSpec(**values.get("split", {})),
            # Studies stored before regression support have no task and are classifiers.
            task=values.get("task", CLASSIFICATION),
        )


@dataclass(frozen=True)
class PreparedData:
    """Encoded arrays of each part, and what produced them.

    For a final model (``prepare(..., final=True)``) the training arrays hold train and
    validation rows together, preprocessing is fitted on both, and the validation arrays
    are None.

    Regression targets are float32, standardized with the mean and standard deviation of
    the training rows (``target_mean``, ``target_std``); class indices are int64.
    """

    table: Table
    split: SplitIndices
    preprocessing: Preprocessing
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray
    target_mean: float = 0.0
    target_std: float = 1.0

    @property
    def task(self) -> str:
        """``classification`` or ``regression``."""
        return self.table.task

    @property
    def n_classes(self) -> int:
        """Number of target classes."""
        return len(self.table.classes)

    @property
    def n_inputs(self) -> int:
        """Width of the encoded input."""
        return self.x_train.shape[1]


def load_and_split(settings: DataSettings) -> tuple[Table, SplitIndices]:
    """Load the table and split it; every input check happens here, before any study is touched."""
    table = load_table(settings.source, settings.target, ignore_columns=settings.ignore_columns, task=settings.task)
    split = split_rows(table, settings.split)
    kind = f"{len(table.classes)} classes" if table.task == CLASSIFICATION else "a regression target"
    _logger.info(
        "Loaded %s: %d rows, %d features, %s; split %d/%d/%d.",
        table.source, len(table.frame), len(table.features), kind,
        len(split.train), len(split.validation), len(split.test),
    )
    return table, split


def prepare(table: Table, split: SplitIndices, *, final: bool = False) -> PreparedData:
    """Fit preprocessing on the training rows (plus validation rows when ``final``) and encode every part."""
    if final:
        return prepare_rows(table, split, np.concatenate([split.train, split.validation]), None)
    return prepare_rows(table, split, split.train, split.validation)


def prepare_rows(table: Table, split: SplitIndices, fit_rows: np.ndarray, validation_rows: np.ndarray | None) -> PreparedData:
    """Fit preprocessing (and regression target scaling) on ``fit_rows`` and encode them,
    ``validation_rows`` (if any) and the test part of ``split``."""
    frame = table.frame
    preprocessing = fit_preprocessing(frame.iloc[fit_rows], table.features)
    mean, std = 0.0, 1.0
    if table.task == REGRESSION:
        values = frame[table.target].to_numpy(dtype=np.float64)[fit_rows]
        mean = float(values.mean())
        # A constant training target would divide by zero; any scale then fits it.
        std = float(values.std()) or 1.0

    def encode(rows: np.ndarray, part: str) -> tuple[np.ndarray, np.ndarray]:
        part_frame = frame.iloc[rows]
        x = apply_preprocessing(preprocessing, part_frame, source=f"the {part} part of {table.source}")
        if table.task == REGRESSION:
            y = ((part_frame[table.target].to_numpy(dtype=np.float64) - mean) / std).astype(np.float32)
        else:
            y = encode_labels(part_frame[table.target], table.classes)
        return x, y

    x_train, y_train = encode(fit_rows, "training")
    x_test, y_test = encode(split.test, "test")
    x_val, y_val = (None, None) if validation_rows is None else encode(validation_rows, "validation")
    return PreparedData(
        table=table, split=split, preprocessing=preprocessing,
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        target_mean=mean, target_std=std,
    )
