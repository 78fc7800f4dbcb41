"""Adam, AdamW and SGD steps through torch's functional optimizer API.

Creating any ``torch.optim.Optimizer`` imports ``torch._dynamo``, because the class wraps
its methods to keep them out of compiled graphs. That import took 1.1 s of a 3.1 s first
trial on the ocean data (2 cores), and every fresh worker process paid it again. The
functional forms (``torch.optim.adam.adam`` and its kin) run the same kernels without the
wrapper, so ``Stepper`` updates parameters exactly as ``torch.optim.Adam(fused=True)``,
``AdamW(fused=True)`` and ``SGD(fused=True, momentum=...)`` do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch.optim.adam import adam
from torch.optim.adamw import adamw
from torch.optim.sgd import sgd

_logger = logging.getLogger(__name__)

# torch.optim's defaults for Adam and AdamW.
BETA1 = 0.9
BETA2 = 0.999
EPS = 1e-8
KINDS = ("adam", "adamw", "sgd")


class Stepper:
    """The state and update rule of one optimizer over a fixed list of parameters.

    Args:
        params: The parameters to update; the list is fixed at creation.
        kind: ``adam``, ``adamw`` (decoupled weight decay) or ``sgd`` (with momentum).
        lr: Learning rate (> 0).
        weight_decay: L2 penalty (adam, sgd) or decoupled decay rate (adamw), >= 0.
        momentum: SGD momentum in [0, 1); unused by the Adam family.
        fused: Use torch's fused kernels (one per step for all parameters). None: on CPU
            and CUDA devices, where torch has them.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        kind: str,
        *,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        fused: bool | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown optimizer {kind!r}; choose from {', '.join(KINDS)}")
        self.params = list(params)
        if not self.params:
            raise ValueError("an optimizer needs at least one parameter")
        self.kind = kind
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        device = self.params[0].device
        self.fused = device.type in ("cpu", "cuda") if fused is None else fused

        # The state as torch.optim keeps it: fused kernels take float32 step counts on the
        # parameters' device, the loop form takes them on the CPU.
        step_device = device if self.fused else torch.device("cpu")
        self.steps = [torch.zeros((), dtype=torch.float32, device=step_device) for _ in self.params]
        self.first_moments = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.second_moments = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)
        self._fused_works = False
        self._one_group = len({(p.device, p.dtype) for p in self.params}) == 1

    def zero_grad(self) -> None:
        """Drop the gradients, so that the next backward pass writes fresh ones."""
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a gradient."""
        if not self.fused or self._fused_works:
            self._update(fused=self.fused)
            return

        # The first fused step finds out whether this torch build has kernels for the device.
        # Torch raises after it has counted the step, so the saved state is put back first.
        saved_steps = [step.clone() for step in self.steps]
        try:
            self._update(fused=True)
        except (RuntimeError, TypeError) as err:
            _logger.debug("Fused %s unavailable on %s (%s); using the loop form.", self.kind, self.params[0].device, err)
            self.fused = False
            self.steps = [step.cpu() for step in saved_steps]
            self.momentum_buffers = [None] * len(self.params)
            self._update(fused=False)
            return
        self._fused_works = True

    def _update(self, *, fused: bool) -> None:
        chosen = [i for i, param in enumerate(self.params) if param.grad is not None]
        if not chosen:
            return
        params = [self.params[i] for i in chosen]
        grads = [self.params[i].grad for i in chosen]

        if self.kind == "sgd":
            buffers = [self.momentum_buffers[i] for i in chosen]
            sgd(
                params, grads, buffers, foreach=False, fused=fused,
                weight_decay=self.weight_decay, momentum=self.momentum, lr=self.lr,
                dampening=0.0, nesterov=False, maximize=False,
            )
            # sgd() creates the momentum buffers on the first step, in the list it was given.
            for i, buffer in zip(chosen, buffers, strict=True):
                self.momentum_buffers[i] = buffer
            return

        if fused and self._fused_works and len(chosen) == len(self.params) and self._one_group:
            # The two calls of torch.optim's fused path, without its regrouping of the tensors
            # by device and dtype at every step, which took 20 us of a 30 us step for one tensor.
            torch._foreach_add_(self.steps, 1)
            kernel = torch._fused_adamw_ if self.kind == "adamw" else torch._fused_adam_
            kernel(
                params, grads, self.first_moments, self.second_moments, [], self.steps,
                amsgrad=False, lr=self.lr, beta1=BETA1, beta2=BETA2, weight_decay=self.weight_decay, eps=EPS,
                maximize=False, grad_scale=None, found_inf=None,
            )
            return

        update = adamw if self.kind == "adamw" else adam
        update(
            params, grads,
            [self.first_moments[i] for i in chosen],
            [self.second_moments[i] for i in chosen],
            [],
            [self.steps[i] for i in chosen],
            foreach=False, fused=fused, amsgrad=False, beta1=BETA1, beta2=BETA2,
            lr=self.lr, weight_decay=self.weight_decay, eps=EPS, maximize=False,
        )
