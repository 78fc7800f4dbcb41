"""Saving and loading model bundles without training code or pickle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hpo.bundle import JSON_NAME, WEIGHTS_NAME, load_model, save_bundle
from hpo.exceptions import BundleError
from hpo.model import build_mlp
from hpo.preprocess import fit_preprocessing

FEATURES = ["a", "b", "kind"]


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=30), "b": rng.normal(size=30), "kind": rng.choice(["x", "y"], size=30)})


def _save(folder: Path) -> tuple[torch.nn.Module, Path]:
    prep = fit_preprocessing(_frame(), FEATURES)
    arch = {"n_inputs": prep.n_inputs, "hidden": [6], "activation": "tanh", "dropout": 0.0, "n_outputs": 3}
    torch.manual_seed(0)
    network = build_mlp(arch)
    description = {"architecture": arch, "preprocessing": prep.to_dict(), "features": FEATURES, "target": "label", "classes": ["p", "q", "r"]}
    return network, save_bundle(folder, network, description)


def test_bundle_round_trip_predicts_the_same(tmp_path: Path) -> None:
    network, folder = _save(tmp_path / "model")
    prep = fit_preprocessing(_frame(), FEATURES)

    model = load_model(folder)
    proba = model.predict_proba(_frame())

    from hpo.preprocess import apply_preprocessing

    network.eval()
    expected = torch.softmax(network(torch.as_tensor(apply_preprocessing(prep, _frame()))), dim=1).detach().numpy()
    assert np.allclose(proba, expected, atol=1e-6)
    predictions = model.predict(_frame())
    assert list(predictions.columns) == ["prediction", "proba_p", "proba_q", "proba_r"]
    assert set(predictions["prediction"]) <= {"p", "q", "r"}


def test_bundle_weights_are_a_plain_state_dict(tmp_path: Path) -> None:
    _, folder = _save(tmp_path / "model")

    state = torch.load(folder / WEIGHTS_NAME, weights_only=True)

    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_load_model_without_optuna_or_training_code(tmp_path: Path) -> None:
    _, folder = _save(tmp_path / "model")
    code = (
        "import sys, hpo.bundle as b\n"
        f"m = b.load_model({str(folder)!r})\n"
        "bad = [n for n in ('optuna', 'hpo.engine', 'hpo.objective', 'hpo.study', 'sklearn') if n in sys.modules]\n"
        "print(bad)\n"
    )

    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert output.strip() == "[]"


def test_load_model_tampered_weights_raises(tmp_path: Path) -> None:
    _, folder = _save(tmp_path / "model")
    with (folder / WEIGHTS_NAME).open("ab") as handle:
        handle.write(b"\0")

    with pytest.raises(BundleError, match="do not match the SHA-256"):
        load_model(folder)


def test_load_model_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="model description not found"):
        load_model(tmp_path / "nothing")


def test_load_model_out_of_bounds_width_rejected_before_allocation(tmp_path: Path) -> None:
    _, folder = _save(tmp_path / "model")
    description = json.loads((folder / JSON_NAME).read_text())
    description["architecture"]["hidden"] = [10**9]
    (folder / JSON_NAME).write_text(json.dumps(description))

    with pytest.raises(BundleError, match="hidden widths must be integers in 1..65536"):
        load_model(folder)


def test_load_model_shape_mismatch_raises(tmp_path: Path) -> None:
    _, folder = _save(tmp_path / "model")
    description = json.loads((folder / JSON_NAME).read_text())
    description["architecture"]["hidden"] = [7]
    (folder / JSON_NAME).write_text(json.dumps(description))

    with pytest.raises(BundleError, match="do not fit the architecture"):
        load_model(folder)


def test_save_bundle_files_follow_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        _, folder = _save(tmp_path / "model")
    finally:
        os.umask(old)

    assert (folder / WEIGHTS_NAME).stat().st_mode & 0o777 == 0o644
    assert (folder / JSON_NAME).stat().st_mode & 0o777 == 0o644
