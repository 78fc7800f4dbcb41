"""Search-space defaults, overrides, validation, and what the sampler sees."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.search_space import intersection_search_space

from hpo.exceptions import InputError
from hpo.space import SearchSpace, load_space_file, parse_override, suggest_config


def test_search_space_defaults_match_documented_ranges() -> None:
    space = SearchSpace()

    assert space.n_layers == [1, 3]
    assert space.n_units == [8, 128]
    assert space.batch_size == [128, 256, 512, 1024]
    assert space.lr == [1e-4, 3e-2]
    assert space.dropout == [0.0, 0.5]
    assert set(space.activation) == {"relu", "tanh", "gelu", "silu", "leaky_relu"}
    assert set(space.optimizer) == {"adam", "adamw"}
    assert set(space.class_weight) == {"none", "balanced"}


@pytest.mark.parametrize(
    ("metric", "given", "expected"),
    [
        ("accuracy", False, "none"),
        ("log_loss", False, "none"),
        ("balanced_accuracy", False, ["none", "balanced"]),
        ("f1_macro", False, ["none", "balanced"]),
        ("accuracy", True, ["none", "balanced"]),
    ],
)
def test_class_weight_default_by_metric(metric: str, given: bool, expected: object) -> None:
    assert SearchSpace().for_metric(metric, class_weight_given=given).class_weight == expected


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ({"n_layers": [4, 2]}, "n_layers has low 4 above high 2"),
        ({"lr": [0.0, 0.1]}, "lr is searched on a log scale"),
        ({"activation": ["relu", "swish"]}, "unknown activation 'swish'"),
        ({"batch_size": [0, 64]}, "batch_size values must be positive"),
        ({"max_epochs": 0}, "max_epochs must be an integer >= 1"),
        ({"n_units": [8, 100_000]}, "n_units must lie within"),
        ({"dropout": "high"}, "dropout must be one value or a"),
    ],
)
def test_search_space_invalid_value_raises(values: dict, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        SearchSpace.from_dict(values)


def test_search_space_reports_all_errors_at_once() -> None:
    with pytest.raises(InputError) as info:
        SearchSpace.from_dict({"n_layers": [4, 2], "lr": [0.0, 0.1]})

    assert "n_layers" in str(info.value)
    assert "lr" in str(info.value)


def test_search_space_unknown_key_raises() -> None:
    with pytest.raises(InputError, match="unknown key\\(s\\) layers in cfg.toml; known keys are: .*n_layers"):
        SearchSpace.from_dict({"layers": [1, 2]}, origin="cfg.toml")


def test_load_space_file_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text('[space]\nn_layers = [1, 2]\nactivation = "relu"\n')

    document = load_space_file(path)
    space = SearchSpace.from_dict(document["space"])

    assert space.n_layers == [1, 2]
    assert space.activation == "relu"


def test_load_space_file_invalid_toml_raises(tmp_path: Path) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text("[space\n")

    with pytest.raises(InputError, match="is not valid TOML"):
        load_space_file(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n_layers=[1,3]", ("n_layers", [1, 3])),
        ("activation=relu", ("activation", "relu")),
        ('activation="gelu"', ("activation", "gelu")),
        ("max_epochs=50", ("max_epochs", 50)),
    ],
)
def test_parse_override_reads_toml_values(text: str, expected: tuple) -> None:
    assert parse_override(text) == expected


def test_suggest_config_fixed_values_are_not_suggested() -> None:
    space = SearchSpace.from_dict({"n_layers": 2, "activation": "tanh", "batch_size": 128, "lr": 0.01})
    study = optuna.create_study()

    trial = study.ask()
    config = suggest_config(trial, space)

    assert len(config.hidden) == 2
    assert config.activation == "tanh"
    assert config.batch_size == 128
    assert config.lr == 0.01
    assert "activation" not in trial.params
    assert "lr" not in trial.params
    assert set(trial.params) == {"n_units_l0", "n_units_l1", "dropout", "optimizer", "weight_decay", "class_weight"}


def test_suggest_config_depth_uses_first_widths() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        trial = study.ask()
        config = suggest_config(trial, SearchSpace())
        n_layers = trial.params["n_layers"]
        assert config.hidden == tuple(trial.params[f"n_units_l{i}"] for i in range(n_layers))
        study.tell(trial, 0.0)


def test_suggest_config_sampler_sees_every_parameter_jointly() -> None:
    # Multivariate TPE samples jointly only the parameters present in every trial, so
    # trials of different depth must still share all width parameters.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    depths = set()
    for _ in range(12):
        trial = study.ask()
        config = suggest_config(trial, SearchSpace())
        depths.add(len(config.hidden))
        study.tell(trial, float(len(config.hidden)))

    shared = intersection_search_space(study.get_trials(deepcopy=False))

    assert len(depths) > 1
    assert {f"n_units_l{i}" for i in range(SearchSpace().max_layers)} <= set(shared)
    assert {"n_layers", "lr", "batch_size", "activation", "optimizer", "dropout", "weight_decay"} <= set(shared)


def test_suggest_config_tpe_samples_widths_relatively() -> None:
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=3)
    study = optuna.create_study(sampler=sampler)
    space = SearchSpace()
    for _ in range(4):
        trial = study.ask()
        suggest_config(trial, space)
        study.tell(trial, 0.5)

    trial = study.ask()
    suggest_config(trial, space)

    # relative_params are the ones the multivariate model drew jointly.
    assert {f"n_units_l{i}" for i in range(SearchSpace().max_layers)} <= set(trial.relative_params)
