"""Hashed dropout masks: the hash, the keep rate, and masks that depend only on seed, step and layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hpo import dropout
from hpo.dropout import Dropout, MaskStream


def _lowbias32(values: np.ndarray) -> np.ndarray:
    # An independent reference in numpy's unsigned 32-bit arithmetic, which wraps by definition.
    x = values.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def test_mix_tensor_matches_unsigned_reference() -> None:
    values = np.random.default_rng(0).integers(-(2**31), 2**31, size=10_000, dtype=np.int64).astype(np.int32)

    hashed = dropout.mix_tensor(torch.from_numpy(values)).numpy().view(np.uint32)

    np.testing.assert_array_equal(hashed, _lowbias32(values.view(np.uint32)))
    assert [dropout.mix(int(v)) for v in values[:50].view(np.uint32)] == hashed[:50].tolist()


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])
def test_keep_rate_and_scale(p: float) -> None:
    stream = MaskStream([7], [1 - p], [0], 0)

    masks = torch.stack([stream.masks(step, 512, 64, torch.device("cpu"))[0] for step in range(16)])

    is_kept = masks > 0
    assert masks.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
    assert is_kept.double().mean().item() == pytest.approx(1 - p, abs=0.004)
    # No unit or row is kept much more often than the others (a weak hash would show stripes).
    per_unit = is_kept.double().mean(dim=(0, 1))
    per_row = is_kept.double().mean(dim=(0, 2))
    assert (per_unit - (1 - p)).abs().max().item() < 0.03
    assert (per_row - (1 - p)).abs().max().item() < 0.06
    # Scaled by 1 / keep, the mask leaves the mean of what passes through unchanged.
    assert masks.double().mean().item() == pytest.approx(1.0, abs=0.01)


def test_masks_depend_on_seed_step_and_layer_only() -> None:
    cpu = torch.device("cpu")

    def mask(seed: int, step: int, layer: int, *, start: int = 0) -> torch.Tensor:
        stream = MaskStream([seed], [0.6], [start], layer)
        return stream.masks(step - start, 33, 20, cpu)[0]

    assert torch.equal(mask(1, 5, 0), mask(1, 5, 0))
    # A stream that starts later, so its chunks are cut elsewhere, gives the same masks.
    assert torch.equal(mask(1, 40, 1), mask(1, 40, 1, start=37))
    assert not torch.equal(mask(1, 5, 0), mask(2, 5, 0))
    assert not torch.equal(mask(1, 5, 0), mask(1, 6, 0))
    assert not torch.equal(mask(1, 5, 0), mask(1, 5, 1))


def test_short_batch_mask_is_prefix() -> None:
    full = MaskStream([3], [0.5], [0], 0).masks(2, 128, 16, torch.device("cpu"))
    short = MaskStream([3], [0.5], [0], 0).masks(2, 30, 16, torch.device("cpu"))

    assert torch.equal(short, full[:, :30])


def test_pack_stream_gives_each_member_its_lone_masks() -> None:
    cpu = torch.device("cpu")
    together = MaskStream([11, 12, 13], [0.7, 1.0, 0.4], [0, 25, 3], layer=2)
    masks = together.masks(4, 64, 8, cpu)

    for k, (seed, keep, first) in enumerate([(11, 0.7, 0), (12, 1.0, 25), (13, 0.4, 3)]):
        alone = MaskStream([seed], [keep], [0], layer=2).masks(first + 4, 64, 8, cpu)[0]
        assert torch.equal(masks[k], alone)
    # A member without dropout keeps every element.
    assert torch.equal(masks[1], torch.ones(64, 8))


def test_module_eval_identity_train_seeded() -> None:
    hidden = torch.randn(50, 10)
    layer = Dropout(0.4)

    layer.eval()
    assert torch.equal(layer(hidden), hidden)

    layer.train()
    layer.start(seed=5, layer=0)
    first = layer(hidden)
    second = layer(hidden)
    layer.start(seed=5, layer=0)
    assert torch.equal(layer(hidden), first)
    assert not torch.equal(first, second)
    assert torch.equal(first == 0, MaskStream([5], [0.6], [0], 0).masks(0, 50, 10, torch.device("cpu"))[0] == 0)


def test_unseeded_module_follows_torch_global_generator() -> None:
    hidden = torch.ones(40, 12)

    def fresh_output(global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)
        return Dropout(0.5).train()(hidden)

    assert torch.equal(fresh_output(1), fresh_output(1))
    assert not torch.equal(fresh_output(1), fresh_output(2))


def test_gradient_passes_through_kept_elements_only() -> None:
    hidden = torch.randn(16, 6, requires_grad=True)
    layer = Dropout(0.5).train()
    layer.start(seed=1, layer=0)

    layer(hidden).sum().backward()

    expected = MaskStream([1], [0.5], [0], 0).masks(0, 16, 6, torch.device("cpu"))[0]
    assert hidden.grad is not None
    torch.testing.assert_close(hidden.grad, expected)
    assert isinstance(layer, nn.Dropout)
