"""Write a study's report: one self-contained HTML page with plots and tables, plus ``trials.csv``."""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from hpo import __version__
from hpo.curves import train_loss_by_lr_figure, validation_curves_figure
from hpo.exceptions import InputError
from hpo.finalizer import FINAL_ATTR
from hpo.overview import format_cell, label_test_metric, load_study_read_only, metric_name
from hpo.progress import count_trials
from hpo.tradeoff import size_tradeoff_figure
from hpo.storage import mask_password, resolve_storage_url, validate_study_name

_logger = logging.getLogger(__name__)

HTML_NAME = "report.html"
CSV_NAME = "trials.csv"
N_TOP_TRIALS = 10
# Section ids of the figures, in page order; tests and links rely on them.
FIGURE_IDS = (
    "optimization-history",
    "param-importances",
    "intermediate-values",
    "train-loss-by-lr",
    "parallel-coordinate",
    "slice",
    "size-tradeoff",
)


@dataclass(frozen=True)
class ReportResult:
    """The files written, and the figures that could not be drawn with the reason for each."""

    html_path: Path
    csv_path: Path
    missing_figures: dict[str, str]


def write_report(study_name: str, out_dir: str | Path, *, storage: str | None = None) -> ReportResult:
    """Write ``report.html`` and ``trials.csv`` for a study into ``out_dir``.

    The page embeds plotly.js, so it opens offline. It shows the optimization history,
    parameter importances, the validation metric per epoch (pruned trials dotted), training
    loss per epoch coloured by learning rate, parallel coordinates, slice plots, the
    validation metric against network size with its Pareto front, the top
    trials and, once the study was finalized, the final model's test metrics. A figure that
    cannot be drawn yet (for example importances before two trials completed) is replaced
    by a line with the reason. The storage is opened read-only.

    Args:
        study_name: The study to report on.
        out_dir: Folder for the two files (created if missing).
        storage: Storage URL; defaults to the study's SQLite file under ``study_db/``.

    Returns:
        The paths written and the figures left out.

    Raises:
        InputError: When ``out_dir`` exists and is not a folder.
        StudyError: When the study does not exist.
        StorageError: When the storage cannot be read.
    """
    name = validate_study_name(study_name)
    url = resolve_storage_url(storage, name)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"report folder {out} exists and is not a folder; choose another --out.")
    study = load_study_read_only(name, url)
    trials = study.get_trials(deepcopy=False)

    sections: list[str] = []
    missing: dict[str, str] = {}
    for figure_id, (title, draw) in zip(FIGURE_IDS, _figure_builders(study, trials)):
        try:
            figure = draw()
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            missing[figure_id] = str(err) or type(err).__name__
            _logger.info("Report figure %s left out: %s", figure_id, missing[figure_id])
            sections.append(_section(figure_id, title, f'<p class="missing">Not available: {html.escape(missing[figure_id])}</p>'))
            continue
        figure.update_layout(template="plotly_white", height=480)
        sections.append(_section(figure_id, title, figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"{figure_id}-plot")))

    out.mkdir(parents=True, exist_ok=True)
    html_path = out / HTML_NAME
    csv_path = out / CSV_NAME
    page = _page(study, mask_password(url), trials, sections)
    html_path.write_text(page, encoding="utf-8")
    trials_frame(study).to_csv(csv_path, index=False)
    _logger.info("Wrote %s and %s.", html_path, csv_path)
    return ReportResult(html_path, csv_path, missing)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Return one row per trial: number, state, value, start, end, duration, params and user attributes.

    Lists and dicts among the user attributes (``train_loss``, ``config``) are JSON text,
    and ``duration_s`` is in seconds.
    """
    frame = study.trials_dataframe(attrs=("number", "state", "value", "datetime_start", "datetime_complete", "duration", "params", "user_attrs"), multi_index=False)
    if frame.empty:
        return pd.DataFrame(columns=["number", "state", "value", "datetime_start", "datetime_complete", "duration_s"])
    frame["duration_s"] = frame.pop("duration").dt.total_seconds()
    for column in frame.columns:
        if column.startswith("user_attrs_"):
            frame[column] = frame[column].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    return frame


def _figure_builders(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> list[tuple[str, Callable[[], go.Figure]]]:
    from optuna import visualization

    params = _plotted_params(trials)
    metric = metric_name(study)
    return [
        ("Optimization history", lambda: _require_complete(study, 1, visualization.plot_optimization_history)),
        ("Parameter importances", lambda: _require_complete(study, 2, visualization.plot_param_importances)),
        (f"Validation {metric} per epoch", lambda: validation_curves_figure(trials, metric)),
        ("Training loss by learning rate", lambda: train_loss_by_lr_figure(trials)),
        ("Parallel coordinates", lambda: _require_complete(study, 1, lambda s: visualization.plot_parallel_coordinate(s, params=params))),
        ("Slice plots", lambda: _require_complete(study, 1, lambda s: visualization.plot_slice(s, params=params))),
        (f"Validation {metric} against network size", lambda: size_tradeoff_figure(study, metric)),
    ]


def _require_complete(study: optuna.Study, n_needed: int, draw: Callable[[optuna.Study], go.Figure]) -> go.Figure:
    counts = count_trials(study)
    if counts.complete < n_needed:
        raise ValueError(f"needs {n_needed} completed trial(s); the study has {counts.complete}")
    return draw(study)


def _plotted_params(trials: list[optuna.trial.FrozenTrial]) -> list[str] | None:
    # Width parameters of layers that a trial does not build carry no information, so
    # only the first layer's width is plotted next to the other parameters.
    names: list[str] = []
    for trial in trials:
        for key in trial.params:
            if key not in names and not (key.startswith("n_units_l") and key != "n_units_l0"):
                names.append(key)
    return names or None


def _page(study: optuna.Study, storage: str, trials: list[optuna.trial.FrozenTrial], sections: list[str]) -> str:
    counts = count_trials(study)
    best = "none" if counts.best_value is None else f"{counts.best_value:.5f}"
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    title = f"Study {study.study_name}"
    summary = (
        f"{len(trials)} trials: {counts.complete} complete, {counts.pruned} pruned, {counts.failed} failed. "
        f"Best validation {metric_name(study)} {best}. Storage {storage}."
    )
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p id="summary">{html.escape(summary)}</p>',
        _final_model_section(study),
        _top_trials_section(study, trials),
        *sections,
        f"<footer>Written by hpo {html.escape(__version__)} at {created}.</footer>",
    ]
    return _TEMPLATE.format(title=html.escape(title), plotlyjs=plotly.offline.get_plotlyjs(), body="\n".join(body))


def _final_model_section(study: optuna.Study) -> str:
    final = study.user_attrs.get(FINAL_ATTR)
    if not isinstance(final, dict):
        return _section("final-model", "Final model", '<p class="missing">Not finalized yet: run hpo finalize on this study.</p>')
    rows = [("trial", final.get("trial_number")), (f"validation {metric_name(study)}", final.get("validation_score"))]
    rows += [(label_test_metric(key), value) for key, value in (final.get("test") or {}).items()]
    spread = final.get("seed_spread")
    if isinstance(spread, dict) and spread.get("seeds"):
        rows.append((f"test {metric_name(study)} over {len(spread['seeds'])} seeds", f"{spread['mean']:.5f} ± {spread['std']:.5f}"))
    rows.append(("bundle", final.get("path")))
    return _section("final-model", "Final model", _table(["metric", "value"], [list(row) for row in rows]))


def _top_trials_section(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> str:
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    top = sorted(complete, key=lambda t: (sign * float(t.value), t.number))[:N_TOP_TRIALS]  # type: ignore[arg-type]
    if not top:
        return _section("top-trials", "Top trials", '<p class="missing">No trial completed yet.</p>')
    names = _plotted_params(top) or []
    headers = ["trial", f"validation {metric_name(study)}", "epochs", "seconds", *names]
    rows = [[t.number, t.value, t.user_attrs.get("epochs_run"), t.user_attrs.get("train_seconds"), *[t.params.get(n) for n in names]] for t in top]
    return _section("top-trials", f"Top {len(top)} trials", _table(headers, rows))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(section_id: str, title: str, content: str) -> str:
    return f'<section id="{section_id}"><h2>{html.escape(title)}</h2>\n{content}\n</section>'


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
.missing {{ color: #a00; }}
footer {{ margin-top: 3em; color: #777; font-size: small; }}
</style>
<script>{plotlyjs}</script>
</head>
<body>
{body}
</body>
</html>
"""
