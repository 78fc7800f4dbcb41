"""Train several networks of one depth and batch size as one stacked computation (a pack).

The pack stacks its members' weights along a leading member dimension, so each layer is
one batched matrix product (``torch.baddbmm``) for all members. Every member keeps its
own weights, seed, batch order, learning rate, weight decay, optimizer state, dropout,
activation and learning curve, so it trains as it would alone (see ``train`` in
``hpo.engine``), up to float rounding.

Members of different widths share a pack: each layer is zero-padded to the widest member.
The padding is exact, because every activation maps 0 to 0, so a padded unit outputs 0,
receives a zero gradient, and keeps zero weights under Adam, AdamW and SGD.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from hpo.engine import DeviceData, EpochStats, NonFiniteLossError, TrainResult, make_loss
from hpo.metrics import METRICS, REGRESSION, Metric, compute_metric
from hpo.space import TrialConfig

_logger = logging.getLogger(__name__)

# Defaults of torch.optim.Adam and AdamW, which the lone engine uses too.
_BETA1 = 0.9
_BETA2 = 0.999
_EPS = 1e-8
# Largest member x row x unit count of one evaluation chunk (64 MiB of float32).
_EVAL_CHUNK_ELEMENTS = 2**24

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": functional.relu,
    "tanh": torch.tanh,
    "gelu": functional.gelu,
    "silu": functional.silu,
    "leaky_relu": functional.leaky_relu,
}

PackKey = tuple[int, int]


def pack_key(config: TrialConfig) -> PackKey:
    """Return what members of one pack must share: the number of hidden layers and the batch size.

    Widths, activation, dropout, optimizer and its settings may differ between members.
    """
    return (len(config.hidden), config.batch_size)


@dataclass
class PackMember:
    """One network in a pack: its parameters, optimizer state, batch order and learning curve.

    ``weights[i]`` is layer i's weight transposed to ``[in, out]`` and unpadded; ``biases[i]``
    is ``[out]``. ``tag`` is the caller's handle, such as the Optuna trial.
    """

    tag: Any
    config: TrialConfig
    seed: int
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    generator: torch.Generator
    first_moments: list[torch.Tensor] = field(default_factory=list)
    second_moments: list[torch.Tensor] = field(default_factory=list)
    n_steps: int = 0
    result: TrainResult = field(default_factory=TrainResult)
    started: float = field(default_factory=time.perf_counter)

    @property
    def epoch(self) -> int:
        """Number of epochs trained so far, which is also the next epoch's index."""
        return self.result.epochs_run

    @property
    def is_finished(self) -> bool:
        """Whether the epoch budget is used up or the validation score stopped improving (patience)."""
        if self.epoch >= self.config.max_epochs:
            return True
        best = self.result.best_epoch
        return best is not None and self.epoch - 1 - best >= self.config.patience

    def linear_parameters(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Return ``(weight [out, in], bias [out])`` per layer, as ``nn.Linear`` stores them."""
        return [(w.t().contiguous(), b.clone()) for w, b in zip(self.weights, self.biases, strict=True)]


@dataclass(frozen=True)
class PackEpoch:
    """One member's outcome of a pack epoch: its statistics, or the error that ended it."""

    member: PackMember
    stats: EpochStats | None
    error: NonFiniteLossError | None = None


class Pack:
    """Members that share the number of hidden layers and the batch size, trained together.

    Members join and leave between epochs. ``run_epoch`` trains every member for one
    epoch on its own batch order and evaluates all of them on the validation part.
    """

    def __init__(self, data: DeviceData, key: PackKey, *, metric: Metric = METRICS["accuracy"]) -> None:
        if data.x_val is None or data.y_val is None:
            raise ValueError("a pack needs a validation part to evaluate its members")
        self.data = data
        self.key = key
        self.metric = metric
        self.members: list[PackMember] = []
        self._stack: _Stack | None = None

    def __len__(self) -> int:
        return len(self.members)

    def add(self, tag: Any, config: TrialConfig, seed: int, model: nn.Sequential) -> PackMember:
        """Add a network initialized by the caller (``model``) as a new member.

        Raises:
            ValueError: When the config's depth or batch size differs from the pack's.
        """
        if pack_key(config) != self.key:
            raise ValueError(f"config with key {pack_key(config)} cannot join a pack with key {self.key}")
        linears = [module for module in model if isinstance(module, nn.Linear)]
        device = self.data.device
        weights = [layer.weight.detach().t().contiguous().to(device) for layer in linears]
        biases = [layer.bias.detach().clone().to(device) for layer in linears]
        member = PackMember(
            tag=tag,
            config=config,
            seed=seed,
            weights=weights,
            biases=biases,
            generator=torch.Generator().manual_seed(seed),
            first_moments=[torch.zeros_like(p) for p in weights + biases],
            second_moments=[torch.zeros_like(p) for p in weights + biases],
        )
        self._unstack()
        self.members.append(member)
        return member

    def remove(self, member: PackMember) -> None:
        """Take a member out of the pack, with its parameters written back to it."""
        self._unstack()
        self.members.remove(member)

    def run_epoch(self) -> list[PackEpoch]:
        """Train every member for one epoch, evaluate each, and return one outcome per member."""
        if not self.members:
            return []
        if self._stack is None:
            self._stack = _Stack(self.members, self.data)
        stack = self._stack
        train_loss = stack.train_epoch(self.data)
        scores, val_loss = stack.evaluate(self.data, self.metric)

        # One host sync per epoch for all members (for accuracy; other metrics add one per member).
        rows = torch.stack([train_loss, val_loss]).tolist()
        outcomes = []
        now = time.perf_counter()
        for position, member in enumerate(stack.members):
            loss, score, v_loss = rows[0][position], scores[position], rows[1][position]
            epoch = member.epoch
            member.result.seconds = now - member.started
            if not math.isfinite(loss):
                outcomes.append(PackEpoch(member, None, NonFiniteLossError(epoch)))
                continue
            member.result.train_losses.append(loss)
            member.result.val_scores.append(score)
            if self.metric.is_better(score, member.result.best_score):
                member.result.best_score, member.result.best_epoch = score, epoch
            outcomes.append(PackEpoch(member, EpochStats(epoch=epoch, train_loss=loss, val_score=score, val_loss=v_loss)))
        return outcomes

    def _unstack(self) -> None:
        if self._stack is not None:
            self._stack.write_back()
            self._stack = None


class _Stack:
    """The members' parameters and optimizer state stacked and zero-padded for batched products.

    Members are ordered by activation and then by optimizer family, so that each
    activation and each update rule applies to one contiguous slice of the member dimension.
    """

    def __init__(self, members: list[PackMember], data: DeviceData) -> None:
        self.members = sorted(members, key=lambda m: (m.config.activation, m.config.optimizer == "sgd"))
        self.device = device = data.device
        self.is_regression = data.task == REGRESSION
        n_layers = len(self.members[0].weights)
        self.in_widths = [max(m.weights[i].shape[0] for m in self.members) for i in range(n_layers)]
        self.out_widths = [max(m.weights[i].shape[1] for m in self.members) for i in range(n_layers)]

        # weights[i]: [K, in, out]; biases[i]: [K, 1, out]; zero-padded to the widest member.
        self.weights = [self._pad([m.weights[i] for m in self.members], (self.in_widths[i], self.out_widths[i])) for i in range(n_layers)]
        self.biases = [self._pad([m.biases[i].unsqueeze(0) for m in self.members], (1, self.out_widths[i])) for i in range(n_layers)]
        self.params = self.weights + self.biases
        shapes = [(w.shape[1], w.shape[2]) for w in self.weights] + [(1, b.shape[2]) for b in self.biases]
        self.first_moments = [self._pad([m.first_moments[j].reshape(self._member_shape(m, j)) for m in self.members], shapes[j]) for j in range(len(self.params))]
        self.second_moments = [self._pad([m.second_moments[j].reshape(self._member_shape(m, j)) for m in self.members], shapes[j]) for j in range(len(self.params))]
        for param in self.params:
            param.requires_grad_(True)

        def per_member(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)

        configs = [m.config for m in self.members]
        self.lr = per_member([c.lr for c in configs])
        self.l2_decay = per_member([c.weight_decay if c.optimizer in ("adam", "sgd") else 0.0 for c in configs])
        self.decoupled_decay = per_member([c.weight_decay if c.optimizer == "adamw" else 0.0 for c in configs])
        self.momentum = per_member([c.momentum for c in configs])
        self.keep = per_member([1.0 - c.dropout for c in configs])
        self.has_dropout = any(c.dropout > 0 for c in configs)
        self.n_steps = per_member([float(m.n_steps) for m in self.members])
        self.activation_slices = _slices([c.activation for c in configs])
        self.optimizer_slices = _slices(["sgd" if c.optimizer == "sgd" else "adam" for c in configs])
        # class_weights: [K, classes], each member's weights of the loss (ones when unweighted).
        self.class_weights = None if self.is_regression else torch.stack([_class_weights(c, data) for c in configs])

    def train_epoch(self, data: DeviceData) -> torch.Tensor:
        """Run one epoch of mini-batch steps for all members; return each member's mean loss [K]."""
        n_rows = data.x_train.shape[0]
        batch_size = self.members[0].config.batch_size
        # Each member draws its permutation from its own generator on the CPU, as the lone engine does.
        orders = torch.stack([torch.randperm(n_rows, generator=m.generator) for m in self.members]).to(self.device)
        total_loss = torch.zeros(len(self.members), device=self.device)
        for start in range(0, n_rows, batch_size):
            index = orders[:, start : start + batch_size]  # [K, B]
            outputs = self._forward(data.x_train[index], training=True)  # [K, B, outputs]
            losses = self._losses(outputs, data.y_train[index])
            for param in self.params:
                param.grad = None
            losses.sum().backward()
            self._step()
            total_loss += losses.detach() * index.shape[1]
        for member in self.members:
            member.n_steps += math.ceil(n_rows / batch_size)
        return total_loss / n_rows

    def evaluate(self, data: DeviceData, metric: Metric) -> tuple[list[float], torch.Tensor]:
        """Return each member's validation score (K floats) and unweighted mean loss [K].

        The loss is cross-entropy for classification and the mean squared error of the
        standardized targets for regression, as ``hpo.engine.evaluate`` computes them.
        """
        x, y = data.x_val, data.y_val
        assert x is not None and y is not None
        n_members = len(self.members)
        rows_per_chunk = max(1, _EVAL_CHUNK_ELEMENTS // (n_members * max(self.out_widths)))
        with torch.inference_mode():
            chunks = [self._forward(x[start : start + rows_per_chunk], training=False) for start in range(0, x.shape[0], rows_per_chunk)]
            outputs = torch.cat(chunks, dim=1)  # [K, rows, outputs]
            target = y.unsqueeze(0).expand(n_members, -1)
            if self.is_regression:
                loss = ((outputs.squeeze(2) - target) ** 2).mean(dim=1)
            else:
                loss = functional.cross_entropy(outputs.transpose(1, 2), target, reduction="none").mean(dim=1)
            if metric.name == "accuracy":
                scores = (outputs.argmax(dim=2) == target).float().mean(dim=1).tolist()
            else:
                scores = [compute_metric(metric.name, outputs[k], y, y_scale=data.y_scale) for k in range(n_members)]
        return scores, loss

    def _losses(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # outputs: [K, B, outputs]; target: [K, B]. Returns each member's batch loss [K].
        if self.is_regression:
            return ((outputs.squeeze(2) - target) ** 2).mean(dim=1)
        assert self.class_weights is not None
        # cross_entropy takes [N, classes, d]: here N = members, d = rows of the batch.
        row_losses = functional.cross_entropy(outputs.transpose(1, 2), target, reduction="none")
        row_weights = torch.gather(self.class_weights, 1, target)
        # A weighted mean, as nn.CrossEntropyLoss(weight=...) takes it; unweighted members have weights 1.
        return (row_losses * row_weights).sum(dim=1) / row_weights.sum(dim=1)

    def write_back(self) -> None:
        """Copy each member's unpadded parameters and optimizer state back into the member."""
        for position, member in enumerate(self.members):
            for i in range(len(member.weights)):
                rows, cols = member.weights[i].shape
                member.weights[i] = self.weights[i][position, :rows, :cols].detach().clone()
                member.biases[i] = self.biases[i][position, 0, :cols].detach().clone()
            for j, template in enumerate(member.weights + member.biases):
                view = self._member_view(position, j, template)
                member.first_moments[j] = self.first_moments[j][view].reshape(template.shape).clone()
                member.second_moments[j] = self.second_moments[j][view].reshape(template.shape).clone()

    def _forward(self, x: torch.Tensor, *, training: bool) -> torch.Tensor:
        # x: [K, B, inputs] (each member's own batch) or [rows, inputs] (shared by all members).
        hidden = x
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if hidden.dim() == 2:
                hidden = torch.matmul(hidden, weight) + bias  # [rows, in] @ [K, in, out] -> [K, rows, out]
            else:
                hidden = torch.baddbmm(bias, hidden, weight)
            if i == last:
                return hidden
            hidden = self._activate(hidden)
            if training and self.has_dropout:
                mask = torch.rand_like(hidden) < self.keep
                hidden = hidden * mask / self.keep
        return hidden

    def _activate(self, hidden: torch.Tensor) -> torch.Tensor:
        if len(self.activation_slices) == 1:
            name, _, _ = self.activation_slices[0]
            return _ACTIVATIONS[name](hidden)
        return torch.cat([_ACTIVATIONS[name](hidden[start:end]) for name, start, end in self.activation_slices])

    @torch.no_grad()
    def _step(self) -> None:
        self.n_steps += 1
        for kind, start, end in self.optimizer_slices:
            part = slice(start, end)
            for param, first, second in zip(self.params, self.first_moments, self.second_moments, strict=True):
                assert param.grad is not None
                if kind == "sgd":
                    self._sgd(param[part], param.grad[part], first[part], part)
                else:
                    self._adam(param[part], param.grad[part], first[part], second[part], part)

    def _adam(self, param: torch.Tensor, grad: torch.Tensor, first: torch.Tensor, second: torch.Tensor, part: slice) -> None:
        # The update of torch.optim.Adam (L2 decay added to the gradient) and AdamW
        # (decoupled decay), with per-member learning rate, decay and step count.
        lr, step = self.lr[part], self.n_steps[part]
        param.mul_(1 - lr * self.decoupled_decay[part])
        grad = grad + self.l2_decay[part] * param
        first.lerp_(grad, 1 - _BETA1)
        second.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
        step_size = lr / (1 - _BETA1**step)
        denominator = (second.sqrt() / torch.sqrt(1 - _BETA2**step)).add_(_EPS)
        param.sub_(step_size * first / denominator)

    def _sgd(self, param: torch.Tensor, grad: torch.Tensor, buffer: torch.Tensor, part: slice) -> None:
        # torch.optim.SGD with momentum and no dampening: the buffer starts at zero, so its
        # first value is the gradient itself, as in torch.
        grad = grad + self.l2_decay[part] * param
        buffer.mul_(self.momentum[part]).add_(grad)
        param.sub_(self.lr[part] * buffer)

    def _pad(self, tensors: list[torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        stacked = torch.zeros((len(tensors), *shape), dtype=torch.float32, device=self.device)
        for position, tensor in enumerate(tensors):
            stacked[position, : tensor.shape[0], : tensor.shape[1]] = tensor
        return stacked

    @staticmethod
    def _member_shape(member: PackMember, index: int) -> tuple[int, int]:
        n_layers = len(member.weights)
        if index < n_layers:
            return tuple(member.weights[index].shape)  # type: ignore[return-value]
        return (1, member.biases[index - n_layers].shape[0])

    def _member_view(self, position: int, index: int, template: torch.Tensor) -> tuple[Any, ...]:
        if template.dim() == 2:
            return (position, slice(0, template.shape[0]), slice(0, template.shape[1]))
        return (position, 0, slice(0, template.shape[0]))


def _class_weights(config: TrialConfig, data: DeviceData) -> torch.Tensor:
    loss = make_loss(config, data)
    weight = getattr(loss, "weight", None)
    return torch.ones(data.n_classes, device=data.device) if weight is None else weight.to(data.device)


def _slices(labels: list[str]) -> list[tuple[str, int, int]]:
    """Return ``(label, start, end)`` for each run of equal labels in an ordered list."""
    runs: list[tuple[str, int, int]] = []
    for position, label in enumerate(labels):
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], position + 1)
        else:
            runs.append((label, position, position + 1))
    return runs
