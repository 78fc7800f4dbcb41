"""Apply a saved bundle to a table: the ``hpo predict`` operation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpo.bundle import LoadedModel, load_model
from hpo.data import encode_labels, read_frame
from hpo.exceptions import InputError

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictResult:
    """Predictions for every row, and scores when the table has the target column.

    ``accuracy`` is set for a classifier; ``scores`` contains RMSE, MAE and R² for a
    regression model.
    """

    predictions: pd.DataFrame
    accuracy: float | None
    n_scored: int
    scores: dict[str, float] | None = None


def predict_frame(model: LoadedModel, frame: pd.DataFrame, *, source: str = "the data") -> PredictResult:
    """Predict every row of ``frame``; score against the target column when it is present.

    Rows whose target is missing, or contains a label the model never saw, are not scored.
    """
    predictions = model.predict(frame, source=source)
    if model.target not in frame.columns:
        return PredictResult(predictions=predictions, accuracy=None, n_scored=0)
    if model.task == "regression":
        return _score_values(predictions, frame[model.target], model.target, source)

    truth = encode_labels(frame[model.target], tuple(model.classes))
    known = truth >= 0
    if not known.any():
        _logger.warning("Target column %r in %s contains no label the model was trained on; accuracy is not computed.", model.target, source)
        return PredictResult(predictions=predictions, accuracy=None, n_scored=0)
    predicted = np.argmax(predictions[[f"proba_{c}" for c in model.classes]].to_numpy(), axis=1)
    accuracy = float((predicted[known] == truth[known]).mean())
    return PredictResult(predictions=predictions, accuracy=accuracy, n_scored=int(known.sum()))


def _score_values(predictions: pd.DataFrame, target: pd.Series, name: str, source: str) -> PredictResult:
    import torch

    from hpo.metrics import REGRESSION, compute_metrics

    truth = pd.to_numeric(target, errors="coerce").to_numpy(dtype=np.float64)
    known = np.isfinite(truth)
    if not known.any():
        _logger.warning("Target column %r in %s contains no numbers; RMSE, MAE and R² are not computed.", name, source)
        return PredictResult(predictions=predictions, accuracy=None, n_scored=0)
    predicted = predictions["prediction"].to_numpy(dtype=np.float64)[known]
    scores = compute_metrics(REGRESSION, torch.as_tensor(predicted), torch.as_tensor(truth[known]))
    return PredictResult(predictions=predictions, accuracy=None, n_scored=int(known.sum()), scores=scores)


def predict_file(model_dir: str | Path, data: str | Path, output: str | Path | None = None) -> PredictResult:
    """Load a bundle, predict a CSV/Parquet file, and write the predictions as CSV when ``output`` is set.

    Raises:
        BundleError: When the bundle cannot be loaded.
        InputError: When the data file is unusable or lacks a feature column.
    """
    out = None if output is None else Path(output).expanduser().resolve()
    if out is not None and out.is_dir():
        raise InputError(f"--output {out} is a folder; give a file name such as {out / 'predictions.csv'}.")
    if out is not None and out == Path(data).expanduser().resolve():
        raise InputError(f"--output {out} is the input data file; write the predictions to another file.")
    model = load_model(model_dir)
    path = Path(data).expanduser().resolve()
    frame = read_frame(path)
    result = predict_frame(model, frame, source=str(path))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.predictions.to_csv(out, index=False)
        _logger.info("Wrote %d predictions to %s.", len(result.predictions), out)
    return result
