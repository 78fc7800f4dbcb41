"""Build the MLP (an ``nn.Sequential``) from a plain architecture description.

This module imports torch only, so a deployed model needs nothing from training or Optuna.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hpo.dropout import Dropout

ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def build_mlp(architecture: dict[str, Any]) -> nn.Sequential:
    """Build ``Linear -> activation -> Dropout`` blocks and a final ``Linear``.

    Args:
        architecture: ``n_inputs`` (int >= 1), ``hidden`` (list of layer widths, may be
            empty), ``activation`` (a key of ``ACTIVATION_LAYERS``), ``dropout`` (0 <= p < 1;
            no Dropout module when 0) and ``n_outputs`` (int >= 1, one logit per class).

    Returns:
        The network, in training mode, with PyTorch's default initialization.

    Raises:
        ValueError: When a field is out of range or the activation is unknown.
    """
    n_inputs = int(architecture["n_inputs"])
    n_outputs = int(architecture["n_outputs"])
    hidden = [int(width) for width in architecture["hidden"]]
    activation = str(architecture["activation"])
    dropout = float(architecture["dropout"])
    if n_inputs < 1 or n_outputs < 1 or any(width < 1 for width in hidden):
        raise ValueError(f"layer widths must be >= 1; got n_inputs={n_inputs}, hidden={hidden}, n_outputs={n_outputs}")
    if activation not in ACTIVATION_LAYERS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATION_LAYERS)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout}")

    layers: list[nn.Module] = []
    width_in = n_inputs
    for width in hidden:
        layers.append(nn.Linear(width_in, width))
        layers.append(ACTIVATION_LAYERS[activation]())
        if dropout > 0.0:
            layers.append(Dropout(dropout))
        width_in = width
    layers.append(nn.Linear(width_in, n_outputs))
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
