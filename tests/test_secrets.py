"""A storage password from HPO_STORAGE never appears in output, logs, the study or the model files."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from hpo.cli import main
from hpo.storage import mask_password, resolve_storage_url

psycopg2 = pytest.importorskip("psycopg2")

SERVER = "127.0.0.1:5432"


def _database_text(name: str) -> str:
    connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=name)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            tables = [row[0] for row in cursor.fetchall()]
            rows = []
            for table in tables:
                cursor.execute(f'SELECT * FROM "{table}"')
                rows.append(repr(cursor.fetchall()))
    finally:
        connection.close()
    assert "study_user_attributes" in tables
    return "\n".join(rows)


def test_password_from_env_never_written(
    postgresql_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    password = f"Pw-{uuid.uuid4().hex}"
    # PostgreSQL here trusts local connections, so the password is accepted whatever it is.
    url = f"postgresql+psycopg2://postgres:{password}@{SERVER}/{postgresql_database}"
    monkeypatch.setenv("HPO_STORAGE", url)

    assert main(["optimize", "--data", "iris", "--study", "secret", "--n-trials", "2", "--max-epochs", "1", "--device", "cpu", "--pruner", "none", "-v"]) == 0
    assert main(["finalize", "--study", "secret", "--out", str(tmp_path / "model"), "--device", "cpu", "-v"]) == 0
    missing = url.replace(postgresql_database, postgresql_database + "_missing")
    assert main(["finalize", "--study", "secret", "--storage", missing, "--out", str(tmp_path / "other")]) == 1
    output = capfd.readouterr()

    assert f"postgresql+psycopg2://postgres:***@{SERVER}/{postgresql_database}" in output.out
    assert "holds a password, which other users of this machine can read" in output.err
    assert "does not exist" in output.err
    assert password not in output.out
    assert password not in output.err
    assert password not in _database_text(postgresql_database)
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "model.json" for path in files)
    for path in files:
        assert password.encode() not in path.read_bytes(), path


def test_storage_env_used_when_no_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HPO_STORAGE", "sqlite:///from-env.db")

    assert resolve_storage_url(None, "any") == f"sqlite:///{tmp_path / 'from-env.db'}"
    assert resolve_storage_url("sqlite:///flag.db", "any") == f"sqlite:///{tmp_path / 'flag.db'}"


def test_mask_password_hides_special_characters() -> None:
    url = "mysql+pymysql://hpo:p%40ss:w0rd@db.example:3306/studies"

    assert mask_password(url) == "mysql+pymysql://hpo:***@db.example:3306/studies"
