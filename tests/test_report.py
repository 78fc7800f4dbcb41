"""The study report: report.html with every figure, opened in a real headless Chromium, and trials.csv."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pandas as pd
import pytest

from hpo.report import FIGURE_IDS, write_report
from tests.views_fixtures import ARTIFACTS_DIR, ViewedStudy, launch_chromium, run_hpo

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture(scope="module")
def report_dir(viewed_study: ViewedStudy) -> Path:
    out = viewed_study.folder / "report"
    result = run_hpo("report", "--study", viewed_study.name, "--storage", viewed_study.storage, "--out", str(out), cwd=viewed_study.folder)
    assert result.returncode == 0, result.stderr
    return out


def test_report_html_has_every_figure(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")

    for figure_id in FIGURE_IDS:
        assert f'<section id="{figure_id}">' in page, figure_id
        assert f'id="{figure_id}-plot"' in page, f"{figure_id} was not drawn"
    assert '<section id="top-trials">' in page
    assert '<section id="final-model">' in page
    assert "test accuracy" in page


def test_report_html_embeds_plotlyjs_and_loads_nothing(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")

    assert "plotly.js v" in page or "Plotly" in page
    assert not re.search(r"<script[^>]+src=", page), "the page must not load scripts from elsewhere"
    assert not re.search(r"<link[^>]+href=\"?https?:", page)


def test_report_curves_mark_pruned_trials(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")

    assert '"name":"pruned"' in page
    assert '"name":"complete"' in page
    assert "log10(lr)" in page


def test_report_trials_csv_has_one_row_per_trial(report_dir: Path, viewed_study: ViewedStudy) -> None:
    frame = pd.read_csv(report_dir / "trials.csv")

    assert len(frame) == viewed_study.n_trials
    assert set(frame["state"]) == {"COMPLETE", "PRUNED"}
    for column in ("number", "value", "duration_s", "params_lr", "params_n_layers", "user_attrs_train_loss", "user_attrs_epochs_run"):
        assert column in frame.columns, column
    complete = frame[frame["state"] == "COMPLETE"]
    assert complete["duration_s"].gt(0).all()
    curve = json.loads(complete["user_attrs_train_loss"].iloc[0])
    assert len(curve) == complete["user_attrs_epochs_run"].iloc[0]


def test_report_opens_in_chromium_without_errors(report_dir: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    errors: list[str] = []

    with playwright_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.route(re.compile(r"^https?://"), lambda route: (errors.append(f"network request {route.request.url}"), route.abort()))
        page.goto((report_dir / "report.html").as_uri())
        page.wait_for_load_state("load")
        drawn = {figure_id: page.locator(f"#{figure_id} .js-plotly-plot .main-svg").count() for figure_id in FIGURE_IDS}
        page.screenshot(path=str(ARTIFACTS_DIR / "report.png"), full_page=True)
        browser.close()

    assert errors == []
    for figure_id, n_svg in drawn.items():
        assert n_svg > 0, f"{figure_id} not rendered"


def test_write_report_without_completed_trials_explains_missing_figures(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    study = optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"reason": "ValueError: boom"}))

    result = write_report("empty", tmp_path / "out", storage=storage)

    page = result.html_path.read_text(encoding="utf-8")
    assert set(result.missing_figures) == set(FIGURE_IDS)
    assert "needs 1 completed trial(s)" in result.missing_figures["optimization-history"]
    assert "Not available" in page
    assert pd.read_csv(result.csv_path)["state"].tolist() == ["FAIL"]


def test_write_report_final_model_shows_seed_spread(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'spread.db'}"
    study = optuna.create_study(study_name="spread", storage=storage, direction="maximize")
    final = {
        "path": "/models/spread", "trial_number": 0, "validation_score": 0.8, "test": {"accuracy": 0.75, "n_rows": 40},
        "seed_spread": {"trial_number": 0, "validation": 0.8, "seeds": [0, 1, 2], "values": [0.7, 0.75, 0.8], "mean": 0.75, "std": 0.05},
    }
    study.set_user_attr("hpo_final_model", final)

    page = write_report("spread", tmp_path / "out", storage=storage).html_path.read_text(encoding="utf-8")

    assert "test accuracy over 3 seeds" in page
    assert "0.75000 ± 0.05000" in page
    assert "test rows" in page
