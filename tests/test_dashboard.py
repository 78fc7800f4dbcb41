"""``hpo dashboard`` end to end in a real Chromium, its read-only storage, and its host and storage checks."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from hpo.dashboard import check_host
from hpo.exceptions import InputError
from tests.views_fixtures import ARTIFACTS_DIR, ViewedStudy, launch_chromium, run_hpo

# Seconds to wait for the dashboard to print its URL; Python start-up is slow on a busy machine.
_START_TIMEOUT_S = 120


class Dashboard:
    """A running ``hpo dashboard`` process and the URL it printed."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url
        self.base = url.split("/dashboard")[0]
        self.study_id = int(url.rsplit("/", 1)[1])


def start_dashboard(study: ViewedStudy, storage: str, *extra: str) -> Dashboard:
    """Start ``hpo dashboard`` on a free port and wait until it prints its URL."""
    env = {**os.environ, "HPO_STUDY_DIR": str(study.folder / "study_db")}
    command = [sys.executable, "-m", "hpo", "dashboard", "--study", study.name, "--storage", storage, "--port", "0", *extra]
    process = subprocess.Popen(command, cwd=study.folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + _START_TIMEOUT_S
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = re.search(r"(http://\S+)", line)
        if match:
            return Dashboard(process, match.group(1))
    process.kill()
    raise AssertionError(f"dashboard did not start: {process.communicate()[1]}")


def stop_dashboard(dashboard: Dashboard) -> None:
    """Stop the dashboard process that the test started."""
    dashboard.process.terminate()
    try:
        dashboard.process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        dashboard.process.kill()
        dashboard.process.communicate()


@pytest.fixture(scope="module")
def read_only_dashboard(viewed_study: ViewedStudy) -> Iterator[Dashboard]:
    dashboard = start_dashboard(viewed_study, viewed_study.storage)
    yield dashboard
    stop_dashboard(dashboard)


def test_dashboard_page_shows_study_trials_best_and_artifact(read_only_dashboard: Dashboard, viewed_study: ViewedStudy) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    study = optuna.load_study(study_name=viewed_study.name, storage=viewed_study.storage)
    best = study.best_trial
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    errors: list[str] = []

    with playwright_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(read_only_dashboard.url)
        page.get_by_text(f"Best Trial (number={best.number})").wait_for(timeout=60_000)
        page.get_by_text("model.json").first.wait_for(timeout=30_000)
        page.get_by_text("Training loss per epoch by learning rate").first.wait_for(timeout=30_000)
        study_text = page.inner_text("body")
        page.screenshot(path=str(ARTIFACTS_DIR / "dashboard.png"), full_page=True)

        page.goto(f"{read_only_dashboard.url}/trials")
        page.get_by_text(f"{viewed_study.n_trials} Trials").wait_for(timeout=30_000)
        page.goto(f"{read_only_dashboard.url}/note")
        page.get_by_text("Final model").first.wait_for(timeout=30_000)
        note_text = page.inner_text("body")
        browser.close()

    assert viewed_study.name in study_text
    assert str(best.value) in study_text
    assert "model.pt" in study_text
    assert f"Trial {best.number} was retrained" in note_text
    assert "test accuracy" in note_text
    assert errors == []


def test_dashboard_api_serves_learning_curves_of_pruned_trials(read_only_dashboard: Dashboard) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{read_only_dashboard.base}/api/studies/{read_only_dashboard.study_id}", timeout=60) as response:
        detail = json.load(response)

    plots = {plot["id"]: json.loads(plot["graph_object"]) for plot in detail["plotly_graph_objects"]}
    assert set(plots) == {"hpo-train-loss-by-lr", "hpo-validation-accuracy"}
    validation_states = {trace.get("name") for trace in plots["hpo-validation-accuracy"]["data"]}
    assert validation_states == {"complete", "pruned"}
    dotted = [trace for trace in plots["hpo-train-loss-by-lr"]["data"] if trace.get("line", {}).get("dash") == "dot"]
    assert len(dotted) == 1, "the pruned trial's training loss is missing"


def test_dashboard_delete_leaves_read_only_study_intact(read_only_dashboard: Dashboard, viewed_study: ViewedStudy) -> None:
    digest_before = hashlib.sha256(viewed_study.db_path.read_bytes()).hexdigest()
    artifact_files = sorted(p for p in (viewed_study.db_path.parent / f"{viewed_study.name}.artifacts").rglob("*") if p.is_file())
    assert len(artifact_files) == 2

    status = _delete_study(read_only_dashboard.base, read_only_dashboard.study_id)

    assert status >= 400
    study = optuna.load_study(study_name=viewed_study.name, storage=viewed_study.storage)
    assert len(study.trials) == viewed_study.n_trials
    assert hashlib.sha256(viewed_study.db_path.read_bytes()).hexdigest() == digest_before
    assert all(p.is_file() for p in artifact_files), "a read-only dashboard removed artifact files"


def test_dashboard_writable_delete_removes_study(viewed_study: ViewedStudy, tmp_path: Path) -> None:
    # The same request against --writable shows what read-only mode prevents.
    copy = tmp_path / "copy.db"
    shutil.copy(viewed_study.db_path, copy)
    storage = f"sqlite:///{copy}"
    dashboard = start_dashboard(viewed_study, storage, "--writable")
    try:
        status = _delete_study(dashboard.base, dashboard.study_id)
    finally:
        stop_dashboard(dashboard)

    assert status == 204
    assert optuna.get_all_study_names(storage) == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_check_host_loopback_accepted(host: str) -> None:
    check_host(host, allow_remote=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_check_host_remote_without_flag_raises(host: str) -> None:
    with pytest.raises(InputError, match="--allow-remote-unauthenticated"):
        check_host(host, allow_remote=False)


def test_check_host_remote_with_flag_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hpo.dashboard"):
        check_host("0.0.0.0", allow_remote=True)

    assert "without authentication" in caplog.text


def test_dashboard_cli_remote_host_exits_2(tmp_path: Path) -> None:
    result = run_hpo("dashboard", "--study", "absent", "--host", "0.0.0.0", cwd=tmp_path)

    assert result.returncode == 2
    assert "no login" in result.stderr


def test_dashboard_cli_missing_storage_creates_nothing(tmp_path: Path) -> None:
    result = run_hpo("dashboard", "--storage", f"sqlite:///{tmp_path / 'typo.db'}", cwd=tmp_path)

    assert result.returncode == 1
    assert "study storage not found" in result.stderr
    assert not (tmp_path / "typo.db").exists()
    assert not (tmp_path / "study_db").exists()


@pytest.mark.parametrize("content", ["plain text, not a database\n" * 50, "sqlite-other-app"])
def test_dashboard_cli_non_optuna_file_exits_1(tmp_path: Path, content: str) -> None:
    path = tmp_path / "other.db"
    if content == "sqlite-other-app":
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE orders (id INTEGER)")
        connection.close()
    else:
        path.write_text(content)
    digest_before = hashlib.sha256(path.read_bytes()).hexdigest()

    result = run_hpo("dashboard", "--storage", f"sqlite:///{path}", cwd=tmp_path)

    assert result.returncode == 1
    assert re.search(r"not an Optuna storage|as a SQLite database", result.stderr), result.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest_before


def test_dashboard_cli_unknown_study_exits_1(viewed_study: ViewedStudy) -> None:
    result = run_hpo("dashboard", "--study", "absent", "--storage", viewed_study.storage, cwd=viewed_study.folder)

    assert result.returncode == 1
    assert f"studies there: {viewed_study.name}" in result.stderr


def _delete_study(base: str, study_id: int) -> int:
    body = json.dumps({"remove_associated_artifacts": True}).encode()
    request = urllib.request.Request(f"{base}/api/studies/{study_id}", data=body, method="DELETE", headers={"Content-Type": "application/json"})
    # No proxy: the request must reach the dashboard on loopback directly.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
