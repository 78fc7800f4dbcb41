"""K-fold cross-validation of each trial on train+validation, reported fold by fold for pruning.

The test part stays untouched. Each fold refits preprocessing on its own training rows.
A trial reports its best validation score of fold ``k`` as step ``k``, in a per-trial
shuffled fold order. Optuna's ``WilcoxonPruner`` compares trials in that form, step by
step. The trial's value is the mean over folds.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

import numpy as np
import optuna
import torch
from sklearn.model_selection import KFold, StratifiedKFold

from hpo.budget import Budget
from hpo.data import SplitIndices, Table
from hpo.engine import DeviceData, train
from hpo.exceptions import InputError
from hpo.metrics import REGRESSION, Metric
from hpo.model import build_mlp
from hpo.objective import Objective
from hpo.prepare import prepare_rows
from hpo.space import SearchSpace, TrialConfig

_logger = logging.getLogger(__name__)

MAX_FOLDS = 20


def make_folds(table: Table, split: SplitIndices, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split train+validation rows into ``n_folds`` (training rows, validation rows) pairs.

    Classification folds are stratified by class; regression folds are random.

    Raises:
        InputError: For ``n_folds`` outside 2..``MAX_FOLDS``, or a class with fewer rows
            than folds.
    """
    if not 2 <= n_folds <= MAX_FOLDS:
        raise InputError(f"--cv must be in 2..{MAX_FOLDS}; got {n_folds}.")
    rows = np.sort(np.concatenate([split.train, split.validation]))
    labels = table.frame[table.target].to_numpy()[rows]
    if table.task == REGRESSION:
        splitter: KFold | StratifiedKFold = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
        return [(rows[fit], rows[held_out]) for fit, held_out in splitter.split(rows)]

    values, counts = np.unique(labels.astype(str), return_counts=True)
    short = [f"{value!r} ({count} rows)" for value, count in zip(values, counts) if count < n_folds]
    if short:
        raise InputError(
            f"class {', '.join(short)} of target {table.target!r} has fewer train+validation rows than --cv {n_folds} folds; "
            "lower --cv or merge rare classes."
        )
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(rows[fit], rows[held_out]) for fit, held_out in splitter.split(rows, labels.astype(str))]


def fold_data(table: Table, split: SplitIndices, n_folds: int, seed: int, device: torch.device) -> list[DeviceData]:
    """Prepare every fold (preprocessing fitted on the fold's training rows) on ``device``."""
    folds = []
    for fit_rows, held_out in make_folds(table, split, n_folds, seed):
        prepared = prepare_rows(table, split, fit_rows, held_out)
        folds.append(DeviceData.from_arrays(
            prepared.x_train, prepared.y_train, prepared.x_val, prepared.y_val,
            n_classes=prepared.n_classes, device=device, y_scale=prepared.target_std,
        ))
    return folds


class CrossValidationObjective(Objective):
    """Train one network per fold and return the mean of the folds' best validation scores.

    Besides the attributes of ``Objective``, a trial stores ``fold_scores`` (best score
    of each fold, by fold index) and ``fold_best_epochs``. Its ``best_epoch`` is the
    median of the folds' best epochs, and the finalizer trains that many epochs plus one.
    ``train_loss`` and ``epochs_run`` cover the folds one after another.
    """

    def __init__(self, space: SearchSpace, folds: list[DeviceData], *, seed: int, metric: Metric, budget: Budget | None = None) -> None:
        super().__init__(space, folds[0], seed=seed, metric=metric, budget=budget)
        self.folds = folds

    def run_trial(self, trial: optuna.Trial, config: TrialConfig, arch: dict[str, Any], seed: int, curve: list[float]) -> float:
        order = np.random.default_rng(seed).permutation(len(self.folds))
        scores: dict[int, float] = {}
        best_epochs: dict[int, int] = {}
        seconds = 0.0
        for fold in (int(k) for k in order):
            # Folds fit their own one-hot categories, so the input width can differ by fold.
            fold_arch = {**arch, "n_inputs": int(self.folds[fold].x_train.shape[1])}
            torch.manual_seed(seed)
            model = build_mlp(fold_arch).to(self.data.device)
            result = train(model, config, self.folds[fold], seed=seed, metric=self.metric)
            del model
            assert result.best_score is not None and result.best_epoch is not None
            curve.extend(round(loss, 6) for loss in result.train_losses)
            scores[fold], best_epochs[fold] = result.best_score, result.best_epoch
            seconds += result.seconds

            trial.set_user_attr("fold_scores", {str(k): v for k, v in sorted(scores.items())})
            trial.report(result.best_score, fold)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned after {len(scores)} of {len(self.folds)} folds with mean validation "
                    f"{self.metric.name} {statistics.fmean(scores.values()):.4f}"
                )

        self._finish_attrs(trial, curve)
        trial.set_user_attr("fold_best_epochs", [best_epochs[k] for k in sorted(best_epochs)])
        trial.set_user_attr("best_epoch", int(statistics.median_low(best_epochs.values())))
        trial.set_user_attr("train_seconds", round(seconds, 3))
        return statistics.fmean(scores.values())
