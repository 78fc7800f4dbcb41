"""Shared fixtures: isolated study folders and the real ocean data from ../shared."""

from __future__ import annotations

import logging
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.views_fixtures import viewed_study  # noqa: F401 - a session fixture shared by the view tests

OCEAN_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ocean.zip"
OCEAN_CSV = "synthetic_ocean_quality_realistic.csv"
# The database servers of this machine's test set-up: PostgreSQL with trust auth, MariaDB's root without a password.
POSTGRESQL_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
MARIADB_ADMIN_URL = "mariadb://root@127.0.0.1:3306/test"


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


@pytest.fixture
def postgresql_database() -> Iterator[str]:
    """Name of a fresh database on the local PostgreSQL server, dropped afterwards."""
    yield from _fresh_database(POSTGRESQL_ADMIN_URL, '"', " WITH (FORCE)")


@pytest.fixture
def mariadb_database() -> Iterator[str]:
    """Name of a fresh database on the local MariaDB server, dropped afterwards."""
    yield from _fresh_database(MARIADB_ADMIN_URL, "`")


def _fresh_database(admin_url: str, quote: str, drop_options: str = "") -> Iterator[str]:
    import sqlalchemy

    from hpo.exceptions import StorageError
    from hpo.storage import with_installed_driver

    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = sqlalchemy.create_engine(with_installed_driver(admin_url), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {quote}{name}{quote}")
    except (StorageError, sqlalchemy.exc.OperationalError) as err:
        pytest.skip(f"no database server at {admin_url}: {str(err).splitlines()[0]}")
    try:
        yield name
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {quote}{name}{quote}{drop_options}")
        admin.dispose()
