"""Fitting preprocessing on training rows and applying it from plain JSON."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from hpo.exceptions import InputError
from hpo.preprocess import Preprocessing, apply_preprocessing, fit_preprocessing


def _train() -> pd.DataFrame:
    return pd.DataFrame({
        "x": [1.0, 2.0, np.nan, 4.0, 5.0],
        "city": ["a", "b", "b", None, "c"],
        "flag": [True, False, True, True, False],
    })


def test_fit_preprocessing_uses_training_statistics() -> None:
    prep = fit_preprocessing(_train(), ["x", "city", "flag"])

    column = prep.numeric[0]
    imputed = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert column.median == 3.0
    assert column.mean == pytest.approx(imputed.mean())
    assert column.scale == pytest.approx(imputed.std())
    assert [c.name for c in prep.categorical] == ["city", "flag"]
    assert prep.categorical[0].most_frequent == "b"
    assert prep.encoded_names == ["x", "city=a", "city=b", "city=c", "flag=False", "flag=True"]


def test_apply_preprocessing_imputes_scales_and_one_hot_encodes() -> None:
    prep = fit_preprocessing(_train(), ["x", "city", "flag"])

    x = apply_preprocessing(prep, _train())

    assert x.dtype == np.float32
    assert x.shape == (5, 6)
    assert x[:, 0].mean() == pytest.approx(0.0, abs=1e-6)
    assert x[2, 0] == pytest.approx(0.0, abs=1e-6)  # the missing value took the median, which is the mean here
    assert x[3, 1:4].tolist() == [0.0, 1.0, 0.0]  # missing city took the most frequent value, "b"


def test_apply_preprocessing_unseen_category_is_all_zero(caplog: pytest.LogCaptureFixture) -> None:
    prep = fit_preprocessing(_train(), ["x", "city"])
    new = pd.DataFrame({"x": [1.0, 2.0], "city": ["zzz", "a"], "extra": [0, 0]})

    with caplog.at_level(logging.WARNING, logger="hpo.preprocess"):
        x = apply_preprocessing(prep, new, source="new.csv")

    assert x[0, 1:].tolist() == [0.0, 0.0, 0.0]
    assert x[1, 1:].tolist() == [1.0, 0.0, 0.0]
    assert "Column 'city' in new.csv has 1 value(s) not seen in training" in caplog.text


def test_apply_preprocessing_missing_column_raises() -> None:
    prep = fit_preprocessing(_train(), ["x", "city"])

    with pytest.raises(InputError, match="new.csv lacks feature column\\(s\\) 'city'"):
        apply_preprocessing(prep, pd.DataFrame({"x": [1.0]}), source="new.csv")


def test_preprocessing_json_round_trip_gives_same_output() -> None:
    prep = fit_preprocessing(_train(), ["x", "city", "flag"])

    restored = Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict())))

    assert restored == prep
    assert np.array_equal(apply_preprocessing(restored, _train()), apply_preprocessing(prep, _train()))


def test_preprocessing_from_dict_missing_field_raises() -> None:
    with pytest.raises(InputError, match="invalid preprocessing description"):
        Preprocessing.from_dict({"numeric": [{"name": "x"}], "categorical": []})


def test_fit_preprocessing_infinite_values_imputed(caplog: pytest.LogCaptureFixture) -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, np.inf, 4.0, -np.inf]})

    with caplog.at_level(logging.WARNING, logger="hpo.preprocess"):
        prep = fit_preprocessing(frame, ["x"])
        x = apply_preprocessing(prep, frame)

    assert prep.numeric[0].median == 2.0
    assert np.isfinite(x).all()
    assert "2 infinite value(s)" in caplog.text


def test_fit_preprocessing_too_large_values_raise() -> None:
    frame = pd.DataFrame({"x": [1e300, -1e300, 3e300, 2.0]})

    with pytest.raises(InputError, match="numeric column 'x' has values too large to standardize"):
        fit_preprocessing(frame, ["x"])
