"""Read a table, reject bad input with a clear error, and split it."""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from hpo.exceptions import InputError
from hpo.metrics import CLASSIFICATION, REGRESSION
from hpo.task import regression_values, resolve_task

_logger = logging.getLogger(__name__)

BUILTIN_DATASETS = ("synthetic", "iris", "wine", "breast_cancer", "digits")
DEFAULT_DATASET = "synthetic"
_PARQUET_SUFFIXES = (".parquet", ".pq")
_SNIFF_BYTES = 64 * 1024
_UNSUPPORTED_SUFFIXES = (".xlsx", ".xls", ".ods", ".json", ".feather", ".h5", ".hdf5", ".pkl", ".pickle", ".zip", ".gz")
# Share of a text column's values that must parse as numbers for it to be read as numeric.
_NUMERIC_SHARE = 0.95
_DECIMAL_COMMA = re.compile(r"(^|;)\s*-?\d+,\d+\s*(;|$)", re.MULTILINE)


@dataclass(frozen=True)
class Table:
    """A validated table: feature columns, a target column and its class labels.

    Attributes:
        frame: The rows with the feature columns and the target column, rows with a
            missing target already dropped.
        target: Name of the target column.
        features: Feature column names, in model input order.
        classes: Sorted class labels of the target (strings, or ints for an integer
            target); empty for regression.
        source: The data set name or the absolute path it was read from.
        task: ``classification`` or ``regression`` (a float target).
    """

    frame: pd.DataFrame
    target: str
    features: tuple[str, ...]
    classes: tuple[Any, ...]
    source: str
    task: str = CLASSIFICATION


@dataclass(frozen=True)
class SplitSpec:
    """Fractions of the rows that go to train, validation and test, and the split seed."""

    train: float = 0.6
    validation: float = 0.2
    test: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        parts = {"train": self.train, "validation": self.validation, "test": self.test}
        bad = [f"{name}={value}" for name, value in parts.items() if not 0.0 < value < 1.0]
        if bad:
            raise InputError(f"split fractions must be between 0 and 1; got {', '.join(bad)}.")
        if not math.isclose(self.train + self.validation + self.test, 1.0, abs_tol=1e-6):
            raise InputError(
                f"split fractions must add up to 1; got train={self.train}, "
                f"validation={self.validation}, test={self.test}."
            )


@dataclass(frozen=True)
class SplitIndices:
    """Row positions of each part of a split, into ``Table.frame``."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def load_table(
    source: str | Path | None,
    target: str | None = None,
    *,
    ignore_columns: tuple[str, ...] | list[str] = (),
    task: str | None = None,
) -> Table:
    """Read a built-in data set or a CSV/Parquet file and validate it.

    Args:
        source: A built-in name (see ``BUILTIN_DATASETS``) or a path to a ``.csv``,
            ``.parquet`` or ``.pq`` file. ``None`` means the default built-in set.
        target: The target column. Optional for built-in sets (their column is ``target``).
        ignore_columns: Columns to drop before training, such as ids.
        task: ``classification``, ``regression``, or None/``auto`` to detect it from the
            target (see ``hpo.task.resolve_task``).

    Returns:
        The validated table.

    Raises:
        InputError: For a missing, empty or malformed file, a missing column, a
            target with one class, or a feature column with no values.
    """
    source = DEFAULT_DATASET if source is None else source
    if _looks_like_builtin(source):
        frame, target_name = _load_builtin(str(source), target)
        origin = str(source)
    else:
        if target is None:
            raise InputError(f"--target is required for data file {source}; name the column to predict.")
        path = Path(source).expanduser().resolve()
        frame = read_frame(path)
        target_name = target
        origin = str(path)

    return _validate(frame, target_name, tuple(ignore_columns), origin, task)


def read_frame(path: Path) -> pd.DataFrame:
    """Read a CSV (separator sniffed, UTF-8 BOM tolerated) or Parquet file.

    Raises:
        InputError: When the file is missing, empty, unreadable or has duplicate column names.
    """
    if not path.exists():
        raise InputError(f"data file not found: {path}. Check the path or use a built-in set: {', '.join(BUILTIN_DATASETS)}.")
    if path.is_dir():
        raise InputError(f"data path is a folder, not a file: {path}.")
    if path.stat().st_size == 0:
        raise InputError(f"data file is empty: {path}. Point --data at a CSV or Parquet file with a header and rows.")

    if path.suffix.lower() in _UNSUPPORTED_SUFFIXES:
        raise InputError(f"unsupported data format {path.suffix!r} for {path}; save the table as CSV or Parquet.")
    if path.suffix.lower() in _PARQUET_SUFFIXES:
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several unrelated types for bad files
            raise InputError(f"cannot read Parquet file {path}: {err}") from err
        columns = [str(c) for c in frame.columns]
    else:
        frame, columns = _read_csv(path)

    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise InputError(f"data file {path} has duplicate column names: {', '.join(duplicates)}. Rename them so each is unique.")
    if frame.empty:
        raise InputError(f"data file {path} has a header but no rows. Add data rows.")
    frame.columns = columns
    if path.suffix.lower() not in _PARQUET_SUFFIXES:
        frame = _coerce_numeric_text(frame, path)
    return frame


def split_rows(table: Table, spec: SplitSpec) -> SplitIndices:
    """Split the rows into train, validation and test parts, stratified by class.

    The test part is cut first, so it does not depend on the validation fraction. A
    regression table is split at random, without stratification.

    Raises:
        InputError: When a class has too few rows to appear in every part.
    """
    labels = table.frame[table.target].to_numpy()
    if table.task == REGRESSION:
        _check_row_count(table, spec)
    else:
        _check_class_counts(table, spec)

    def strata(rows: np.ndarray) -> np.ndarray | None:
        return None if table.task == REGRESSION else labels[rows]

    positions = np.arange(len(labels))
    rest, test = train_test_split(positions, test_size=spec.test, stratify=strata(positions), random_state=spec.seed)
    validation_share = spec.validation / (spec.train + spec.validation)
    train, validation = train_test_split(
        rest, test_size=validation_share, stratify=strata(rest), random_state=spec.seed
    )
    return SplitIndices(train=np.sort(train), validation=np.sort(validation), test=np.sort(test))


def encode_labels(values: pd.Series, classes: tuple[Any, ...]) -> np.ndarray:
    """Map target values to class indices (int64); unknown values map to -1."""
    lookup = {label: index for index, label in enumerate(classes)}
    normalized = _normalize_labels(values)
    return np.array([lookup.get(v, -1) for v in normalized], dtype=np.int64)


def _looks_like_builtin(source: str | Path) -> bool:
    text = str(source)
    if text in BUILTIN_DATASETS:
        return True
    # A bare word that is not a file is most likely a misspelled built-in name.
    if not Path(text).exists() and "/" not in text and "." not in text:
        raise InputError(f"unknown built-in data set {text!r}; choose one of {', '.join(BUILTIN_DATASETS)} or pass a file path.")
    return False


def _load_builtin(name: str, target: str | None) -> tuple[pd.DataFrame, str]:
    from sklearn import datasets

    if name == "synthetic":
        # Same settings as the PyTorch MLP tutorial this project grows from.
        x, y = datasets.make_classification(
            n_samples=1000, n_features=10, n_classes=3, n_informative=6, random_state=42
        )
        frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
        frame["target"] = y
    else:
        loader = getattr(datasets, f"load_{name}")
        bunch = loader(as_frame=True)
        frame = bunch.frame.copy()
        names = list(bunch.target_names)
        frame["target"] = [str(names[int(i)]) for i in frame["target"]]

    if target not in (None, "target"):
        raise InputError(f"built-in data set {name!r} has target column 'target', not {target!r}; drop --target.")
    return frame, "target"


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            head = handle.read(_SNIFF_BYTES)
    except UnicodeDecodeError as err:
        raise InputError(f"data file {path} is not UTF-8 text; save it as UTF-8 CSV or Parquet.") from err
    if not head.strip():
        raise InputError(f"data file is empty: {path}. Point --data at a CSV or Parquet file with a header and rows.")

    separator = _sniff_separator(head)
    header = next(csv.reader([head.splitlines()[0]], delimiter=separator))
    columns = [c.strip() for c in header]
    # A semicolon file with numbers like 1,5 uses the decimal comma of many European locales.
    decimal = "," if separator == ";" and _DECIMAL_COMMA.search(head) else "."

    try:
        # index_col=False keeps a trailing separator on data rows from shifting the columns.
        frame = pd.read_csv(path, sep=separator, decimal=decimal, encoding="utf-8-sig", skipinitialspace=True, index_col=False)
    except pd.errors.EmptyDataError as err:
        raise InputError(f"data file is empty: {path}.") from err
    except UnicodeDecodeError as err:
        raise InputError(f"data file {path} is not UTF-8 text (invalid byte at position {err.start}); save it as UTF-8 CSV or Parquet.") from err
    except pd.errors.ParserError as err:
        detail = " ".join(str(err).split())
        raise InputError(f"cannot parse CSV file {path}: {detail}. Check that every row has as many fields as the header.") from err
    if len(frame.columns) != len(columns):
        raise InputError(f"cannot parse the header of CSV file {path}; check that every row has the same columns.")
    return frame, columns


def _coerce_numeric_text(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Read text columns whose values are nearly all numbers as numeric, with the rest missing.

    A stray "?" or "n/a" would otherwise turn a numeric column into hundreds of one-hot inputs.
    """
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            continue
        present = column.dropna()
        if present.empty:
            continue
        numbers = pd.to_numeric(present, errors="coerce")
        n_bad = int(numbers.isna().sum())
        if n_bad == 0 or n_bad > (1 - _NUMERIC_SHARE) * len(present):
            continue
        examples = ", ".join(repr(v) for v in present[numbers.isna()].unique()[:3])
        _logger.warning(
            "Column %r in %s is numeric but for %d value(s) such as %s; they are read as missing.",
            name, path, n_bad, examples,
        )
        frame[name] = pd.to_numeric(column, errors="coerce")
    return frame


def _sniff_separator(head: str) -> str:
    lines = head.splitlines()
    # Drop a possibly cut last line, so a partial row does not confuse the sniffer.
    sample = "\n".join(lines[:-1] if len(lines) > 2 else lines)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _validate(frame: pd.DataFrame, target: str, ignore: tuple[str, ...], origin: str, task: str | None = None) -> Table:
    columns = [str(c) for c in frame.columns]
    if target not in columns:
        raise InputError(f"target column {target!r} not found in {origin}; columns are: {', '.join(columns)}.")
    unknown = [c for c in ignore if c not in columns]
    if unknown:
        raise InputError(f"--ignore-columns names columns not in {origin}: {', '.join(unknown)}; columns are: {', '.join(columns)}.")
    if target in ignore:
        raise InputError(f"target column {target!r} is also in --ignore-columns; remove it from there.")

    features = tuple(c for c in columns if c != target and c not in ignore)
    if not features:
        raise InputError(f"{origin} has no feature columns besides target {target!r}.")
    empty = [c for c in features if frame[c].isna().all()]
    if empty:
        raise InputError(f"feature column(s) {', '.join(map(repr, empty))} in {origin} have no values; drop them with --ignore-columns.")

    missing_target = frame[target].isna()
    if missing_target.all():
        raise InputError(f"target column {target!r} in {origin} has no values.")
    if missing_target.any():
        _logger.warning("Dropped %d rows of %s whose target %r is missing.", int(missing_target.sum()), origin, target)
        frame = frame.loc[~missing_target]

    frame = frame[list(features) + [target]].reset_index(drop=True)
    task = resolve_task(task, frame[target], target, origin)
    if task == REGRESSION:
        frame[target] = regression_values(frame[target], target, origin)
        return Table(frame=frame, target=target, features=features, classes=(), source=origin, task=REGRESSION)
    frame[target] = _normalize_labels(frame[target])
    classes = tuple(sorted(frame[target].unique().tolist()))
    if len(classes) < 2:
        raise InputError(f"target column {target!r} in {origin} has a single class {classes[0]!r}; a classifier needs at least two.")
    return Table(frame=frame, target=target, features=features, classes=classes, source=origin)


def _normalize_labels(values: pd.Series) -> pd.Series:
    # Integer labels stay ints, so 0/1 targets print as such. Everything else becomes str,
    # because that keeps labels JSON-able and makes "1" in a CSV equal to "1" at predict time.
    # Labels that are already normalized (ints in an object column) are returned as they are,
    # so the function can be applied twice.
    if pd.api.types.is_integer_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("int64")
    non_null = values.dropna()
    if pd.api.types.is_float_dtype(values) and len(non_null) and np.all(np.isfinite(non_null)) and np.all(np.mod(non_null, 1) == 0):
        return values.map(lambda v: None if pd.isna(v) else int(v)).astype(object)
    if values.dtype == object and len(non_null) and all(_is_plain_int(v) for v in non_null):
        return values
    if pd.api.types.infer_dtype(non_null, skipna=True) == "string":
        # Text labels need no conversion; a per-row map took 0.1 s on 100,000 rows.
        return values.astype(object).where(values.notna(), None)
    return values.map(lambda v: None if pd.isna(v) else str(v)).astype(object)


def _is_plain_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_row_count(table: Table, spec: SplitSpec) -> None:
    needed = max(2, math.ceil(2.0 / min(spec.train, spec.validation, spec.test)))
    if len(table.frame) < needed:
        raise InputError(
            f"{table.source} has {len(table.frame)} rows; a regression split {spec.train:g}/{spec.validation:g}/{spec.test:g} "
            f"needs at least {needed}. Add rows."
        )


def _check_class_counts(table: Table, spec: SplitSpec) -> None:
    # Each part must hold at least one row of every class, or stratification fails.
    needed = max(2, math.ceil(1.0 / min(spec.train, spec.validation, spec.test)))
    counts = table.frame[table.target].value_counts()
    short = [(label, int(n)) for label, n in counts.items() if n < needed]
    if short:
        listing = ", ".join(f"{label!r} ({n} rows)" for label, n in short[:5])
        if len(short) > 5:
            listing += f" and {len(short) - 5} more"
        hint = "Remove or merge rare classes, or add rows."
        if len(short) > 0.5 * len(counts):
            hint += " If the target is a continuous quantity, use --task regression."
        raise InputError(
            f"class {listing} of target {table.target!r} in {table.source} has too few rows; "
            f"each class needs at least {needed} to be split {spec.train:g}/{spec.validation:g}/{spec.test:g}. {hint}"
        )
