"""Save, validate and load a model bundle: ``model.json`` (description) and ``model.pt`` (weights).

Loading needs torch, numpy and pandas only: no Optuna and no training code. The weights
file contains a plain ``state_dict`` and is read with ``weights_only=True``, after its SHA-256
has been checked against the one recorded in ``model.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from hpo.exceptions import BundleError
from hpo.model import ACTIVATION_LAYERS, build_mlp
from hpo.preprocess import Preprocessing, apply_preprocessing

_logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "hpo-model"
BUNDLE_VERSION = 1
JSON_NAME = "model.json"
WEIGHTS_NAME = "model.pt"
# Bounds checked before any tensor is allocated, so a crafted description cannot ask for
# a huge network.
MAX_LAYERS = 64
MAX_WIDTH = 65_536
MAX_INPUTS = 1_000_000
MAX_CLASSES = 100_000
# A description without "task" comes from a classifier, the only task before regression.
BUNDLE_TASKS = ("classification", "regression")
# Bytes per float32 parameter; the weights file holds at least this much per parameter.
_BYTES_PER_PARAMETER = 4


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference, with the preprocessing and labels it was trained with."""

    network: nn.Sequential
    description: dict[str, Any]
    preprocessing: Preprocessing

    @property
    def task(self) -> str:
        """``classification`` or ``regression``."""
        return str(self.description.get("task", "classification"))

    @property
    def classes(self) -> list[Any]:
        """Class labels, in the order of the network's outputs; empty for regression."""
        return list(self.description.get("classes", []))

    @property
    def target(self) -> str:
        """Name of the target column the model predicts."""
        return str(self.description["target"])

    def predict_proba(self, frame: pd.DataFrame, *, source: str = "the data") -> np.ndarray:
        """Return class probabilities, shape (rows, classes), for the rows of ``frame``.

        Raises:
            ValueError: For a regression model, which has no classes.
        """
        if self.task == "regression":
            raise ValueError("a regression model predicts values, not class probabilities; use predict")
        return torch.softmax(self._outputs(frame, source), dim=1).numpy()

    def predict_values(self, frame: pd.DataFrame, *, source: str = "the data") -> np.ndarray:
        """Return the predicted target values (float64, in the target's units) of a regression model.

        Raises:
            ValueError: For a classifier.
        """
        if self.task != "regression":
            raise ValueError("a classifier predicts labels, not values; use predict or predict_proba")
        scaling = self.description["target_scaling"]
        scaled = self._outputs(frame, source).reshape(-1).double().numpy()
        return scaled * float(scaling["std"]) + float(scaling["mean"])

    def predict(self, frame: pd.DataFrame, *, source: str = "the data") -> pd.DataFrame:
        """Return a frame with the prediction of each row.

        A classifier's frame has the predicted label and one ``proba_<label>`` column per
        class; a regression model's frame has the predicted value only.
        """
        if self.task == "regression":
            return pd.DataFrame({"prediction": self.predict_values(frame, source=source)}, index=frame.index)
        proba = self.predict_proba(frame, source=source)
        labels = np.asarray(self.classes, dtype=object)[proba.argmax(axis=1)]
        result = pd.DataFrame({"prediction": labels}, index=frame.index)
        for i, label in enumerate(self.classes):
            result[f"proba_{label}"] = proba[:, i]
        return result

    def _outputs(self, frame: pd.DataFrame, source: str) -> torch.Tensor:
        x = torch.as_tensor(apply_preprocessing(self.preprocessing, frame, source=source))
        self.network.eval()
        with torch.inference_mode():
            return self.network(x)


def check_output_folder(out_dir: str | Path) -> Path:
    """Return ``out_dir`` as an absolute path, or raise if it cannot become a bundle folder.

    Raises:
        BundleError: When the path is an existing file, or lies under one.
    """
    out = Path(out_dir).expanduser().resolve()
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise BundleError(f"cannot write the model to {out}: {folder} is a file; choose a folder path for --out.")
    return out


def save_bundle(out_dir: str | Path, network: nn.Module, description: dict[str, Any]) -> Path:
    """Write ``model.pt`` and ``model.json`` into ``out_dir`` and return the folder.

    Both files are written to temporary names first and then renamed, so an
    interrupted save never leaves a half-written bundle under the final names.
    """
    out = check_output_folder(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {key: tensor.detach().cpu().contiguous() for key, tensor in network.state_dict().items()}

    weights_tmp = _temp_path(out, WEIGHTS_NAME)
    torch.save(state, weights_tmp)
    full = {
        **description,
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "weights": {"file": WEIGHTS_NAME, "sha256": _sha256(weights_tmp)},
    }
    validate_description(full)
    json_tmp = _temp_path(out, JSON_NAME)
    json_tmp.write_text(json.dumps(full, indent=2, sort_keys=False) + "\n", encoding="utf-8")

    os.replace(weights_tmp, out / WEIGHTS_NAME)
    os.replace(json_tmp, out / JSON_NAME)
    _logger.info("Saved model bundle to %s.", out)
    return out


def load_model(path: str | Path) -> LoadedModel:
    """Load a bundle folder (or its ``model.json``) for inference.

    Raises:
        BundleError: When a file is missing, the description is invalid, the weights do not
            match their recorded SHA-256, cannot be read as plain tensors, or do not fit
            the described architecture.
    """
    folder = Path(path).expanduser().resolve()
    if folder.name == JSON_NAME:
        folder = folder.parent
    json_path = folder / JSON_NAME
    if not json_path.is_file():
        raise BundleError(f"model description not found: {json_path}. Point --model at the folder written by 'hpo finalize'.")
    try:
        description = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"model description {json_path} is not valid JSON: {err}.") from err
    validate_description(description, origin=str(json_path))
    preprocessing = Preprocessing.from_dict(description["preprocessing"])

    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise BundleError(f"model weights not found: {weights_path}.")
    actual = _sha256(weights_path)
    if actual != description["weights"]["sha256"]:
        raise BundleError(f"model weights {weights_path} do not match the SHA-256 in {json_path}; the file was changed or damaged.")
    # The network is allocated from the description, so its size is bounded by the file
    # the description came with, not only by the per-field bounds.
    n_params = architecture_parameters(description["architecture"])
    file_size = weights_path.stat().st_size
    if n_params * _BYTES_PER_PARAMETER > file_size:
        raise BundleError(
            f"architecture in {json_path} needs {n_params} parameters ({n_params * _BYTES_PER_PARAMETER} bytes), "
            f"more than the {file_size}-byte weights file {weights_path} holds."
        )
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError and others
        raise BundleError(f"cannot read model weights {weights_path} as plain tensors: {type(err).__name__}.") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(f"model weights {weights_path} are not a state_dict of tensors.")

    network = build_mlp(description["architecture"])
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0]
        raise BundleError(f"model weights {weights_path} do not fit the architecture in {json_path}: {first_line}") from err
    network.eval()
    return LoadedModel(network=network, description=description, preprocessing=preprocessing)


def architecture_parameters(architecture: dict[str, Any]) -> int:
    """Return the number of weights and biases of the network that ``architecture`` describes."""
    widths = [int(architecture["n_inputs"]), *(int(w) for w in architecture["hidden"]), int(architecture["n_outputs"])]
    return sum(n_in * n_out + n_out for n_in, n_out in zip(widths, widths[1:]))


def validate_description(description: Any, *, origin: str = "model description") -> None:
    """Check the structure and bounds of a bundle description.

    Raises:
        BundleError: Listing every problem found.
    """
    errors: list[str] = []
    if not isinstance(description, dict):
        raise BundleError(f"{origin}: expected a JSON object.")
    if description.get("format") != BUNDLE_FORMAT:
        errors.append(f"format must be {BUNDLE_FORMAT!r}")
    if description.get("format_version") != BUNDLE_VERSION:
        errors.append(f"format_version must be {BUNDLE_VERSION}; got {description.get('format_version')!r}")

    task = description.get("task", "classification")
    if task not in BUNDLE_TASKS:
        errors.append(f"task must be one of {', '.join(BUNDLE_TASKS)}; got {task!r}")
    arch = description.get("architecture")
    if not isinstance(arch, dict):
        errors.append("architecture must be an object")
    else:
        errors.extend(_architecture_errors(arch, regression=task == "regression"))

    if task == "regression":
        errors.extend(_regression_errors(description))
    else:
        classes = description.get("classes")
        if not isinstance(classes, list) or not 2 <= len(classes) <= MAX_CLASSES:
            errors.append("classes must be a list of 2 or more labels")
        elif isinstance(arch, dict) and arch.get("n_outputs") != len(classes):
            errors.append(f"architecture.n_outputs ({arch.get('n_outputs')}) must equal the number of classes ({len(classes)})")

    prep = description.get("preprocessing")
    if not isinstance(prep, dict):
        errors.append("preprocessing must be an object")
    elif isinstance(arch, dict) and not errors:
        try:
            n_encoded = Preprocessing.from_dict(prep).n_inputs
        except Exception as err:  # from_dict reports its own field errors
            errors.append(str(err))
        else:
            if n_encoded != arch.get("n_inputs"):
                errors.append(f"preprocessing yields {n_encoded} inputs but architecture.n_inputs is {arch.get('n_inputs')}")

    weights = description.get("weights")
    if not isinstance(weights, dict) or not isinstance(weights.get("sha256"), str) or len(weights["sha256"]) != 64:
        errors.append("weights.sha256 must be a 64-character hex digest")
    if not isinstance(description.get("target"), str):
        errors.append("target must be a string")

    if errors:
        raise BundleError(f"{origin} is invalid: " + "; ".join(errors) + ".")


def _regression_errors(description: dict[str, Any]) -> list[str]:
    errors = []
    if description.get("classes", []) != []:
        errors.append("classes must be empty for a regression model")
    scaling = description.get("target_scaling")
    if not isinstance(scaling, dict):
        return errors + ["target_scaling must be an object with mean and std"]
    mean, std = scaling.get("mean"), scaling.get("std")
    if not _is_finite_number(mean):
        errors.append("target_scaling.mean must be a finite number")
    if not (_is_finite_number(std) and isinstance(std, (int, float)) and std > 0):
        errors.append("target_scaling.std must be a finite number > 0")
    return errors


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _architecture_errors(arch: dict[str, Any], *, regression: bool = False) -> list[str]:
    errors = []
    hidden = arch.get("hidden")
    if not isinstance(hidden, list) or len(hidden) > MAX_LAYERS:
        errors.append(f"architecture.hidden must be a list of at most {MAX_LAYERS} widths")
    elif not all(_is_int_in(w, 1, MAX_WIDTH) for w in hidden):
        errors.append(f"architecture.hidden widths must be integers in 1..{MAX_WIDTH}")
    if not _is_int_in(arch.get("n_inputs"), 1, MAX_INPUTS):
        errors.append(f"architecture.n_inputs must be an integer in 1..{MAX_INPUTS}")
    if regression and arch.get("n_outputs") != 1:
        errors.append("architecture.n_outputs must be 1 for a regression model")
    elif not regression and not _is_int_in(arch.get("n_outputs"), 2, MAX_CLASSES):
        errors.append(f"architecture.n_outputs must be an integer in 2..{MAX_CLASSES}")
    if arch.get("activation") not in ACTIVATION_LAYERS:
        errors.append(f"architecture.activation must be one of {', '.join(ACTIVATION_LAYERS)}")
    dropout = arch.get("dropout")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not (math.isfinite(dropout) and 0 <= dropout < 1):
        errors.append("architecture.dropout must be a number in [0, 1)")
    return errors


def _is_int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _temp_path(folder: Path, name: str) -> Path:
    handle, temp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    os.close(handle)
    # mkstemp creates the file as 0600; a bundle is meant to be shared like any other file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)
    return Path(temp)
