"""Train several networks that share a batch size as one stacked computation (a pack).

The pack stacks its members' weights along a leading member dimension, so each layer is
one batched matrix product (``torch.baddbmm``) for all members. Every member keeps its
own weights, seed, batch order, learning rate, weight decay, optimizer state, dropout,
activation and learning curve, so it trains as it would alone (see ``train`` in
``hpo.engine``), up to float rounding. Dropout masks are hashed from the member's seed and
step (``hpo.dropout``), so they are those of its lone run too.

Members of different widths and depths share a pack. Each layer is zero-padded to the
widest member, which is exact because every activation maps 0 to 0: a padded unit outputs
0, receives a zero gradient and never trains. A shallower member passes through identity
layers up to the pack's depth (see ``_Stack``). Members must share the batch size, since
they step together, and the optimizer family (Adam and AdamW, or SGD), since the pack runs
one update rule.
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

from hpo import dropout
from hpo.backprop import ACTIVATIONS, DERIVATIVES, product_into, sum_into
from hpo.engine import DeviceData, EpochStats, NonFiniteLossError, TrainResult, make_loss
from hpo.metrics import METRICS, REGRESSION, Metric, compute_metric
from hpo.optimizers import BETA1, BETA2, EPS
from hpo.space import TrialConfig

_logger = logging.getLogger(__name__)

# Largest member x row x unit count of one evaluation chunk (64 MiB of float32).
_EVAL_CHUNK_ELEMENTS = 2**24

# A shallower member's pass-through layers use "identity".
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {**ACTIVATIONS, "identity": lambda hidden: hidden}

PackKey = tuple[int, str]


def pack_key(config: TrialConfig) -> PackKey:
    """Return what members of one pack must share: the batch size and the optimizer family.

    Depth, widths, activation, dropout, learning rate and weight decay may differ, and so
    may Adam and AdamW.
    """
    return (config.batch_size, "sgd" if config.optimizer == "sgd" else "adam")


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
    """Members that share the batch size and the optimizer family, trained together.

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
            ValueError: When the config's batch size or optimizer family differs from the pack's.
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
    """The members' parameters and optimizer state in flat buffers, zero-padded for batched products.

    Every parameter tensor of the stack (``weights[i]``: [K, in, out], ``biases[i]``:
    [K, 1, out]) is a view into one flat buffer, and so is its gradient. The update rule
    then runs about 15 operations on the whole buffer instead of about 10 per tensor, with
    per-member values (learning rate, decay, bias correction) spread to per-element vectors.
    On 2 CPU cores, the per-tensor update had taken two thirds of a batch-128 step.

    A member shallower than the deepest one passes through identity layers between its
    last hidden layer and its output layer. These have identity weights that never train,
    no activation and no dropout, so the member's outputs and gradients are those of its
    own network.
    Members are ordered by activation and then by depth, so that each activation applies
    to few contiguous slices of the member dimension.
    """

    def __init__(self, members: list[PackMember], data: DeviceData) -> None:
        self.members = sorted(members, key=lambda m: (m.config.activation, -len(m.config.hidden)))
        self.device = device = data.device
        self.is_regression = data.task == REGRESSION
        self.is_sgd = self.members[0].config.optimizer == "sgd"
        n_members = len(self.members)
        depth = max(len(m.config.hidden) for m in self.members)
        self.depth = depth
        # placements[k][j]: the stack layer of member k's layer j (its output layer goes to layer ``depth``).
        self.placements = [list(range(len(m.config.hidden))) + [depth] for m in self.members]

        # Each stack layer is as wide as its widest member; identity layers are as wide as the member's last hidden layer.
        shapes = [[(0, 0)] * (depth + 1) for _ in self.members]
        for k, member in enumerate(self.members):
            for j, layer in enumerate(self.placements[k]):
                shapes[k][layer] = tuple(member.weights[j].shape)
            width = member.weights[len(member.config.hidden)].shape[0]
            for layer in range(len(member.config.hidden), depth):
                shapes[k][layer] = (width, width)
        self.in_widths = [max(shapes[k][i][0] for k in range(n_members)) for i in range(depth + 1)]
        self.out_widths = [max(shapes[k][i][1] for k in range(n_members)) for i in range(depth + 1)]

        # The flat layout: the weights of every layer, then the biases; each block is [K, ...].
        self.block_shapes = [(n_members, self.in_widths[i], self.out_widths[i]) for i in range(depth + 1)]
        self.block_shapes += [(n_members, 1, self.out_widths[i]) for i in range(depth + 1)]
        self.block_starts = [0]
        for shape in self.block_shapes:
            self.block_starts.append(self.block_starts[-1] + math.prod(shape))
        size = self.block_starts[-1]

        self.flat = torch.zeros(size, device=device)
        self.grad = torch.zeros(size, device=device)
        self.first_moments = torch.zeros(size, device=device)
        self.second_moments = torch.zeros(size, device=device)
        trainable = torch.zeros(size, device=device)
        flat_views, trainable_views = self._views(self.flat), self._views(trainable)
        first_views, second_views = self._views(self.first_moments), self._views(self.second_moments)
        n_layers = depth + 1
        for k, member in enumerate(self.members):
            for j, layer in enumerate(self.placements[k]):
                rows, cols = member.weights[j].shape
                for block, source in ((layer, j), (n_layers + layer, len(member.weights) + j)):
                    if block < n_layers:
                        region: tuple[Any, ...] = (k, slice(0, rows), slice(0, cols))
                        shape: tuple[int, ...] = (rows, cols)
                    else:
                        region, shape = (k, 0, slice(0, cols)), (cols,)
                    flat_views[block][region] = (member.weights + member.biases)[source].reshape(shape)
                    trainable_views[block][region] = 1.0
                    first_views[block][region] = member.first_moments[source].reshape(shape)
                    second_views[block][region] = member.second_moments[source].reshape(shape)
            for layer in range(len(member.config.hidden), depth):
                width = shapes[k][layer][0]
                flat_views[layer][k, :width, :width] = torch.eye(width, device=device)

        self.weights = flat_views[:n_layers]
        self.biases = flat_views[n_layers:]
        # The backward pass writes each layer's gradient into these views of the flat gradient.
        grad_views = self._views(self.grad)
        self.weight_grads = grad_views[:n_layers]
        self.bias_grads = grad_views[n_layers:]

        configs = [m.config for m in self.members]
        # NOTE: these per-element vectors (owner, learning rate, decays, momentum) cost about
        # 6 more values per parameter than a lone run keeps. A pack of one network with two
        # 8192-unit layers used 3x the memory and 2.3x the time of training it alone.
        # owner[e]: the member that element e of the flat buffers belongs to.
        self.owner = torch.cat([torch.arange(n_members, device=device).repeat_interleave(math.prod(s[1:])) for s in self.block_shapes])

        def per_element(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)[self.owner]

        # Identity layers and padding have a learning rate of 0, so they never change.
        self.lr = per_element([c.lr for c in configs]) * trainable
        self.l2_decay = per_element([c.weight_decay if c.optimizer in ("adam", "sgd") else 0.0 for c in configs])
        self.has_l2_decay = any(c.optimizer in ("adam", "sgd") and c.weight_decay > 0 for c in configs)
        self.decay_factor = 1 - self.lr * per_element([c.weight_decay if c.optimizer == "adamw" else 0.0 for c in configs])
        self.has_decoupled_decay = any(c.optimizer == "adamw" and c.weight_decay > 0 for c in configs)
        self.momentum = per_element([c.momentum for c in configs])
        # Step counts stay on the CPU in float64 (MPS has no float64), as torch's kernels work out
        # the bias corrections in double precision. In float32 their rounding error was about 20x
        # torch's, and Adam with L2 decay grew it into parameter differences of 8e-3 in 3 epochs.
        self.n_steps = torch.tensor([float(m.n_steps) for m in self.members], dtype=torch.float64)

        # Per hidden layer: each member's activation ("identity" on its pass-through layers) and keep probability.
        def keep_of(member: PackMember, layer: int) -> float:
            return 1.0 - member.config.dropout if layer < len(member.config.hidden) else 1.0

        self.activation_slices = [
            _slices([c.activation if layer < len(c.hidden) else "identity" for c in configs]) for layer in range(depth)
        ]
        keeps = [[keep_of(m, layer) for m in self.members] for layer in range(depth)]
        # One mask stream per hidden layer with dropout, counting steps from this stack's first step.
        self.mask_streams = [
            dropout.MaskStream([m.seed for m in self.members], layer_keeps, [m.n_steps for m in self.members], layer)
            if any(keep < 1 for keep in layer_keeps) else None
            for layer, layer_keeps in enumerate(keeps)
        ]
        self.n_steps_done = 0
        # class_weights: [K, classes], each member's weights of the loss (ones when unweighted).
        self.class_weights = None if self.is_regression else torch.stack([_class_weights(c, data) for c in configs])
        self.is_weighted = any(c.class_weight == "balanced" for c in configs)

    def train_epoch(self, data: DeviceData) -> torch.Tensor:
        """Run one epoch of mini-batch steps for all members; return each member's mean loss [K]."""
        n_rows = data.x_train.shape[0]
        batch_size = self.members[0].config.batch_size
        # Each member draws its permutation from its own generator on the CPU, as the lone engine does.
        orders = torch.stack([torch.randperm(n_rows, generator=m.generator) for m in self.members]).to(self.device)
        total_loss = torch.zeros(len(self.members), device=self.device)
        for start in range(0, n_rows, batch_size):
            index = orders[:, start : start + batch_size]  # [K, B]
            losses = self._train_step(data.x_train[index], data.y_train[index])
            total_loss += losses * index.shape[1]
            self.n_steps_done += 1
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
            chunks = [self._forward(x[start : start + rows_per_chunk]) for start in range(0, x.shape[0], rows_per_chunk)]
            outputs = torch.cat(chunks, dim=1)  # [K, rows, outputs]
            target = y.unsqueeze(0).expand(n_members, -1)
            if self.is_regression:
                loss = ((outputs.squeeze(2) - target) ** 2).mean(dim=1)
            else:
                loss = functional.cross_entropy(outputs.transpose(1, 2), target, reduction="none").mean(dim=1)
            if metric.name == "accuracy":
                # In double precision, as compute_metric does for a lone network.
                scores = (outputs.argmax(dim=2) == target).double().mean(dim=1).tolist()
            else:
                scores = [compute_metric(metric.name, outputs[k], y, y_scale=data.y_scale) for k in range(n_members)]
        return scores, loss

    @torch.no_grad()
    def _train_step(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Take one step of every member on its own batch (x: [K, B, inputs]) and return each member's batch loss [K].

        The backward pass is written out as in ``hpo.backprop``, with batched products.
        """
        inputs, pre_activations, outputs, masks = [x], [], [], []
        hidden = x
        for i in range(self.depth):
            pre = torch.baddbmm(self.biases[i], hidden, self.weights[i])
            hidden = self._activate(pre, i)
            pre_activations.append(pre)
            outputs.append(hidden)
            stream = self.mask_streams[i]
            # The masks hpo.dropout.Dropout gives each member alone. Pass-through layers
            # and members without dropout keep every element.
            mask = None if stream is None else stream.masks(self.n_steps_done, hidden.shape[1], hidden.shape[2], hidden.device)
            if mask is not None:
                hidden = hidden * mask
            masks.append(mask)
            inputs.append(hidden)
        logits = torch.baddbmm(self.biases[self.depth], hidden, self.weights[self.depth])
        losses, grad = self._losses_and_gradient(logits, target)

        for i in range(self.depth, -1, -1):
            product_into(self.weight_grads[i], inputs[i].transpose(1, 2), grad)
            sum_into(self.bias_grads[i], grad, 1)
            if i == 0:
                break
            grad = torch.bmm(grad, self.weights[i].transpose(1, 2))
            mask = masks[i - 1]
            if mask is not None:
                grad = grad * mask
            grad = self._derivative(grad, pre_activations[i - 1], outputs[i - 1], i - 1)
        self._step()
        return losses

    def _losses_and_gradient(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # logits: [K, B, outputs], target: [K, B]. Returns each member's batch loss [K] and the
        # gradient of their sum w.r.t. the logits, which is each member's own loss gradient.
        rows = logits.shape[1]
        if self.is_regression:
            difference = logits.squeeze(2) - target
            return difference.square().mean(dim=1), difference.mul(2.0 / rows).unsqueeze(2)
        assert self.class_weights is not None
        log_probabilities = torch.log_softmax(logits, 2)
        row_losses = -log_probabilities.gather(2, target.unsqueeze(2)).squeeze(2)  # [K, B]
        grad = log_probabilities.exp().scatter_(2, target.unsqueeze(2), -1.0, reduce="add")  # softmax - one-hot
        if not self.is_weighted:
            return row_losses.mean(dim=1), grad.div_(rows)
        # A weighted mean, as nn.CrossEntropyLoss(weight=...) takes it; unweighted members have weights 1.
        row_weights = torch.gather(self.class_weights, 1, target)
        totals = row_weights.sum(dim=1)
        return (row_losses * row_weights).sum(dim=1) / totals, grad.mul_((row_weights / totals.unsqueeze(1)).unsqueeze(2))

    def write_back(self) -> None:
        """Copy each member's unpadded parameters and optimizer state back into the member."""
        n_layers = self.depth + 1
        flat_views = self._views(self.flat.detach())
        first_views, second_views = self._views(self.first_moments), self._views(self.second_moments)
        for k, member in enumerate(self.members):
            n_weights = len(member.weights)
            for j, layer in enumerate(self.placements[k]):
                rows, cols = member.weights[j].shape
                weight_region = (k, slice(0, rows), slice(0, cols))
                bias_region = (k, 0, slice(0, cols))
                member.weights[j] = flat_views[layer][weight_region].clone()
                member.biases[j] = flat_views[n_layers + layer][bias_region].clone()
                for index, block, region in ((j, layer, weight_region), (n_weights + j, n_layers + layer, bias_region)):
                    shape = member.first_moments[index].shape
                    member.first_moments[index] = first_views[block][region].reshape(shape).clone()
                    member.second_moments[index] = second_views[block][region].reshape(shape).clone()

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Return the blocks of a flat buffer: the weights of each layer, then the biases."""
        return [flat[start:end].view(shape) for start, end, shape in zip(self.block_starts, self.block_starts[1:], self.block_shapes, strict=False)]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return every member's outputs [K, rows, outputs] for rows shared by all members ([rows, inputs]), without dropout."""
        hidden = x
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            hidden = torch.matmul(hidden, weight) + bias  # [rows, in] @ [K, in, out] -> [K, rows, out]
            if i == self.depth:
                return hidden
            hidden = self._activate(hidden, i)
        return hidden

    def _activate(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        slices = self.activation_slices[layer]
        if len(slices) == 1:
            return _ACTIVATIONS[slices[0][0]](hidden)
        return torch.cat([_ACTIVATIONS[name](hidden[start:end]) for name, start, end in slices])

    def _derivative(self, grad: torch.Tensor, pre: torch.Tensor, out: torch.Tensor, layer: int) -> torch.Tensor:
        slices = self.activation_slices[layer]
        if len(slices) == 1:
            return _activation_derivative(slices[0][0], grad, pre, out)
        return torch.cat([_activation_derivative(name, grad[start:end], pre[start:end], out[start:end]) for name, start, end in slices])

    @torch.no_grad()
    def _step(self) -> None:
        grad = self.grad
        if self.has_l2_decay:
            grad = grad + self.l2_decay * self.flat
        if self.is_sgd:
            # torch.optim.SGD with momentum and no dampening: the buffer starts at zero, so
            # its first value is the gradient itself, as in torch.
            buffer = self.first_moments
            buffer.mul_(self.momentum).add_(grad)
            self.flat.sub_(self.lr * buffer)
            return

        # The update of torch.optim.Adam (L2 decay added to the gradient) and AdamW
        # (decoupled decay), with per-member learning rate, decay and step count.
        self.n_steps += 1
        first_correction = (1 - BETA1**self.n_steps).to(device=self.device, dtype=torch.float32)
        second_correction = torch.sqrt(1 - BETA2**self.n_steps).to(device=self.device, dtype=torch.float32)
        if len(self.members) > 1:
            # Spread each member's correction over its elements; a lone member's broadcasts as it is.
            first_correction, second_correction = first_correction[self.owner], second_correction[self.owner]
        if self.has_decoupled_decay:
            self.flat.mul_(self.decay_factor)
        self.first_moments.lerp_(grad, 1 - BETA1)
        self.second_moments.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
        denominator = (self.second_moments.sqrt() / second_correction).add_(EPS)
        self.flat.sub_(self.lr / first_correction * self.first_moments / denominator)


def _activation_derivative(name: str, grad: torch.Tensor, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return grad if name == "identity" else DERIVATIVES[name](grad, pre, out)


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
