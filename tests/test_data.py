"""Reading tables, rejecting bad input, and splitting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpo.data import SplitSpec, load_table, read_frame, split_rows
from hpo.exceptions import InputError


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def _frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "a": rng.normal(size=n),
        "b": rng.normal(size=n),
        "color": rng.choice(["red", "green"], size=n),
        "label": np.where(np.arange(n) % 2 == 0, "yes", "no"),
    })


def test_read_frame_semicolon_and_bom_detected(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "\ufeffa;b;label\n1,5;2;x\n3;4;y\n")

    frame = read_frame(path)

    assert list(frame.columns) == ["a", "b", "label"]
    assert len(frame) == 2


def test_read_frame_tab_separated(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.tsv", "a\tb\tlabel\n1\t2\tx\n3\t4\ty\n")

    assert list(read_frame(path).columns) == ["a", "b", "label"]


def test_read_frame_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    _frame().to_parquet(path)

    frame = read_frame(path)

    assert list(frame.columns) == ["a", "b", "color", "label"]
    assert len(frame) == 40


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("a,b,label\n", "header but no rows"),
        ("a,a,label\n1,2,x\n", "duplicate column names: a"),
    ],
)
def test_read_frame_bad_file_raises(tmp_path: Path, content: str, pattern: str) -> None:
    path = _write(tmp_path / "bad.csv", content)

    with pytest.raises(InputError, match=pattern) as info:
        read_frame(path)

    assert str(path) in str(info.value)


def test_read_frame_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="data file not found: .*nope.csv"):
        read_frame(tmp_path / "nope.csv")


def test_load_table_missing_target_lists_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    _frame().to_csv(path, index=False)

    with pytest.raises(InputError, match=r"target column 'Quality' not found .*columns are: a, b, color, label"):
        load_table(path, "Quality")


def test_load_table_single_class_raises(tmp_path: Path) -> None:
    frame = _frame().assign(label="same")
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)

    with pytest.raises(InputError, match="single class 'same'"):
        load_table(path, "label")


def test_load_table_empty_feature_column_raises(tmp_path: Path) -> None:
    frame = _frame().assign(b=np.nan)
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)

    with pytest.raises(InputError, match="'b' .* have no values; drop them with --ignore-columns"):
        load_table(path, "label")


def test_load_table_ignore_columns_dropped(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    _frame().to_csv(path, index=False)

    table = load_table(path, "label", ignore_columns=["color"])

    assert table.features == ("a", "b")
    assert table.classes == ("no", "yes")


def test_load_table_unknown_ignore_column_raises(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    _frame().to_csv(path, index=False)

    with pytest.raises(InputError, match="--ignore-columns names columns not in .*: zzz"):
        load_table(path, "label", ignore_columns=["zzz"])


def test_load_table_rows_without_target_dropped(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[:4, "label"] = None
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)

    table = load_table(path, "label")

    assert len(table.frame) == 35


@pytest.mark.parametrize("name", ["synthetic", "iris", "wine", "breast_cancer", "digits"])
def test_load_table_builtin_sets_load(name: str) -> None:
    table = load_table(name)

    assert table.target == "target"
    assert len(table.classes) >= 2
    assert len(table.frame) > 100


def test_load_table_synthetic_matches_tutorial_settings() -> None:
    table = load_table("synthetic")

    assert len(table.frame) == 1000
    assert len(table.features) == 10
    assert table.classes == (0, 1, 2)


def test_load_table_unknown_builtin_raises() -> None:
    with pytest.raises(InputError, match="unknown built-in data set 'irises'"):
        load_table("irises")


def test_split_rows_stratified_and_disjoint() -> None:
    table = load_table("synthetic")

    split = split_rows(table, SplitSpec(seed=3))

    assert (len(split.train), len(split.validation), len(split.test)) == (600, 200, 200)
    parts = [set(split.train), set(split.validation), set(split.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    labels = table.frame["target"].to_numpy()
    for indices in (split.train, split.validation, split.test):
        shares = np.bincount(labels[indices]) / len(indices)
        assert np.allclose(shares, np.bincount(labels) / len(labels), atol=0.02)


def test_split_rows_seed_changes_split() -> None:
    table = load_table("synthetic")

    first = split_rows(table, SplitSpec(seed=1))
    again = split_rows(table, SplitSpec(seed=1))
    other = split_rows(table, SplitSpec(seed=2))

    assert np.array_equal(first.test, again.test)
    assert not np.array_equal(first.test, other.test)


def test_split_rows_rare_class_raises(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[:2, "label"] = "rare"
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    table = load_table(path, "label")

    with pytest.raises(InputError, match=r"class 'rare' \(3 rows\) .* needs at least 5"):
        split_rows(table, SplitSpec())


def test_split_spec_fractions_must_sum_to_one() -> None:
    with pytest.raises(InputError, match="add up to 1"):
        SplitSpec(train=0.5, validation=0.2, test=0.2)


def test_encode_labels_integral_float_target_round_trips(tmp_path: Path) -> None:
    from hpo.data import encode_labels

    frame = _frame().assign(label=np.where(np.arange(40) % 2 == 0, 1.0, 0.0))
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    table = load_table(path, "label", task="classification")

    codes = encode_labels(table.frame["label"], table.classes)

    assert table.classes == (0, 1)
    assert (codes >= 0).all()
    assert codes.tolist() == [1 - (i % 2) for i in range(40)]


def test_read_frame_decimal_comma_read_as_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path / "euro.csv", "a;b;label\n1,5;2,25;x\n3,0;4,5;y\n")

    frame = read_frame(path)

    assert frame["a"].tolist() == [1.5, 3.0]
    assert frame["b"].tolist() == [2.25, 4.5]


def test_read_frame_trailing_separator_keeps_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "a,b,label\n1,2,x,\n3,4,y,\n")

    frame = read_frame(path)

    assert frame["label"].tolist() == ["x", "y"]


def test_read_frame_stray_text_in_numeric_column_is_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = "\n".join(f"{i}.5,{'?' if i == 7 else i},x" for i in range(40))
    path = _write(tmp_path / "t.csv", "a,b,label\n" + rows + "\n")

    with caplog.at_level("WARNING", logger="hpo.data"):
        frame = read_frame(path)

    assert pd.api.types.is_float_dtype(frame["b"])
    assert frame["b"].isna().sum() == 1
    assert "Column 'b'" in caplog.text and "'?'" in caplog.text


def test_read_frame_late_invalid_utf8_names_position(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    body = "a,b,label\n" + "1,2,x\n" * 20000 + "1,2,caf\xe9\n"
    path.write_bytes(body.encode("latin-1"))

    with pytest.raises(InputError, match="is not UTF-8 text \\(invalid byte at position"):
        read_frame(path)


def test_read_frame_spreadsheet_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.xlsx", "not really a spreadsheet")

    with pytest.raises(InputError, match="unsupported data format '.xlsx'"):
        read_frame(path)


def test_split_rows_many_rare_classes_message_is_short(tmp_path: Path) -> None:
    frame = _frame(200).assign(label=[f"v{i}" for i in range(200)])
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    table = load_table(path, "label", task="classification")

    with pytest.raises(InputError) as info:
        split_rows(table, SplitSpec())

    assert "and 195 more" in str(info.value)
    assert "--task regression" in str(info.value)
    assert len(str(info.value)) < 500
