"""Dropout whose masks come from a counter-based hash instead of a random generator.

An element is kept when a 32-bit hash of its position and a key falls below the keep
probability (compared on the hash's top 31 bits). The key depends only on the trial's seed, the training step and
the layer, so a network gets the same masks alone and in a pack (``hpo.pack``), on every
device, whatever else draws random numbers meanwhile.

It is also faster on a CPU: torch's ``dropout`` draws one Mersenne Twister number per
element, which took 1.3 ms for a 2048 x 64 batch on one core, more than the rest of a
training step. The hash is about a dozen vectorized integer operations, run for many
steps at once (``MaskStream``).
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

_logger = logging.getLogger(__name__)

_MASK32 = 0xFFFFFFFF
# The multipliers of the "lowbias32" integer hash, a variant of MurmurHash3's finalizer
# with lower bias, in which each output bit depends on every input bit.
_MULTIPLIER_1 = 0x7FEB352D
_MULTIPLIER_2 = 0x846CA68B
# A row's elements are numbered row * ROW_STRIDE + column, so that a unit's number does not
# depend on how wide the layer is padded in a pack. It equals hpo.space.MAX_UNITS.
ROW_STRIDE = 8192
# Keys of one step differ per layer, for up to hpo.space.MAX_LAYERS (16) layers.
_LAYER_SLOTS = 16


def _signed(value: int) -> int:
    """Return the int32 that has the same 32 bits as ``value``."""
    value &= _MASK32
    return value - (1 << 32) if value >= 1 << 31 else value


def mix(value: int) -> int:
    """Hash a number to 32 bits (unsigned), as ``mix_tensor`` does element-wise."""
    value &= _MASK32
    value ^= value >> 16
    value = (value * _MULTIPLIER_1) & _MASK32
    value ^= value >> 15
    value = (value * _MULTIPLIER_2) & _MASK32
    value ^= value >> 16
    return value


def mix_tensor(values: torch.Tensor) -> torch.Tensor:
    """Hash an int32 tensor element-wise with the same bits as ``mix``."""
    return mix_tensor_(values.clone())


def mix_tensor_(values: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Hash a contiguous int32 tensor in place, as ``mix_tensor`` does, and return it.

    Products wrap around in int32 as unsigned ones do, and the right shifts are made
    logical by masking off the copied sign bits. In-place steps with one scratch tensor
    (of the shape of ``values``) took a quarter of the time of out-of-place ones on 2**20
    elements, which spent most of it on fresh allocations.
    """
    scratch = torch.empty_like(values) if scratch is None else scratch
    for shift, multiplier in ((16, _MULTIPLIER_1), (15, _MULTIPLIER_2), (16, None)):
        torch.bitwise_right_shift(values, shift, out=scratch)
        values.bitwise_xor_(scratch.bitwise_and_((1 << (32 - shift)) - 1))
        if multiplier is not None:
            values.mul_(_signed(multiplier))
    return values


def seed_hash(seed: int) -> int:
    """Return the per-network part of every mask key, as an int32."""
    return _signed(mix(seed))


def mask_keys(seed_parts: torch.Tensor, steps: torch.Tensor, layer: int) -> torch.Tensor:
    """Return the mask keys (int32) of one layer for tensors of seed parts and steps of any shape."""
    return mix_tensor_(seed_parts ^ (steps * _LAYER_SLOTS + layer))


def keep_bound(keep: float) -> int:
    """Return the bound of an element's kept hashes, on their top 31 bits (``hash >> 1``)."""
    return min(round(keep * 2**31) - 2**30 - 1, 2**30 - 1)


def scaled_masks_(hashes: torch.Tensor, bounds: torch.Tensor | int, scales: torch.Tensor | float) -> torch.Tensor:
    """Return 1 / keep where an element is kept and 0 where it is dropped, as float32.

    Kept means ``hashes >> 1 <= bounds``. The comparison runs as a subtraction and a
    sign shift, since comparing and converting a bool tensor took three times as long.
    ``hashes`` is overwritten; ``bounds`` and ``scales`` broadcast against it.
    """
    hashes.bitwise_right_shift_(1).sub_(bounds + 1).bitwise_right_shift_(31)  # now -1 where kept and 0 where dropped
    return hashes.to(torch.float32).mul_(-scales)


@functools.lru_cache(maxsize=32)
def element_numbers(rows: int, columns: int, device: torch.device) -> torch.Tensor:
    """Return the int32 numbers ``row * ROW_STRIDE + column`` of a ``rows x columns`` matrix.

    Cached, since every step of an epoch requests the same shapes. Callers must not
    change the tensor in place.
    """
    row_starts = torch.arange(rows, dtype=torch.int32, device=device) * ROW_STRIDE
    return row_starts.unsqueeze(1) + torch.arange(columns, dtype=torch.int32, device=device)


# Maximum number of mask elements made at once (4 MiB of float32). The hash runs over many steps
# at a time, because a dozen small operations per step cost more than the arithmetic at batch 128.
_CHUNK_ELEMENTS = 2**20


class MaskStream:
    """Scaled keep masks (0 or 1 / keep) of one hidden layer at consecutive training steps.

    It serves K networks at once, each with its own seed, keep probability and count of
    steps before the stream's first one (a lone network is K = 1). Masks are made for a
    chunk of steps at a time and then sliced, so a step costs one multiplication.
    """

    def __init__(self, seeds: list[int], keeps: list[float], first_steps: list[int], layer: int) -> None:
        self.seed_parts = torch.tensor([seed_hash(seed) for seed in seeds], dtype=torch.int32)
        self.first_steps = torch.tensor(first_steps, dtype=torch.int32)
        self.keeps = keeps
        self.layer = layer
        self._masks: torch.Tensor | None = None
        self._chunk_start = 0
        # The hashes and scratch of the last chunk, reused for the next one of the same shape.
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def masks(self, step: int, rows: int, columns: int, device: torch.device) -> torch.Tensor:
        """Return the masks ``[K, rows, columns]`` of the stream's ``step`` (counted from 0)."""
        masks = self._masks
        if (
            masks is None
            or masks.device != device
            or not 0 <= step - self._chunk_start < masks.shape[0]
            or rows > masks.shape[2]
            or columns != masks.shape[3]
        ):
            masks = self._masks = self._make(step, rows, columns, device)
            self._chunk_start = step
        # A shorter last batch takes the first rows, because element numbers do not depend on the row count.
        return masks[step - self._chunk_start, :, :rows]

    def _make(self, step: int, rows: int, columns: int, device: torch.device) -> torch.Tensor:
        n_members = len(self.keeps)
        n_steps = max(1, _CHUNK_ELEMENTS // (n_members * rows * columns))
        steps = self.first_steps + torch.arange(step, step + n_steps, dtype=torch.int32).unsqueeze(1)  # [steps, K]
        keys = mask_keys(self.seed_parts, steps, self.layer).view(n_steps, n_members, 1, 1).to(device)
        bounds = torch.tensor([keep_bound(keep) for keep in self.keeps], dtype=torch.int32, device=device).view(-1, 1, 1)
        scales = torch.tensor([1.0 / keep for keep in self.keeps], device=device).view(-1, 1, 1)
        shape = (n_steps, n_members, rows, columns)
        if self._buffers is None or self._buffers[0].shape != shape or self._buffers[0].device != device:
            self._buffers = (torch.empty(shape, dtype=torch.int32, device=device), torch.empty(shape, dtype=torch.int32, device=device))
        hashes, scratch = self._buffers
        torch.bitwise_xor(element_numbers(rows, columns, device), keys, out=hashes)
        # The masks are new each time, because a step's masks stay in its autograd graph.
        return scaled_masks_(mix_tensor_(hashes, scratch), bounds, scales)


class Dropout(nn.Dropout):
    """An ``nn.Dropout`` with hashed masks, identical to it outside training.

    ``start`` gives it the trial's seed and its hidden layer's index, and the masks then
    depend on those and on the count of training calls since. Without ``start``, it
    starts itself with a seed drawn from torch's global generator.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        self._stream: MaskStream | None = None
        self._n_calls = 0

    def start(self, seed: int, layer: int) -> None:
        """Make the masks depend on ``seed``, the layer index and the step, counting from now."""
        self._stream = MaskStream([seed], [1.0 - self.p], [0], layer)
        self._n_calls = 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return hidden
        return hidden * self.next_mask(hidden)

    def next_mask(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return the next training call's scaled mask for ``hidden`` (``[..., units]``) and count the call."""
        if self._stream is None:
            self.start(int(torch.randint(0, 2**31 - 1, ())), 0)
        assert self._stream is not None
        rows = hidden.numel() // hidden.shape[-1]
        mask = self._stream.masks(self._n_calls, rows, hidden.shape[-1], hidden.device)[0]
        self._n_calls += 1
        if mask.dtype != hidden.dtype:
            mask = mask.to(hidden.dtype)
        return mask if hidden.dim() == 2 else mask.reshape(hidden.shape)


def start_dropout(model: nn.Module, seed: int) -> None:
    """Seed every hashed ``Dropout`` of ``model``, numbering them as its hidden layers."""
    for layer, module in enumerate(m for m in model.modules() if isinstance(m, Dropout)):
        module.start(seed, layer)
