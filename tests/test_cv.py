"""Cross-validation of trials: folds, fold-by-fold pruning, and the study path through finalize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

import hpo
from hpo.cv import CrossValidationObjective, fold_data, make_folds
from hpo.data import SplitSpec, load_table, split_rows
from hpo.exceptions import InputError
from hpo.metrics import METRICS
from hpo.objective import REASON_ATTR
from hpo.space import SearchSpace
from hpo.study import build_pruner


def test_make_folds_cover_train_and_validation_only() -> None:
    table = load_table("wine")
    split = split_rows(table, SplitSpec(seed=0))

    folds = make_folds(table, split, 4, seed=0)

    held_out = np.concatenate([rows for _, rows in folds])
    assert len(folds) == 4
    assert np.array_equal(np.sort(held_out), np.sort(np.concatenate([split.train, split.validation])))
    assert not set(held_out) & set(split.test)
    for fit, rows in folds:
        assert not set(fit) & set(rows)
        assert set(table.frame[table.target].iloc[rows]) == set(table.classes)


def test_make_folds_out_of_range_raises() -> None:
    table = load_table("iris")
    split = split_rows(table, SplitSpec(seed=0))

    with pytest.raises(InputError, match="--cv must be in 2..20"):
        make_folds(table, split, 50, seed=0)


def test_cv_wilcoxon_prunes_worse_trial() -> None:
    table = load_table("wine")
    split = split_rows(table, SplitSpec(seed=0))
    folds = fold_data(table, split, 5, seed=0, device=torch.device("cpu"))
    space = SearchSpace.from_dict({
        "n_layers": 1, "n_units": 16, "activation": "relu", "dropout": 0.0, "weight_decay": 0,
        "batch_size": 16, "class_weight": "none", "lr": [1e-6, 0.1], "optimizer": ["adam", "sgd"], "max_epochs": 8,
    })
    objective = CrossValidationObjective(space, folds, seed=0, metric=METRICS["accuracy"])
    study = optuna.create_study(direction="maximize", pruner=build_pruner("wilcoxon", 8, n_folds=5))
    study.enqueue_trial({"lr": 0.02, "optimizer": "adam"})
    study.enqueue_trial({"lr": 1e-6, "optimizer": "sgd"})

    study.optimize(objective, n_trials=2)

    good, bad = study.trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert len(good.user_attrs["fold_scores"]) == 5
    assert good.value == pytest.approx(np.mean(list(good.user_attrs["fold_scores"].values())))
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert bad.user_attrs[REASON_ATTR].startswith("pruned after 4 of 5 folds")


def test_optimize_cv_study_finalizes(tmp_path: Path) -> None:
    study = hpo.optimize("iris", n_trials=2, cv=3, device="cpu", space={"max_epochs": 4, "n_layers": 1, "batch_size": 32})

    settings = study.user_attrs["hpo_settings"]
    assert settings["cv"] == 3
    assert settings["pruner"] == "wilcoxon"
    assert isinstance(study.pruner, optuna.pruners.WilcoxonPruner)
    trial = study.best_trial
    assert len(trial.user_attrs["fold_best_epochs"]) == 3
    assert trial.user_attrs["best_epoch"] in trial.user_attrs["fold_best_epochs"]
    result = hpo.finalize(study.study_name, tmp_path / "model", device="cpu")
    assert result.trial_number == trial.number


def test_optimize_wilcoxon_without_cv_raises() -> None:
    with pytest.raises(InputError, match="needs --cv K"):
        hpo.optimize("iris", n_trials=1, pruner="wilcoxon", device="cpu")


def test_optimize_cv_rare_category_per_fold_width(tmp_path: Path) -> None:
    generator = np.random.default_rng(0)
    n_rows = 120
    colour = np.array(["red", "blue"] * (n_rows // 2), dtype=object)
    colour[3] = "green"  # one row: absent from the training rows of every fold but one
    frame = pd.DataFrame({"x": generator.normal(size=n_rows), "colour": colour, "label": ["a", "b", "c"] * (n_rows // 3)})
    frame.to_csv(tmp_path / "rare.csv", index=False)

    study = hpo.optimize(str(tmp_path / "rare.csv"), "label", n_trials=1, cv=3, device="cpu", space={"max_epochs": 2, "n_layers": 1})

    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
