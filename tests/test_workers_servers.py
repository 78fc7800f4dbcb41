"""Several worker processes on one study in PostgreSQL and in MariaDB, each in a fresh database."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.storage import open_storage
from workers_helpers import TINY_SPACE, assert_goal_met, load_trials, run_hpo

PASSWORD = "Secret-pw-4711"


@pytest.mark.parametrize(
    ("database", "url_template"),
    [
        # The URLs name no driver, so hpo picks an installed one; trust auth ignores the password.
        ("postgresql_database", f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{{}}"),
        ("mariadb_database", "mariadb://root@127.0.0.1:3306/{}"),
    ],
)
def test_workers_four_on_server_finish_exact_count(tmp_path: Path, request: pytest.FixtureRequest, database: str, url_template: str) -> None:
    url = url_template.format(request.getfixturevalue(database))

    result = run_hpo("optimize", "--study", "shared", "--storage", url, "--n-trials", "12", "--workers", "4", "--device", "cpu", *TINY_SPACE, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    trials = load_trials("shared", url)
    assert_goal_met(trials, 12)
    assert len(trials) == 12
    assert PASSWORD not in result.stdout
    assert PASSWORD not in result.stderr
    if PASSWORD in url_template:
        assert "postgres:***@127.0.0.1:5432/" in result.stdout


def test_open_storage_plain_mysql_url_uses_installed_driver(mariadb_database: str) -> None:
    storage = open_storage(f"mysql://root@127.0.0.1:3306/{mariadb_database}", create=False)

    assert storage.engine.name == "mysql"
    assert storage.engine.dialect.is_mariadb
    assert storage.get_all_studies() == []
