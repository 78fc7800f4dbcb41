"""Packed training: a pack member trains as the same network trained alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from hpo.engine import DeviceData, train
from hpo.metrics import METRICS
from hpo.model import build_mlp
from hpo.objective import architecture
from hpo.pack import Pack, pack_key
from hpo.space import TrialConfig

N_INPUTS, N_CLASSES = 5, 3


def _data(n_rows: int = 240, seed: int = 0, *, regression: bool = False, n_train: int = 180) -> DeviceData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, N_INPUTS)).astype(np.float32)
    if regression:
        target = (x[:, 0] - 2 * x[:, 1]).astype(np.float32)
        return DeviceData.from_arrays(x[:n_train], target[:n_train], x[n_train:], target[n_train:], n_classes=0, device=torch.device("cpu"))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return DeviceData.from_arrays(x[:n_train], y[:n_train], x[n_train:], y[n_train:], n_classes=N_CLASSES, device=torch.device("cpu"))


def _config(**changes: object) -> TrialConfig:
    base = TrialConfig(
        hidden=(16, 8), activation="relu", dropout=0.0, optimizer="adam", lr=1e-2, weight_decay=1e-4,
        batch_size=32, max_epochs=3, patience=10, momentum=0.9,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _model(config: TrialConfig, seed: int, n_outputs: int = N_CLASSES) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return build_mlp(architecture(config, N_INPUTS, n_outputs))


# Two packs: the Adam family (depths 1 to 3, so the shallower members pass through
# identity layers) and SGD (depths 1 and 2). Members with and without dropout mix in both.
MEMBERS = [
    _config(),
    _config(hidden=(4, 12), activation="tanh", optimizer="adamw", lr=3e-3, weight_decay=1e-2, dropout=0.3),
    _config(hidden=(16, 3), activation="gelu", optimizer="sgd", lr=5e-2, weight_decay=0.0, dropout=0.1),
    _config(hidden=(7, 8), activation="silu", optimizer="sgd", lr=2e-2, momentum=0.5, weight_decay=1e-3),
    _config(hidden=(9, 2), activation="leaky_relu", optimizer="adam", lr=1e-3, weight_decay=0.0),
    _config(hidden=(12, 6), class_weight="balanced", optimizer="adamw", dropout=0.5),
    _config(hidden=(10,), activation="tanh", optimizer="adam", lr=5e-3, dropout=0.2),
    _config(hidden=(6, 20, 5), activation="relu", optimizer="adamw", lr=2e-3, weight_decay=1e-3, dropout=0.25),
    _config(hidden=(3,), activation="relu", optimizer="adam", lr=1e-2),
    _config(hidden=(11,), activation="tanh", optimizer="sgd", lr=3e-2),
]


def test_pack_members_match_lone_training() -> None:
    data = _data()
    packs: dict[object, Pack] = {}
    members = []
    for index, config in enumerate(MEMBERS):
        pack = packs.setdefault(pack_key(config), Pack(data, pack_key(config)))
        members.append(pack.add(index, config, 100 + index, _model(config, 100 + index)))
    assert len(packs) == 2
    for _ in range(3):
        for pack in packs.values():
            outcomes = pack.run_epoch()
            assert all(outcome.error is None for outcome in outcomes)
    for member, config in zip(members, MEMBERS, strict=True):
        packs[pack_key(config)].remove(member)

    for index, (member, config) in enumerate(zip(members, MEMBERS, strict=True)):
        lone = _model(config, 100 + index)
        result = train(lone, config, data, seed=100 + index, n_epochs=3)
        lone_linears = [m for m in lone if isinstance(m, torch.nn.Linear)]
        for (weight, bias), linear in zip(member.linear_parameters(), lone_linears, strict=True):
            torch.testing.assert_close(weight, linear.weight.detach(), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(bias, linear.bias.detach(), rtol=1e-4, atol=1e-5)
        assert member.result.train_losses == pytest.approx(result.train_losses, rel=1e-4)
        assert member.result.val_scores == pytest.approx(result.val_scores, abs=1e-6)


def test_pack_members_joining_and_leaving_match_lone_training() -> None:
    data = _data()
    pack = Pack(data, pack_key(MEMBERS[0]))
    first = pack.add(0, MEMBERS[0], 100, _model(MEMBERS[0], 100))
    second = pack.add(1, MEMBERS[1], 101, _model(MEMBERS[1], 101))
    pack.run_epoch()
    # The third member is deeper than the others, so they gain identity layers mid-training.
    third = pack.add(7, MEMBERS[7], 107, _model(MEMBERS[7], 107))
    pack.run_epoch()
    pack.remove(first)
    pack.run_epoch()
    pack.remove(second)
    pack.remove(third)

    for member, index, n_epochs in ((first, 0, 2), (second, 1, 3), (third, 7, 2)):
        assert member.epoch == n_epochs
        lone = _model(MEMBERS[index], 100 + index)
        train(lone, MEMBERS[index], data, seed=100 + index, n_epochs=n_epochs)
        lone_linears = [m for m in lone if isinstance(m, torch.nn.Linear)]
        for (weight, _), linear in zip(member.linear_parameters(), lone_linears, strict=True):
            torch.testing.assert_close(weight, linear.weight.detach(), rtol=1e-4, atol=1e-5)


def test_pack_regression_members_match_lone_training() -> None:
    data = _data(regression=True)
    configs = [_config(optimizer="adam"), _config(hidden=(5,), optimizer="adamw", lr=1e-2)]
    pack = Pack(data, pack_key(configs[0]), metric=METRICS["rmse"])
    members = [pack.add(index, config, 100 + index, _model(config, 100 + index, 1)) for index, config in enumerate(configs)]
    for _ in range(2):
        pack.run_epoch()
    for member in members:
        pack.remove(member)

    for index, (member, config) in enumerate(zip(members, configs, strict=True)):
        lone = _model(config, 100 + index, 1)
        result = train(lone, config, data, seed=100 + index, n_epochs=2, metric=METRICS["rmse"])
        lone_linears = [m for m in lone if isinstance(m, torch.nn.Linear)]
        for (weight, _), linear in zip(member.linear_parameters(), lone_linears, strict=True):
            torch.testing.assert_close(weight, linear.weight.detach(), rtol=1e-4, atol=1e-5)
        assert member.result.val_scores == pytest.approx(result.val_scores, rel=1e-4)


@pytest.mark.parametrize("changes", [{"batch_size": 64}, {"optimizer": "sgd"}])
def test_pack_add_other_key_raises(changes: dict) -> None:
    pack = Pack(_data(), pack_key(MEMBERS[0]))
    config = _config(**changes)

    with pytest.raises(ValueError, match="cannot join"):
        pack.add(0, config, 0, _model(config, 0))


def test_pack_non_finite_member_reports_error() -> None:
    data = _data()
    pack = Pack(data, pack_key(MEMBERS[0]))
    healthy = pack.add(0, MEMBERS[0], 100, _model(MEMBERS[0], 100))
    broken = pack.add(1, _config(lr=1e30), 101, _model(MEMBERS[0], 101))

    outcomes = {outcome.member.tag: outcome for outcome in pack.run_epoch()}

    assert outcomes[healthy.tag].error is None
    assert outcomes[broken.tag].error is not None
    assert outcomes[broken.tag].error.epoch == 0


def test_pack_adam_l2_decay_matches_lone() -> None:
    # Adam with L2 decay moves a weight with almost no gradient by about lr per step, so a
    # small rounding difference in the bias corrections grows over a few hundred steps.
    data = _data(n_rows=2100, n_train=2000)
    config = _config(hidden=(64, 32), lr=3e-3, weight_decay=1e-5, batch_size=128)
    pack = Pack(data, pack_key(config))
    member = pack.add(0, config, 5, _model(config, 5))
    for _ in range(3):
        pack.run_epoch()
    pack.remove(member)

    lone = _model(config, 5)
    train(lone, config, data, seed=5, n_epochs=3)
    lone_linears = [m for m in lone if isinstance(m, torch.nn.Linear)]
    for (weight, _), linear in zip(member.linear_parameters(), lone_linears, strict=True):
        assert (weight - linear.weight.detach()).abs().max().item() < 2e-6
