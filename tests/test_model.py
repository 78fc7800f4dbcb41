"""Building the MLP from an architecture description."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpo.dropout import Dropout
from hpo.model import build_mlp, count_parameters


def _arch(**changes: object) -> dict:
    return {"n_inputs": 7, "hidden": [16, 8], "activation": "gelu", "dropout": 0.1, "n_outputs": 2, **changes}


def test_build_mlp_layers_in_order() -> None:
    model = build_mlp(_arch())

    kinds = [type(layer) for layer in model]
    # hpo's Dropout is an nn.Dropout with hashed masks (hpo.dropout).
    assert kinds == [nn.Linear, nn.GELU, Dropout, nn.Linear, nn.GELU, Dropout, nn.Linear]
    assert all(isinstance(layer, nn.Dropout) for layer in model if isinstance(layer, Dropout))
    assert model(torch.zeros(3, 7)).shape == (3, 2)


def test_build_mlp_zero_dropout_has_no_dropout_layer() -> None:
    model = build_mlp(_arch(dropout=0.0))

    assert not any(isinstance(layer, nn.Dropout) for layer in model)


def test_build_mlp_no_hidden_layer_is_linear() -> None:
    model = build_mlp(_arch(hidden=[]))

    assert len(model) == 1
    assert count_parameters(model) == 7 * 2 + 2


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"hidden": [16, 0]}, "layer widths must be >= 1"),
        ({"activation": "swish"}, "unknown activation 'swish'"),
        ({"dropout": 1.0}, "dropout must be in"),
    ],
)
def test_build_mlp_invalid_architecture_raises(changes: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        build_mlp(_arch(**changes))


def test_count_parameters_matches_layer_sizes() -> None:
    model = build_mlp(_arch())

    assert count_parameters(model) == (7 * 16 + 16) + (16 * 8 + 8) + (8 * 2 + 2)
