"""Start a new study from an old one: pick a free name and enqueue the old study's best trials."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.exceptions import StudyError
from hpo.space import SearchSpace, suggest_config

_logger = logging.getLogger(__name__)

# Best trials of the old study that the new one runs first.
N_WARM_START_TRIALS = 5
WARM_START_ATTR = "warm_start_from"
_MAX_SUFFIX = 999


def next_study_name(name: str, exists: Callable[[str], bool]) -> str:
    """Return ``name-2``, ``name-3``, ... : the first name for which ``exists`` is false.

    Raises:
        StudyError: When every suffix up to 999 is taken.
    """
    base = name
    for suffix in range(2, _MAX_SUFFIX + 1):
        candidate = f"{base}-{suffix}"
        if not exists(candidate):
            return candidate
    raise StudyError(f"studies {name}-2 to {name}-{_MAX_SUFFIX} all exist; pass a new --study name.")


def enqueue_best_trials(old: optuna.Study, new: optuna.Study, space: SearchSpace, *, n_trials: int = N_WARM_START_TRIALS) -> int:
    """Enqueue the parameters of ``old``'s best finite COMPLETE trials on ``new``; return how many.

    A parameter whose value lies outside ``space`` (a narrowed range, a dropped choice) is
    left out, so the new study's sampler picks it; Optuna would otherwise use the old value
    as given, outside the new space.
    """
    distributions = space_distributions(space)
    maximize = old.direction == optuna.study.StudyDirection.MAXIMIZE
    candidates = [
        t for t in old.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    candidates.sort(key=lambda t: (-t.value if maximize else t.value, t.number))  # type: ignore[operator]

    for trial in candidates[:n_trials]:
        params = {name: value for name, value in trial.params.items() if name in distributions and contains(distributions[name], value)}
        new.enqueue_trial(params, user_attrs={WARM_START_ATTR: f"{old.study_name}#{trial.number}"})
    count = min(len(candidates), n_trials)
    _logger.info("Enqueued the %d best trials of study %r on study %r.", count, old.study_name, new.study_name)
    return count


def space_distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """Return the Optuna distribution of every searched parameter of ``space``."""
    # suggest_config asks for the same parameters in every trial, so one trial shows them all.
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = probe.ask()
    suggest_config(trial, space)
    return dict(trial.distributions)


def contains(distribution: BaseDistribution, value: Any) -> bool:
    """Return whether ``distribution`` can suggest ``value``."""
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    if isinstance(distribution, (IntDistribution, FloatDistribution)):
        if not isinstance(value, (int, float)) or not distribution.low <= value <= distribution.high:
            return False
        if distribution.step is None:
            return True
        steps = (value - distribution.low) / distribution.step
        return math.isclose(steps, round(steps))
    return False
