"""Several worker processes on one study in PostgreSQL and in MariaDB, each in a fresh database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers_helpers import TINY_SPACE, assert_goal_met, load_trials, run_hpo

PASSWORD = "Secret-pw-4711"


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    """A fresh PostgreSQL database; the URL carries a password that trust auth ignores."""
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"hpo_workers_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=5)
    except psycopg2.OperationalError as err:
        pytest.skip(f"PostgreSQL not reachable: {err}")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:5432/{name}"
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A fresh MariaDB database."""
    pymysql = pytest.importorskip("pymysql")
    name = f"hpo_workers_{uuid.uuid4().hex[:12]}"
    try:
        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database="test", connect_timeout=5, autocommit=True)
    except pymysql.err.OperationalError as err:
        pytest.skip(f"MariaDB not reachable: {err}")
    admin.cursor().execute(f"CREATE DATABASE `{name}`")
    try:
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def test_workers_four_on_postgresql_finish_exact_count(tmp_path: Path, postgresql_url: str) -> None:
    result = run_hpo("optimize", "--study", "shared", "--storage", postgresql_url, "--n-trials", "12", "--workers", "4", "--device", "cpu", *TINY_SPACE, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    trials = load_trials("shared", postgresql_url)
    assert_goal_met(trials, 12)
    assert len(trials) == 12
    assert PASSWORD not in result.stdout
    assert PASSWORD not in result.stderr
    assert "postgres:***@" in result.stdout


def test_workers_four_on_mariadb_finish_exact_count(tmp_path: Path, mariadb_url: str) -> None:
    result = run_hpo("optimize", "--study", "shared", "--storage", mariadb_url, "--n-trials", "12", "--workers", "4", "--device", "cpu", *TINY_SPACE, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    trials = load_trials("shared", mariadb_url)
    assert_goal_met(trials, 12)
    assert len(trials) == 12
