"""Worker placement and threads: the device, environment and torch threads each worker starts with."""

from __future__ import annotations

import pytest
import torch

import hpo

from hpo.device import THREADS_ENV, default_cpu_workers, default_threads, plan_placements, set_torch_threads, training_threads
from hpo.exceptions import InputError


def test_plan_placements_gpus_default_one_worker_each() -> None:
    placements = plan_placements(None, device="auto", n_cuda_devices=4, n_cpus=16, environ={})

    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in placements] == ["0", "1", "2", "3"]
    assert {p.device for p in placements} == {"cuda"}
    assert {p.n_threads for p in placements} == {4}


def test_plan_placements_workers_per_gpu_repeats_each_gpu() -> None:
    placements = plan_placements(None, device="cuda", gpus=[1, 3], workers_per_gpu=2, n_cuda_devices=4, n_cpus=8, environ={})

    assert sorted(p.gpu for p in placements) == ["1", "1", "3", "3"]
    assert {p.env["OMP_NUM_THREADS"] for p in placements} == {"2"}


def test_plan_placements_maps_parent_visible_devices() -> None:
    environ = {"CUDA_VISIBLE_DEVICES": "5,7"}

    placements = plan_placements(None, device="auto", n_cuda_devices=2, n_cpus=4, environ=environ)

    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in placements] == ["5", "7"]


def test_plan_placements_workers_round_robin_over_gpus() -> None:
    placements = plan_placements(3, device="auto", gpus=[0, 1], n_cuda_devices=2, n_cpus=6, environ={})

    assert [p.gpu for p in placements] == ["0", "1", "0"]


def test_plan_placements_cuda_index_pins_that_gpu() -> None:
    placements = plan_placements(2, device="cuda:1", n_cuda_devices=2, n_cpus=2, environ={})

    assert [p.gpu for p in placements] == ["1", "1"]


def test_plan_placements_cpu_shares_cores_and_hides_gpus() -> None:
    placements = plan_placements(4, device="cpu", n_cuda_devices=2, n_cpus=8, environ={})

    assert len(placements) == 4
    assert {p.device for p in placements} == {"cpu"}
    assert {p.env["CUDA_VISIBLE_DEVICES"] for p in placements} == {""}
    assert {p.env[THREADS_ENV] for p in placements} == {"2"}


def test_plan_placements_more_workers_than_cores_get_one_thread() -> None:
    placements = plan_placements(8, device="auto", n_cuda_devices=0, n_cpus=2, environ={})

    assert {p.n_threads for p in placements} == {1}


def test_plan_placements_zero_workers_plans_none() -> None:
    assert plan_placements(0, device="cpu", n_cuda_devices=0, n_cpus=2) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_workers": None, "gpus": [2]}, "GPU\\(s\\) 2 requested"),
        ({"n_workers": 3, "workers_per_gpu": 2}, "contradicts"),
        ({"n_workers": -1}, "workers must be >= 0"),
        ({"n_workers": None, "workers_per_gpu": 0}, "workers per GPU"),
    ],
)
def test_plan_placements_bad_gpu_options_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        plan_placements(device="auto", n_cuda_devices=2, n_cpus=4, environ={}, **kwargs)


def test_plan_placements_gpu_options_without_cuda_raise() -> None:
    with pytest.raises(InputError, match="need CUDA devices"):
        plan_placements(2, device="auto", gpus=[0], n_cuda_devices=0, n_cpus=4, environ={})


def test_set_torch_threads_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, "1")
    try:
        assert set_torch_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_training_threads_default_and_restore(monkeypatch) -> None:
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    with training_threads(torch.device("cpu")) as inside:
        assert (inside, torch.get_num_threads()) == (1, 1)
    monkeypatch.setenv(THREADS_ENV, "3")
    with training_threads(torch.device("cpu")) as inside:
        assert inside == 3

    hpo.optimize(n_trials=1, space={"max_epochs": 1}, device="cpu")

    try:
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)


def test_default_threads_by_device_and_env(monkeypatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert default_threads(torch.device("cpu")) == 1
    assert default_threads(torch.device("cpu"), 4) == 4
    assert default_threads(torch.device("cuda", 0)) is None

    monkeypatch.setenv(THREADS_ENV, "3")
    assert default_threads(torch.device("cpu")) == 3
    assert default_threads(torch.device("cpu"), 2) == 2


@pytest.mark.parametrize(
    ("n_cpus", "n_trials", "expected"),
    [(2, 20, 2), (16, 20, 5), (16, 200, 8), (16, None, 8), (4, 7, 1), (4, 3, 1), (1, 100, 1)],
)
def test_default_cpu_workers_per_core_within_limits(n_cpus: int, n_trials: int | None, expected: int) -> None:
    assert default_cpu_workers(n_cpus, n_trials) == expected
