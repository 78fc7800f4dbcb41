"""Read a TOML config file: ``[optimize]`` options and ``[space]`` entries, with their types checked."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hpo.exceptions import InputError
from hpo.space import load_space_file

_logger = logging.getLogger(__name__)

# Options of ``hpo optimize`` that a config file may set, with the types they accept.
# The keys are the snake_case names of the command-line options.
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "data": (str,),
    "target": (str,),
    "ignore_columns": (list, str),
    "study_name": (str,),
    "storage": (str,),
    "n_trials": (int,),
    "timeout": (int, float),
    "seed": (int,),
    "pruner": (str,),
    "metric": (str,),
    "task": (str,),
    "cv": (int,),
    "max_params": (int,),
    "max_latency_ms": (int, float),
    "device": (str,),
    "pack": (int, str),
    "workers": (int,),
    "workers_per_gpu": (int,),
    "heartbeat_interval": (int, float),
    "grace_period": (int, float),
    "starting_point": (bool,),
}
_TABLES = ("optimize", "space")


def read_config(path: str | Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the ``[optimize]`` options and ``[space]`` entries of a TOML file.

    Raises:
        InputError: For a missing or invalid file, an unknown table or key, or a value of
            the wrong type. All problems are reported in one message.
    """
    if path is None:
        return {}, {}
    document = load_space_file(path)
    errors: list[str] = []
    unknown_tables = sorted(set(document) - set(_TABLES))
    if unknown_tables:
        errors.append(f"unknown table(s) {', '.join(unknown_tables)}; use [optimize] and [space]")
    for table in _TABLES:
        if table in document and not isinstance(document[table], dict):
            errors.append(f"{table} must be a table ([{table}]), not a single value")
    if errors:
        raise InputError(f"invalid config file {path}: " + "; ".join(errors) + ".")

    options = dict(document.get("optimize", {}))
    unknown = sorted(set(options) - set(OPTION_TYPES))
    if unknown:
        errors.append(f"unknown key(s) {', '.join(unknown)} in [optimize]; known keys are: {', '.join(sorted(OPTION_TYPES))}")
    for key, value in options.items():
        expected = OPTION_TYPES.get(key)
        if expected is None:
            continue
        # bool is an int in Python, so a bool passes only where bool itself is expected.
        if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
            names = " or ".join("list of strings" if t is list else t.__name__ for t in expected)
            errors.append(f"[optimize] {key} must be a {names}; got {value!r}")
        elif isinstance(value, list) and not all(isinstance(v, str) for v in value):
            errors.append(f"[optimize] {key} must list strings; got {value!r}")
    if errors:
        raise InputError(f"invalid config file {path}: " + "; ".join(errors) + ".")

    if isinstance(options.get("ignore_columns"), str):
        options["ignore_columns"] = [c.strip() for c in options["ignore_columns"].split(",") if c.strip()]
    return options, dict(document.get("space", {}))
