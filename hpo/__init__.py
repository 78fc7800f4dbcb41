"""hpo: hyperparameter optimization of PyTorch MLPs on tabular data, with Optuna studies.

The public functions are imported on first use, so that ``import hpo.bundle`` in a
deployed service loads torch and the bundle code, and not Optuna or the training code.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "optimize": "hpo.study",
    "run_worker": "hpo.workers",
    "finalize": "hpo.finalizer",
    "FinalizeResult": "hpo.finalizer",
    "reproduce_trial": "hpo.retrain",
    "load_model": "hpo.bundle",
    "LoadedModel": "hpo.bundle",
    "predict_file": "hpo.predict",
    "predict_frame": "hpo.predict",
    "PredictResult": "hpo.predict",
    "SearchSpace": "hpo.space",
    "HpoError": "hpo.exceptions",
    "InputError": "hpo.exceptions",
    "StudyError": "hpo.exceptions",
    "StorageError": "hpo.exceptions",
    "BundleError": "hpo.exceptions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
