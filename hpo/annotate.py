"""Study content for optuna-dashboard: the final model's Markdown note and the learning-curve plots."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

_logger = logging.getLogger(__name__)

# Ids of the plots stored on the study; saving again under the same id replaces a plot.
TRAIN_LOSS_PLOT_ID = "hpo-train-loss-by-lr"
VALIDATION_PLOT_ID = "hpo-validation-accuracy"


def final_model_note(metric: str, trial_number: int, validation_score: float, test_metrics: dict[str, Any], bundle_dir: Path, artifact_ids: dict[str, str]) -> str:
    """Return the Markdown note that describes a finalized model."""
    from hpo.overview import label_test_metric

    lines = [
        "## Final model",
        "",
        f"Trial **{trial_number}** was retrained on train+validation and tested once on the test part.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| validation {metric} (trial {trial_number}) | {validation_score:.5f} |",
    ]
    for key, value in test_metrics.items():
        text = f"{value:.5f}" if isinstance(value, float) else str(value)
        lines.append(f"| {label_test_metric(key)} | {text} |")
    lines += ["", f"Bundle folder: `{bundle_dir}`", ""]
    if artifact_ids:
        lines.append("Attached to this study as artifacts: " + ", ".join(f"`{name}` ({artifact_id})" for name, artifact_id in artifact_ids.items()) + ".")
    return "\n".join(lines) + "\n"


def save_final_model_note(study: optuna.Study, note: str) -> None:
    """Store ``note`` as the study's note, replacing any earlier note.

    optuna-dashboard keeps notes as versioned study system attributes; the dashboard
    shows the latest version.
    """
    # NOTE: this replaces a note that a user wrote in the dashboard.
    from optuna_dashboard import save_note

    save_note(study, note)
    _logger.info("Stored the final model's note on study %r.", study.study_name)


def save_learning_curves(study: optuna.Study) -> None:
    """Store the training-loss and validation-metric curves of all trials as plots on the study.

    optuna-dashboard draws the validation metric per epoch by itself, but not the training
    loss, which trials keep as a user attribute. Both figures replace the ones stored
    before, so the plots show the trials as of the last call (the end of an ``optimize``
    run, or ``finalize``). Nothing is stored before a trial has a curve.
    """
    # NOTE: optuna-dashboard stores a figure as several study attributes, one transaction
    # each. Two workers that finish at the same moment can leave a mixed, unreadable plot,
    # which the next optimize or finalize call replaces.
    from optuna_dashboard import save_plotly_graph_object

    from hpo.curves import train_loss_by_lr_figure, validation_curves_figure
    from hpo.overview import metric_name

    trials = study.get_trials(deepcopy=False)
    metric = metric_name(study)
    drawings = ((TRAIN_LOSS_PLOT_ID, lambda: train_loss_by_lr_figure(trials)), (VALIDATION_PLOT_ID, lambda: validation_curves_figure(trials, metric)))
    for graph_id, draw in drawings:
        try:
            figure = draw()
        except ValueError as err:
            _logger.debug("No %s plot for study %r: %s", graph_id, study.study_name, err)
            continue
        save_plotly_graph_object(study, figure, graph_object_id=graph_id)
