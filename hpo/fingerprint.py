"""Fingerprint of what makes a study's trials comparable, and the differences between two.

A study stores the fingerprint when it is created: a content hash, column schema and target
of the data, the split (fractions, seed and a hash of the row assignment), the search
space, and the objective (direction and metric). A later run whose fingerprint differs
would mix incomparable trials into one study, so it is rejected with the differences.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import pandas as pd

from hpo.data import SplitIndices, SplitSpec, Table
from hpo.exceptions import StudyError

_logger = logging.getLogger(__name__)

FINGERPRINT_ATTR = "hpo_fingerprint"
FINGERPRINT_FORMAT = 1
# Keys of the study settings that define what a trial's value means.
OBJECTIVE_KEYS = ("task", "metric", "direction")
_SHORT_HASH = 12


def compute_fingerprint(
    table: Table,
    split_spec: SplitSpec,
    split: SplitIndices,
    space: dict[str, Any],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Return the JSON-able fingerprint of one run's inputs.

    Args:
        table: The validated table (feature columns and target, rows with a target).
        split_spec: The split fractions and seed.
        split: The row positions of each part, as produced from ``split_spec``.
        space: The search space as stored on the study (``SearchSpace.to_dict()``).
        settings: The study settings; the entries named in ``OBJECTIVE_KEYS`` are kept.
    """
    frame = table.frame
    return {
        "format": FINGERPRINT_FORMAT,
        "data": {
            "source": table.source,
            "sha256": table_sha256(frame),
            "rows": int(len(frame)),
            "columns": [[str(name), column_kind(frame[name])] for name in frame.columns],
            "target": table.target,
            "classes": [_plain(c) for c in table.classes],
        },
        "split": {
            "train": split_spec.train,
            "validation": split_spec.validation,
            "test": split_spec.test,
            "seed": split_spec.seed,
            "sha256": _split_sha256(split),
        },
        "space": space,
        "objective": {key: settings[key] for key in OBJECTIVE_KEYS if key in settings},
    }


def table_sha256(frame: pd.DataFrame) -> str:
    """Return a SHA-256 of the table's values, row by row, independent of the file format.

    NOTE: The row hashes come from ``pandas.util.hash_pandas_object``, whose output pandas
    does not promise to keep. A pandas upgrade that changed it would make an unchanged
    table read as changed.
    """
    row_hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    return hashlib.sha256(row_hashes.tobytes()).hexdigest()


def column_kind(column: pd.Series) -> str:
    """Return the kind of a column's values: bool, integer, float, datetime or text.

    Kinds rather than dtype names, since pandas renames dtypes between versions
    (``object`` became ``str`` for text in pandas 3).
    """
    types = pd.api.types
    if types.is_bool_dtype(column):
        return "bool"
    if types.is_integer_dtype(column):
        return "integer"
    if types.is_float_dtype(column):
        return "float"
    if types.is_datetime64_any_dtype(column):
        return "datetime"
    return "text"


def check_study_data(study_attrs: dict[str, Any], study_name: str, table: Table, split_spec: SplitSpec, split: SplitIndices) -> None:
    """Raise when the table or split differs from the ones the study was created with.

    Commands that reuse a study's data (finalize, reproduce) call this, so that a data file
    changed in place is not silently used to retrain and test a trial chosen on other rows.
    Studies without a stored fingerprint pass unchecked.

    Raises:
        StudyError: Naming every difference.
    """
    stored = study_attrs.get(FINGERPRINT_ATTR)
    if not isinstance(stored, dict):
        return
    current = compute_fingerprint(table, split_spec, split, {}, {})
    differences = _data_differences(stored.get("data", {}), current["data"]) + _split_differences(stored.get("split", {}), current["split"])
    if differences:
        raise StudyError(
            f"the data of study {study_name!r} differs from what it was created with: {'; '.join(differences)}. "
            "Restore the original file, or point --data at an unchanged copy."
        )


def fingerprint_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Return one short phrase per difference between two fingerprints; empty when they match."""
    differences: list[str] = []
    differences.extend(_data_differences(stored.get("data", {}), current["data"]))
    differences.extend(_split_differences(stored.get("split", {}), current["split"]))
    differences.extend(_mapping_differences("search space", stored.get("space", {}), current["space"]))
    differences.extend(_mapping_differences("objective", stored.get("objective", {}), current["objective"]))
    return differences


def _data_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    differences = []
    if old.get("target") != new["target"]:
        differences.append(f"target {old.get('target')!r} -> {new['target']!r}")
    old_columns = {name: dtype for name, dtype in old.get("columns", [])}
    new_columns = {name: dtype for name, dtype in new["columns"]}
    added = [name for name in new_columns if name not in old_columns]
    removed = [name for name in old_columns if name not in new_columns]
    retyped = [f"{name} {old_columns[name]} -> {dtype}" for name, dtype in new_columns.items() if name in old_columns and old_columns[name] != dtype]
    if added:
        differences.append(f"new column(s) {', '.join(added)}")
    if removed:
        differences.append(f"missing column(s) {', '.join(removed)}")
    if retyped:
        differences.append(f"column type(s) changed: {', '.join(retyped)}")
    if old.get("classes") != new["classes"] and old.get("target") == new["target"]:
        differences.append(f"target classes {old.get('classes')} -> {new['classes']}")
    if old.get("sha256") != new["sha256"]:
        differences.append(
            f"data content changed ({old.get('rows')} rows, sha256 {str(old.get('sha256'))[:_SHORT_HASH]} when the study was created; "
            f"{new['rows']} rows, sha256 {new['sha256'][:_SHORT_HASH]} in {new['source']} now)"
        )
    return differences


def _split_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    settings = ("train", "validation", "test", "seed")
    if any(old.get(key) != new[key] for key in settings):
        before = "/".join(str(old.get(key)) for key in settings[:3])
        after = "/".join(str(new[key]) for key in settings[:3])
        return [f"split train/validation/test {before} seed {old.get('seed')} -> {after} seed {new['seed']}"]
    if old.get("sha256") != new["sha256"]:
        # Same fractions and seed on the same data, yet other rows: the splitting code changed.
        return ["split assigns other rows to train/validation/test with the same fractions and seed (a different scikit-learn version?)"]
    return []


def _mapping_differences(label: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = list(dict.fromkeys([*old, *new]))
    changed = [f"{key} {old.get(key, 'unset')} -> {new.get(key, 'unset')}" for key in keys if old.get(key) != new.get(key)]
    return [f"{label} {', '.join(changed)}"] if changed else []


def _split_sha256(split: SplitIndices) -> str:
    digest = hashlib.sha256()
    for part in (split.train, split.validation, split.test):
        digest.update(np.asarray(part, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    # numpy scalars are not JSON-able; class labels are ints or strings.
    return value.item() if isinstance(value, np.generic) else value
