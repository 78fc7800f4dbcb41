"""Model files are data: a code payload never runs, and a damaged or crafted bundle gives one line and exit 2."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hpo.bundle import JSON_NAME, WEIGHTS_NAME, save_bundle
from hpo.cli import main
from hpo.model import build_mlp
from hpo.preprocess import fit_preprocessing

FEATURES = ["a", "b"]


class _TouchOnLoad:
    """A pickle whose loading creates a marker file: the code payload of a malicious model."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, int]]:
        return (open, (str(self.marker), "w"))  # type: ignore[return-value]


def _bundle(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=20), "b": rng.normal(size=20)})
    frame.to_csv(tmp_path / "rows.csv", index=False)
    prep = fit_preprocessing(frame, FEATURES)
    arch = {"n_inputs": prep.n_inputs, "hidden": [4], "activation": "relu", "dropout": 0.0, "n_outputs": 2}
    description = {"architecture": arch, "preprocessing": prep.to_dict(), "features": FEATURES, "target": "label", "classes": ["no", "yes"]}
    torch.manual_seed(0)
    return save_bundle(tmp_path / "model", build_mlp(arch), description)


def _record_sha256(folder: Path) -> None:
    # What an attacker who controls both files does: make the recorded hash match.
    description = json.loads((folder / JSON_NAME).read_text())
    description["weights"]["sha256"] = hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
    (folder / JSON_NAME).write_text(json.dumps(description))


def _predict(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["predict", "--model", str(folder), "--data", str(tmp_path / "rows.csv"), "--output", str(tmp_path / "out.csv")])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("force_unsafe_load", [False, True])
def test_predict_pickle_payload_never_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, force_unsafe_load: bool
) -> None:
    folder = _bundle(tmp_path)
    marker = tmp_path / "payload-ran"
    torch.save({"0.weight": _TouchOnLoad(marker)}, folder / WEIGHTS_NAME)
    _record_sha256(folder)
    if force_unsafe_load:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

    code, err = _predict(tmp_path, folder, capsys)

    assert code == 2
    assert not marker.exists()
    assert err.startswith(f"hpo: error: cannot read model weights {folder / WEIGHTS_NAME} as plain tensors")
    assert err.count("\n") == 1


def test_plain_torch_load_forced_unsafe_runs_payload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The trap the bundle loader closes: without an explicit weights_only=True, the
    # environment variable turns torch.load back into plain unpickling.
    path = tmp_path / "weights.pt"
    marker = tmp_path / "payload-ran"
    torch.save({"0.weight": _TouchOnLoad(marker)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

    with pytest.warns(UserWarning, match="forcing weights_only=False"):
        torch.load(path)

    assert marker.exists()


def test_predict_plain_pickle_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _bundle(tmp_path)
    marker = tmp_path / "payload-ran"
    (folder / WEIGHTS_NAME).write_bytes(pickle.dumps(_TouchOnLoad(marker)))
    _record_sha256(folder)

    code, err = _predict(tmp_path, folder, capsys)

    assert code == 2
    assert not marker.exists()
    assert "as plain tensors" in err


def test_predict_truncated_weights_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _bundle(tmp_path)
    weights = folder / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-40])

    code, err = _predict(tmp_path, folder, capsys)

    assert code == 2
    assert err == f"hpo: error: model weights {weights} do not match the SHA-256 in {folder / JSON_NAME}; the file was changed or damaged.\n"


def test_predict_truncated_weights_matching_hash_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _bundle(tmp_path)
    weights = folder / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-40])
    _record_sha256(folder)

    code, err = _predict(tmp_path, folder, capsys)

    assert code == 2
    assert err.startswith(f"hpo: error: cannot read model weights {weights} as plain tensors")


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("hidden", [4] * 65, "architecture.hidden must be a list of at most 64 widths"),
        ("hidden", [0], "architecture.hidden widths must be integers in 1..65536"),
        ("activation", "os.system", "architecture.activation must be one of relu"),
        ("n_inputs", -1, "architecture.n_inputs must be an integer in 1.."),
    ],
)
def test_predict_tampered_description_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: object, expected: str
) -> None:
    folder = _bundle(tmp_path)
    description = json.loads((folder / JSON_NAME).read_text())
    description["architecture"][field] = value
    (folder / JSON_NAME).write_text(json.dumps(description))

    code, err = _predict(tmp_path, folder, capsys)

    assert code == 2
    assert expected in err
    assert err.count("\n") == 1


def test_predict_oversized_architecture_rejected_before_allocation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _bundle(tmp_path)
    description = json.loads((folder / JSON_NAME).read_text())
    # Within every per-field bound, yet 64 layers of 65,536 units: about 1 TiB of float32.
    description["architecture"]["hidden"] = [65_536] * 64
    (folder / JSON_NAME).write_text(json.dumps(description))

    code, err = _predict(tmp_path, folder, capsys)

    assert code == 2
    assert "needs 270587396098 parameters" in err
    assert f"weights file {folder / WEIGHTS_NAME} holds" in err


def test_predict_shape_mismatch_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _bundle(tmp_path)
    description = json.loads((folder / JSON_NAME).read_text())
    torch.save(build_mlp({**description["architecture"], "hidden": [8]}).state_dict(), folder / WEIGHTS_NAME)
    _record_sha256(folder)

    code, err = _predict(tmp_path, folder, capsys)

    assert code == 2
    assert "do not fit the architecture" in err
    assert err.count("\n") == 1
