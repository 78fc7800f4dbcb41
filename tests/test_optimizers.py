"""The functional optimizer steps match torch.optim and keep torch's compiler out of training."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from hpo.model import build_mlp
from hpo.optimizers import Stepper

_ARCH = {"n_inputs": 5, "hidden": [12, 6], "activation": "tanh", "dropout": 0.0, "n_outputs": 3}


def _train(step: object, model: torch.nn.Module, n_steps: int = 6) -> None:
    # The same batches for every optimizer, so that only the update rule differs.
    generator = torch.Generator().manual_seed(1)
    for _ in range(n_steps):
        x = torch.randn(32, 5, generator=generator)
        y = torch.randint(0, 3, (32,), generator=generator)
        step.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        step.step()


def _twin_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    first = build_mlp(_ARCH)
    second = build_mlp(_ARCH)
    second.load_state_dict(first.state_dict())
    return first, second


@pytest.mark.parametrize(
    ("kind", "reference", "lr", "weight_decay"),
    [
        ("adam", torch.optim.Adam, 0.01, 1e-3),
        ("adamw", torch.optim.AdamW, 0.01, 1e-2),
        ("sgd", torch.optim.SGD, 0.05, 1e-3),
    ],
)
def test_stepper_matches_torch_optim(kind: str, reference: type, lr: float, weight_decay: float) -> None:
    ours, theirs = _twin_models()
    initial = ours[0].weight.detach().clone()
    extra = {"momentum": 0.9} if kind == "sgd" else {}

    _train(Stepper(ours.parameters(), kind, lr=lr, weight_decay=weight_decay, momentum=0.9), ours)
    _train(reference(theirs.parameters(), lr=lr, weight_decay=weight_decay, fused=True, **extra), theirs)

    for mine, expected in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(mine, expected)
    assert not torch.equal(ours[0].weight, initial)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_stepper_falls_back_when_fused_kernels_are_missing(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = _twin_models()
    kernel = "_fused_adam_" if kind == "adam" else "_fused_sgd_"

    def missing(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("no fused kernel for this device")

    stepper = Stepper(ours.parameters(), kind, lr=0.01, momentum=0.9)
    with monkeypatch.context() as patch:
        patch.setattr(torch, kernel, missing)
        _train(stepper, ours)
    _train(Stepper(theirs.parameters(), kind, lr=0.01, momentum=0.9, fused=False), theirs)

    assert not stepper.fused
    for mine, expected in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, expected)


def test_stepper_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        Stepper(build_mlp(_ARCH).parameters(), "rmsprop", lr=0.1)


def test_training_does_not_import_torch_compiler() -> None:
    # Importing torch._dynamo took about 1.1 s, a third of the first trial on the ocean data.
    script = (
        "import sys, numpy as np, torch\n"
        "from hpo.engine import DeviceData, train\n"
        "from hpo.model import build_mlp\n"
        "from hpo.space import TrialConfig\n"
        "x = np.random.default_rng(0).normal(size=(256, 4)).astype('float32')\n"
        "y = (x[:, 0] > 0).astype('int64')\n"
        "data = DeviceData.from_arrays(x, y, x, y, n_classes=2, device=torch.device('cpu'))\n"
        "for kind in ('adam', 'adamw', 'sgd'):\n"
        "    config = TrialConfig(hidden=(8,), activation='relu', dropout=0.1, optimizer=kind, lr=0.01,\n"
        "                         weight_decay=1e-4, batch_size=64, max_epochs=2, patience=2, momentum=0.9)\n"
        "    model = build_mlp({'n_inputs': 4, 'hidden': [8], 'activation': 'relu', 'dropout': 0.1, 'n_outputs': 2})\n"
        "    assert train(model, config, data, seed=0).epochs_run == 2\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)

    assert result.stdout.strip() == "False"
