"""Check worker placement and out-of-memory handling on a machine with CUDA GPUs.

Runs in about two minutes on one GPU and prints one JSON object; exit code 1 if a check failed.
  1. placement: `hpo optimize --workers-per-gpu 2` on every visible GPU; each trial must
     record a CUDA device and its worker's CUDA_VISIBLE_DEVICES, every GPU must get two
     worker processes, and the study must end with the exact count and nothing RUNNING.
  2. oom: with the GPU filled but for 300 MB, trials whose network cannot fit must end as FAIL with an
     out-of-memory reason while the worker goes on, and the worker's allocated GPU
     memory must return to its level before the trials.

Usage: .venv/bin/python scripts/gpu_check_workers.py [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="also write the JSON result to this file")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"ok": False, "error": "CUDA is not available"}))
        return 1
    with tempfile.TemporaryDirectory(prefix="hpo-gpu-check-") as folder:
        result = {
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "torch": torch.__version__,
            "placement": _check_placement(Path(folder), torch.cuda.device_count()),
            "oom": _check_oom(Path(folder)),
        }
    result["ok"] = result["placement"]["ok"] and result["oom"]["ok"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if result["ok"] else 1


def _check_placement(folder: Path, n_gpus: int) -> dict:
    import optuna

    from hpo.run_plan import is_counted

    storage = f"sqlite:///{folder / 'placement.db'}"
    n_trials = 8 * n_gpus
    command = [
        sys.executable, "-m", "hpo", "optimize", "--quiet", "--study", "placement", "--storage", storage,
        "--n-trials", str(n_trials), "--workers-per-gpu", "2", "--max-epochs", "3",
        "--space", "n_layers=1", "--space", "n_units=64",
    ]
    run = subprocess.run(command, cwd=folder, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=400)
    trials = optuna.load_study(study_name="placement", storage=storage).get_trials(deepcopy=False)
    devices = Counter(str(t.user_attrs.get("device")) for t in trials)
    workers_per_gpu: dict[str, set[str]] = {}
    for trial in trials:
        device = str(trial.user_attrs.get("device", ""))
        pinned = device.rsplit("CUDA_VISIBLE_DEVICES=", 1)[-1].rstrip(")") if "CUDA_VISIBLE_DEVICES=" in device else "none"
        workers_per_gpu.setdefault(pinned, set()).add(str(trial.user_attrs.get("worker")))
    states = Counter(t.state.name for t in trials)
    checks = {
        "exit_code_0": run.returncode == 0,
        "exact_count": sum(1 for t in trials if is_counted(t)) == n_trials,
        "none_running": states.get("RUNNING", 0) == 0 and states.get("WAITING", 0) == 0,
        "all_on_cuda": all(device.startswith("cuda:0 (") for device in devices),
        "every_gpu_two_workers": sorted(workers_per_gpu) == [str(i) for i in range(n_gpus)] and all(len(w) == 2 for w in workers_per_gpu.values()),
    }
    return {
        "ok": all(checks.values()), "checks": checks, "states": dict(states), "devices": dict(devices),
        "workers_per_gpu": {gpu: len(workers) for gpu, workers in workers_per_gpu.items()},
        "stderr_tail": run.stderr.strip().splitlines()[-5:],
    }


def _check_oom(folder: Path) -> dict:
    import optuna
    import torch

    from hpo.prepare import load_and_split
    from hpo.run_plan import start_run
    from hpo.storage import open_storage
    from hpo.study import StudySetup, _new_setup, build_objective
    from hpo.trial_loop import run_trials

    device = torch.device("cuda", 0)
    setup: StudySetup = _new_setup("synthetic", None, (), None, {"n_layers": 2, "n_units": [8, 16384], "max_epochs": 2}, 0, "none")
    table, split = load_and_split(setup.data)
    objective, _ = build_objective(setup, table, split, device)
    # Fill the GPU but for 300 MB: a 16384 x 16384 layer (1 GB) with Adam's state cannot fit,
    # while narrow layers can. The network is built on the CPU first, so its size must stay
    # small enough for host memory.
    free, _ = torch.cuda.mem_get_info(device)
    ballast = torch.empty(max(0, free - 300 * 2**20), dtype=torch.uint8, device=device)
    backend = open_storage(f"sqlite:///{folder / 'oom.db'}", create=True)
    study = optuna.create_study(study_name="oom", storage=backend, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    start_run(study, 8)
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated(device)
    after: list[int] = []
    run_trials(study, backend, objective, device=device, callbacks=[lambda s, t: after.append(torch.cuda.memory_allocated(device))])

    del ballast
    trials = study.get_trials(deepcopy=False)
    oom = [t for t in trials if t.state.name == "FAIL" and "memory" in str(t.user_attrs.get("reason", "")).lower()]
    checks = {
        "some_oom_failed_with_reason": len(oom) > 0,
        "worker_went_on": len(after) == 8,
        "some_trials_finished": any(t.state.name == "COMPLETE" for t in trials),
        "memory_back_to_baseline": bool(after) and max(after) <= baseline + 16 * 2**20,
    }
    return {
        "ok": all(checks.values()), "checks": checks, "baseline_bytes": baseline, "after_each_trial_bytes": after,
        "reasons": sorted({str(t.user_attrs.get("reason"))[:120] for t in oom}),
    }


if __name__ == "__main__":
    sys.exit(main())
