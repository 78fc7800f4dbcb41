"""The written-out backward pass against autograd on the same network, batches and masks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from hpo.backprop import Backprop
from hpo.dropout import start_dropout
from hpo.model import build_mlp
from hpo.optimizers import Stepper
from hpo.space import ACTIVATIONS, TrialConfig

N_INPUTS, N_CLASSES = 6, 3


def _config(**changes: object) -> TrialConfig:
    base = TrialConfig(
        hidden=(12, 7), activation="relu", dropout=0.0, optimizer="adam", lr=1e-2, weight_decay=1e-3,
        batch_size=20, max_epochs=1, patience=1, momentum=0.9,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _model(config: TrialConfig, n_outputs: int) -> nn.Sequential:
    torch.manual_seed(3)
    arch = {"n_inputs": N_INPUTS, "hidden": list(config.hidden), "activation": config.activation, "dropout": config.dropout, "n_outputs": n_outputs}
    return build_mlp(arch)


def _autograd_steps(model: nn.Sequential, config: TrialConfig, batches: list, loss_fn: nn.Module) -> list[float]:
    # The plain PyTorch loop: autograd through the modules, then the same optimizer.
    optimizer = Stepper(model.parameters(), config.optimizer, lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum)
    model.train()
    start_dropout(model, seed=9)
    losses = []
    for x, y in batches:
        outputs = model(x)
        loss = loss_fn(outputs.reshape(-1), y) if y.is_floating_point() else loss_fn(outputs, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def _backprop_steps(model: nn.Sequential, config: TrialConfig, batches: list, weights: torch.Tensor | None) -> list[float]:
    model.train()
    start_dropout(model, seed=9)
    backprop = Backprop(model, config, regression=batches[0][1].is_floating_point(), class_weights=weights)
    losses = [float(backprop.step(x, y)) for x, y in batches]
    backprop.finish()
    return losses


def _batches(*, regression: bool = False) -> list:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for rows in (20, 20, 20, 11):
        x = torch.randn(rows, N_INPUTS, generator=generator)
        y = x[:, 0] - x[:, 1] if regression else torch.randint(0, N_CLASSES, (rows,), generator=generator)
        batches.append((x, y))
    return batches


def _assert_same_training(config: TrialConfig, *, regression: bool = False, weights: torch.Tensor | None = None) -> None:
    n_outputs = 1 if regression else N_CLASSES
    batches = _batches(regression=regression)
    loss_fn = nn.MSELoss() if regression else nn.CrossEntropyLoss(weight=weights)
    reference, model = _model(config, n_outputs), _model(config, n_outputs)

    expected = _autograd_steps(reference, config, batches, loss_fn)
    got = _backprop_steps(model, config, batches, weights)

    assert got == pytest.approx(expected, rel=1e-5)
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dropout", [0.0, 0.35])
def test_matches_autograd_for_each_activation(activation: str, dropout: float) -> None:
    _assert_same_training(_config(activation=activation, dropout=dropout))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_matches_autograd_for_each_optimizer(optimizer: str) -> None:
    _assert_same_training(_config(optimizer=optimizer, lr=0.05, hidden=(9,), dropout=0.2))


def test_matches_autograd_with_class_weights() -> None:
    _assert_same_training(_config(hidden=(8, 8, 5)), weights=torch.tensor([0.5, 2.0, 1.25]))


def test_matches_autograd_for_regression() -> None:
    _assert_same_training(_config(activation="tanh", lr=3e-3), regression=True)


def test_matches_autograd_without_hidden_layers() -> None:
    _assert_same_training(_config(hidden=()))


def test_finish_gives_each_parameter_its_own_storage() -> None:
    config = _config()
    model = _model(config, N_CLASSES)
    backprop = Backprop(model, config, regression=False, class_weights=None)
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) == 1

    backprop.finish()

    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) == len(list(model.parameters()))
    assert all(p.untyped_storage().nbytes() == p.numel() * 4 for p in model.parameters())


def test_bf16_autocast_gradient_close_to_float32() -> None:
    config = _config(dropout=0.2)
    x, y = _batches()[0]

    def first_gradient(*, autocast: bool) -> torch.Tensor:
        model = _model(config, N_CLASSES)
        start_dropout(model, seed=9)
        backprop = Backprop(model, config, regression=False, class_weights=None)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=autocast):
            backprop.step(x, y)
        assert backprop.flat.grad is not None
        return backprop.flat.grad.clone()

    plain, mixed = first_gradient(autocast=False), first_gradient(autocast=True)

    assert mixed.dtype == torch.float32
    assert torch.isfinite(mixed).all()
    # bfloat16 keeps 8 significant bits, so the error stays within a few percent of the largest gradient.
    assert (mixed - plain).abs().max().item() <= 0.03 * plain.abs().max().item()
