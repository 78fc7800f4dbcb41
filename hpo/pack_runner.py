"""Run a worker's trials in packs, taking a new trial whenever a member leaves (continuous batching).

Up to ``pack_size`` trials train at once. Trials are taken from the study's queue (see
``hpo.trial_loop.HeldTrials``) and finished with ``study.tell``. A new trial joins the
pack of running trials with its batch size and optimizer family, or starts a new pack
when none runs. Each round trains every pack for one epoch, reports each member's
validation score, prunes or finishes members, and fills the freed places with new trials.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import optuna
import torch
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from hpo.budget import Budget, apply_budget
from hpo.device import describe_device, free_device_memory
from hpo.engine import DeviceData
from hpo.metrics import METRICS, Metric
from hpo.model import build_mlp, count_parameters
from hpo.objective import (
    REASON_ATTR,
    architecture,
    failure_reason,
    pruned_reason,
    set_curve_attrs,
    set_result_attrs,
    set_start_attrs,
    trial_seed,
)
from hpo.pack import Pack, PackEpoch, PackKey, PackMember, pack_key
from hpo.reporting import TrialReporter, batched_params
from hpo.space import SearchSpace, suggest_config
from hpo.trial_loop import HeldTrials, LoopStats

_logger = logging.getLogger(__name__)

TrialCallback = Callable[[optuna.Study, FrozenTrial], None]

# Pack sizes chosen when the user does not set one. On 2 CPU cores, a pack of 8 trained
# 3.3x the network-epochs per second of one network at batch 128 and 2.0x at batch 2048
# (scripts/benchmark.py, docs/benchmark.md); larger packs mean fewer sampler updates.
_AUTO_PACK_CPU = 8
# NOTE: an estimate until scripts/gpu_check.py has measured packs on a GPU.
_AUTO_PACK_GPU = 32
# Below this many training rows an epoch has fewer steps, so per-step overhead weighs
# more and a larger pack pays more (an estimate, not measured).
_SMALL_DATA_ROWS = 20_000
# Seconds between reads of an empty queue while other workers' trials may still be queued again.
_EMPTY_QUEUE_WAIT_S = 1.0


def choose_pack_size(n_rows: int, device: torch.device, *, n_trials: int | None = None) -> int:
    """Return a pack size for ``n_rows`` training rows on ``device``, at most ``n_trials``.

    Args:
        n_rows: Training rows.
        device: Where training runs.
        n_trials: The trial budget of this call, when there is one.
    """
    size = _AUTO_PACK_GPU if device.type == "cuda" else _AUTO_PACK_CPU
    if n_rows < _SMALL_DATA_ROWS:
        size *= 2
    if n_trials is not None:
        size = min(size, n_trials)
    return max(1, size)


def run_packed(
    study: optuna.Study,
    backend: RDBStorage,
    space: SearchSpace,
    data: DeviceData,
    *,
    seed: int,
    metric: Metric = METRICS["accuracy"],
    budget: Budget | None = None,
    pack_size: int,
    callbacks: Sequence[TrialCallback] = (),
) -> LoopStats:
    """Run the queued trials of ``study`` with up to ``pack_size`` of them training at once.

    Trials come from the queue of the run plan (``hpo.run_plan.start_run``), as in
    ``hpo.trial_loop.run_trials``, so the count stays exact across workers, each trial has
    a heartbeat, and an interrupt marks every running trial failed and queues it again.
    Each trial stores the same user attributes as a trial run by ``hpo.objective.Objective``,
    and a trial that raises while it starts fails alone.

    Args:
        study: The study, with a stored run plan.
        backend: Its RDB storage.
        space: The search space.
        data: Training and validation tensors on the device.
        seed: The study seed, from which each trial's seed is derived.
        metric: The validation metric each trial reports and returns.
        budget: Parameter and latency limits; a trial over them is pruned before it joins a pack.
        pack_size: Most trials training at once (>= 1).
        callbacks: Called with the study and each finished trial, as in ``study.optimize``.

    Returns:
        The trials this worker ended, by outcome.

    Raises:
        StudyError: When the study has no run plan, or trials failed too often in a row.
        KeyboardInterrupt: On SIGINT or SIGTERM (inside ``hpo.trial_loop.interrupt_handlers``),
            after the running trials were marked failed and queued again.
    """
    if pack_size < 1:
        raise ValueError(f"pack_size must be >= 1; got {pack_size}")
    n_ended_before = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    with HeldTrials(study, backend, callbacks=callbacks) as held_trials:
        runner = _PackRunner(study, space, data, seed=seed, metric=metric, budget=budget, held_trials=held_trials)

        def capacity() -> int:
            # Slow start: one more place per ended trial, up to pack_size. The pruner compares a
            # trial with ended ones only, so 8 trials started at once on a new study all ran to
            # the end, and a 20-trial search became slower than one trial at a time.
            n_ended = n_ended_before + held_trials.stats.n_complete + held_trials.stats.n_pruned
            return min(pack_size, 1 + n_ended)

        next_take = 0.0
        while True:
            # While the packs train, the queue is read again only after a second has passed.
            if runner.n_running == 0 or time.monotonic() >= next_take:
                while runner.n_running < capacity() and (trial := held_trials.take()) is not None:
                    runner.start_trial(trial)
                next_take = time.monotonic() + _EMPTY_QUEUE_WAIT_S
            if runner.n_running > 0:
                runner.run_round()
            elif held_trials.should_wait():
                time.sleep(_EMPTY_QUEUE_WAIT_S)
            else:
                break
    return held_trials.stats


class _PackRunner:
    """The packs of one worker and the bookkeeping between them and the study."""

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        data: DeviceData,
        *,
        seed: int,
        metric: Metric,
        budget: Budget | None,
        held_trials: HeldTrials,
    ) -> None:
        self.study = study
        self.space = space
        self.data = data
        self.seed = seed
        self.metric = metric
        self.budget = budget
        self.held_trials = held_trials
        self.reporter = TrialReporter(study)
        self.device_name = describe_device(data.device)
        self.packs: dict[PackKey, Pack] = {}
        self.curves: dict[int, list[float]] = {}

    @property
    def n_running(self) -> int:
        return sum(len(pack) for pack in self.packs.values())

    def start_trial(self, trial: optuna.Trial) -> None:
        """Suggest the trial's configuration and add its network to the pack of its key."""
        try:
            with batched_params(trial):
                config = suggest_config(trial, self.space, task=self.data.task)
            seed = trial_seed(self.seed, trial.number)
            torch.manual_seed(seed)
            model = build_mlp(architecture(config, self.data.x_train.shape[1], self.data.n_outputs))
        except Exception as err:
            _logger.debug("Trial %d could not start.", trial.number, exc_info=True)
            self.reporter.set_user_attr(trial, REASON_ATTR, failure_reason(err))
            self._finish(trial, state=TrialState.FAIL)
            return

        set_start_attrs(self.reporter, trial, seed=seed, n_params=count_parameters(model), device=self.device_name, config=config)
        if self.budget is not None and self.budget.is_active:
            try:
                apply_budget(trial, architecture(config, self.data.x_train.shape[1], self.data.n_outputs), count_parameters(model), self.budget)
            except optuna.TrialPruned as err:
                set_curve_attrs(self.reporter, trial, [])
                self.reporter.set_user_attr(trial, REASON_ATTR, str(err))
                self._finish(trial, state=TrialState.PRUNED)
                return
        key = pack_key(config)
        if key not in self.packs:
            self.packs[key] = Pack(self.data, key, metric=self.metric)
        self.packs[key].add(trial, config, seed, model)
        self.curves[trial.number] = []

    def run_round(self) -> None:
        """Train every pack for one epoch, then report, prune or finish each member."""
        for key, pack in list(self.packs.items()):
            try:
                outcomes = pack.run_epoch()
            except torch.OutOfMemoryError as err:
                self._fail_pack(pack, f"out of memory at batch size {key[1]} in a pack of {len(pack)}", err)
                continue
            for outcome in outcomes:
                self._handle(pack, outcome)
            if not pack.members:
                del self.packs[key]
                free_device_memory(self.data.device)
        self.reporter.flush_if_due()

    def _handle(self, pack: Pack, outcome: PackEpoch) -> None:
        member = outcome.member
        trial: optuna.Trial = member.tag
        curve = self.curves[trial.number]
        if outcome.error is not None:
            self._leave(pack, member)
            self.reporter.set_user_attr(trial, REASON_ATTR, str(outcome.error))
            self._finish(trial, state=TrialState.FAIL)
            return

        score = member.result.val_scores[-1]
        epoch = member.epoch - 1
        curve.append(round(member.result.train_losses[-1], 6))
        self.reporter.report(trial, score, epoch)
        if self.reporter.should_prune(trial):
            self._leave(pack, member)
            self.reporter.set_user_attr(trial, REASON_ATTR, pruned_reason(epoch, self.metric.name, score))
            self._finish(trial, state=TrialState.PRUNED)
            return
        if member.is_finished:
            self._leave(pack, member)
            best_score, best_epoch = member.result.best_score, member.result.best_epoch
            assert best_score is not None and best_epoch is not None
            set_result_attrs(self.reporter, trial, best_epoch=best_epoch, seconds=member.result.seconds)
            if not math.isfinite(best_score):
                # A non-finite value would win or lose every comparison, so the trial fails instead.
                self.reporter.set_user_attr(trial, REASON_ATTR, f"non-finite objective value {best_score}")
                self._finish(trial, state=TrialState.FAIL)
                return
            self._finish(trial, value=best_score)

    def _leave(self, pack: Pack, member: PackMember) -> None:
        pack.remove(member)
        set_curve_attrs(self.reporter, member.tag, self.curves.pop(member.tag.number, []))

    def _fail_pack(self, pack: Pack, reason: str, err: Exception) -> None:
        _logger.warning("A pack of %d trials ran out of memory: %s", len(pack), err)
        for member in list(pack.members):
            self._leave(pack, member)
            self.reporter.set_user_attr(member.tag, REASON_ATTR, reason)
            self._finish(member.tag, state=TrialState.FAIL)

    def _finish(self, trial: optuna.Trial, *, value: float | None = None, state: TrialState | None = None) -> None:
        try:
            frozen = self.reporter.tell(trial, value, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker failed the trial as lost (no heartbeat for the grace period), and
            # its parameters are queued again, so this result is dropped.
            frozen = self.study._storage.get_trial(trial._trial_id)
            _logger.warning("Trial %d was marked %s by another worker while it trained; its result is dropped.", trial.number, frozen.state.name)
        self.held_trials.ended(frozen)

