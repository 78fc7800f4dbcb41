"""Shared fixtures: isolated study folders and the real ocean data from ../shared."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.views_fixtures import viewed_study  # noqa: F401 - a session fixture shared by the view tests

OCEAN_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ocean.zip"
OCEAN_CSV = "synthetic_ocean_quality_realistic.csv"


@pytest.fixture(autouse=True)
def _isolated_study_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test in its own folder, so default study files land in tmp_path/study_db."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_STUDY_DIR", raising=False)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    return tmp_path


@pytest.fixture(autouse=True)
def _detached_cli_logging() -> Iterator[None]:
    """Remove the handler that ``hpo.cli.main`` binds to this test's captured stderr, which closes after it."""
    yield
    hpo_logger = logging.getLogger("hpo")
    hpo_logger.handlers.clear()
    hpo_logger.propagate = True


@pytest.fixture(scope="session")
def ocean_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full ocean table (100,000 rows), unpacked once per session."""
    if not OCEAN_ZIP.exists():
        pytest.skip(f"ocean data not found at {OCEAN_ZIP}")
    folder = tmp_path_factory.mktemp("ocean")
    with zipfile.ZipFile(OCEAN_ZIP) as archive:
        archive.extract(OCEAN_CSV, folder)
    return folder / OCEAN_CSV


@pytest.fixture(scope="session")
def ocean_small_csv(ocean_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded 5,000-row sample of the ocean table, for quick runs on real data."""
    import pandas as pd

    frame = pd.read_csv(ocean_csv).sample(n=5000, random_state=0)
    path = tmp_path_factory.mktemp("ocean_small") / "ocean_small.csv"
    frame.to_csv(path, index=False)
    return path
