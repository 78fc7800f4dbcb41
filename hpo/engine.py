"""Train and evaluate one network on tensors that stay on one device.

The engine does not import Optuna: callers pass a callback that runs after every epoch
and may raise (for instance ``optuna.TrialPruned``) to stop training.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from hpo.backprop import Backprop
from hpo.dropout import start_dropout
from hpo.metrics import CLASSIFICATION, METRICS, REGRESSION, Metric, compute_metric
from hpo.space import TrialConfig

_logger = logging.getLogger(__name__)

EpochCallback = Callable[["EpochStats"], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"non-finite loss at epoch {epoch}")
        self.epoch = epoch


@dataclass(frozen=True)
class DeviceData:
    """Feature matrices (float32) and targets resident on one device.

    Targets are class indices (int64) for classification and standardized values
    (float32) for regression, where ``y_scale`` is the standard deviation they were
    divided by. The validation part is absent when training a final model on
    train+validation.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    n_classes: int
    y_scale: float = 1.0

    @property
    def device(self) -> torch.device:
        """Device of the tensors."""
        return self.x_train.device

    @property
    def task(self) -> str:
        """``regression`` for float targets, else ``classification``."""
        return REGRESSION if self.y_train.is_floating_point() else CLASSIFICATION

    @property
    def n_outputs(self) -> int:
        """Width of the network's output layer: one per class, or one value."""
        return 1 if self.task == REGRESSION else self.n_classes

    @classmethod
    def from_arrays(
        cls,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray | None,
        y_val: np.ndarray | None,
        *,
        n_classes: int,
        device: torch.device,
        y_scale: float = 1.0,
    ) -> DeviceData:
        """Copy numpy arrays to ``device`` once, so no batch is copied during training.

        Float target arrays make a regression data set, integer ones a classification set.
        """

        def put(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(array, dtype=dtype).to(device)

        y_dtype = torch.float32 if np.issubdtype(y_train.dtype, np.floating) else torch.int64
        return cls(
            x_train=put(x_train, torch.float32),
            y_train=put(y_train, y_dtype),
            x_val=None if x_val is None else put(x_val, torch.float32),
            y_val=None if y_val is None else put(y_val, y_dtype),
            n_classes=n_classes,
            y_scale=y_scale,
        )


@dataclass(frozen=True)
class EpochStats:
    """Losses and validation score of one epoch. ``epoch`` counts from 0 and is the pruning step.

    ``val_score`` is the validation value of the metric that ``train`` was given.
    """

    epoch: int
    train_loss: float
    val_score: float | None
    val_loss: float | None


@dataclass
class TrainResult:
    """Learning curves and the best validation epoch of one training run."""

    train_losses: list[float] = field(default_factory=list)
    val_scores: list[float] = field(default_factory=list)
    best_score: float | None = None
    best_epoch: int | None = None
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        """Number of epochs trained."""
        return len(self.train_losses)


def train(
    model: nn.Module,
    config: TrialConfig,
    data: DeviceData,
    *,
    seed: int,
    n_epochs: int | None = None,
    on_epoch: EpochCallback | None = None,
    metric: Metric = METRICS["accuracy"],
) -> TrainResult:
    """Train ``model`` with mini-batches drawn by a seeded permutation of row indices.

    Args:
        model: The network, already on ``data.device``.
        config: Optimizer, learning rate, batch size, epoch budget and patience.
        data: Tensors on the device. Without a validation part, no early stopping happens.
        seed: Seed of the batch order and of the dropout masks (weights are initialized by the caller).
        n_epochs: Exact number of epochs, overriding ``config.max_epochs`` and patience.
        on_epoch: Called after each epoch; an exception it raises ends training.
        metric: Validation metric that picks the best epoch and drives early stopping.

    Returns:
        The learning curves, the best validation score and its epoch.

    Raises:
        NonFiniteLossError: When an epoch's mean training loss is NaN or infinite.
    """
    started = time.perf_counter()
    loss_fn = make_loss(config, data)
    backprop = Backprop(model, config, regression=data.task == REGRESSION, class_weights=getattr(loss_fn, "weight", None))
    # The permutation is drawn on the CPU, so the batch order is the same on every device.
    generator = torch.Generator().manual_seed(seed)
    start_dropout(model, seed)
    n_rows = data.x_train.shape[0]
    budget = n_epochs if n_epochs is not None else config.max_epochs
    result = TrainResult()
    try:
        for epoch in range(budget):
            model.train()
            order = torch.randperm(n_rows, generator=generator).to(data.device)
            total_loss = torch.zeros((), device=data.device)
            for start in range(0, n_rows, config.batch_size):
                index = order[start : start + config.batch_size]
                loss = backprop.step(data.x_train[index], data.y_train[index])
                total_loss += loss * index.numel()

            # One host sync per epoch: the loss stays on the device until here.
            train_loss = float(total_loss) / n_rows
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(epoch)
            result.train_losses.append(train_loss)

            score, val_loss = (None, None)
            if data.x_val is not None:
                score, val_loss = evaluate(model, data.x_val, data.y_val, metric=metric, y_scale=data.y_scale)
            if score is not None:
                result.val_scores.append(score)
                if metric.is_better(score, result.best_score):
                    result.best_score, result.best_epoch = score, epoch
            _logger.debug("epoch %d: train_loss=%.5f val_%s=%s", epoch, train_loss, metric.name, score)

            result.seconds = time.perf_counter() - started
            if on_epoch is not None:
                on_epoch(EpochStats(epoch=epoch, train_loss=train_loss, val_score=score, val_loss=val_loss))
            if n_epochs is None and result.best_epoch is not None and epoch - result.best_epoch >= config.patience:
                _logger.debug("Stopping early at epoch %d: no better validation %s for %d epochs.", epoch, metric.name, config.patience)
                break
    finally:
        backprop.finish()

    result.seconds = time.perf_counter() - started
    return result


def predict_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the network in evaluation mode in one pass, without autograd."""
    model.eval()
    with torch.inference_mode():
        return model(x)


def make_loss(config: TrialConfig, data: DeviceData) -> nn.Module:
    """Return the training loss: mean squared error for regression, else cross-entropy.

    With ``config.class_weight == "balanced"`` each class's rows weigh
    ``n_rows / (n_classes * n_rows_of_class)``, so every class adds the same total
    weight to the loss.
    """
    if data.task == REGRESSION:
        return _SquaredError()
    if config.class_weight != "balanced":
        return nn.CrossEntropyLoss()
    counts = torch.bincount(data.y_train, minlength=data.n_classes).float()
    weights = len(data.y_train) / (data.n_classes * counts.clamp_min(1.0))
    return nn.CrossEntropyLoss(weight=weights)


def evaluate(
    model: nn.Module,
    x: torch.Tensor | None,
    y: torch.Tensor | None,
    *,
    metric: Metric = METRICS["accuracy"],
    y_scale: float = 1.0,
) -> tuple[float, float]:
    """Return ``metric`` and the unweighted training loss of ``model`` on ``x``, ``y``.

    The loss is cross-entropy for classification and mean squared error of the
    standardized targets for regression.
    """
    if x is None or y is None:
        raise ValueError("evaluate needs both features and labels")
    outputs = predict_logits(model, x)
    if y.is_floating_point():
        loss = nn.functional.mse_loss(outputs.reshape(-1), y)
    else:
        loss = nn.functional.cross_entropy(outputs, y)
    return compute_metric(metric.name, outputs, y, y_scale=y_scale), float(loss)


class _SquaredError(nn.Module):
    """Mean squared error of a (rows, 1) output against a (rows,) target."""

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(outputs.reshape(-1), target)
