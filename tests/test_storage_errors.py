"""Storage failures reach the user as one line with the real cause, the file or host, and a fix."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

import hpo
from hpo.cli import main
from hpo.exceptions import StorageError, StudyError
from hpo.storage import load_study, open_storage
from hpo.storage_errors import translated_storage_errors

REPO = Path(__file__).resolve().parents[1]
TINY = {"max_epochs": 1, "n_layers": 1, "n_units": 4, "batch_size": 64}
# Capabilities that let root ignore file permissions; dropped so a read-only folder is one for root too.
_PERMISSION_CAPS = "-dac_override,-dac_read_search,-fowner"


def _run_python(code: str, *, wrapper: list[str] | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [*(wrapper or []), sys.executable, "-c", code]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _without_root_permissions() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv, so file permissions cannot be enforced")
    return ["setpriv", f"--bounding-set={_PERMISSION_CAPS}", "--inh-caps=-all"]


# Enough trials to outgrow 200 KiB of SQLite file.
_OPTIMIZE_MANY = [sys.executable, "-m", "hpo", "optimize", "--data", "iris", "--n-trials", "60", "--max-epochs", "1", "--device", "cpu", "--pruner", "none", "-q"]

_OPEN_AND_CREATE = """
import sys, optuna
from hpo.exceptions import StorageError
from hpo.storage import open_storage
from hpo.storage_errors import translated_storage_errors
url = sys.argv[1] if len(sys.argv) > 1 else {url!r}
try:
    storage = open_storage(url, create=True)
    with translated_storage_errors(url):
        optuna.create_study(study_name="new", storage=storage)
except StorageError as err:
    print(err)
    sys.exit(1)
"""


def test_open_storage_read_only_folder_names_folder(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    path = folder / "study.db"

    result = _run_python(_OPEN_AND_CREATE.format(url=f"sqlite:///{path}"), wrapper=_without_root_permissions(), cwd=tmp_path)

    assert result.returncode == 1, result.stderr
    assert result.stdout.strip() == (
        f"cannot create SQLite file {path}: no permission to write in the folder {folder}. "
        "Choose another --storage location or fix the folder's permissions."
    )
    assert not path.exists()


def test_create_study_read_only_file_says_read_only(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    optuna.create_study(study_name="old", storage=f"sqlite:///{path}")
    path.chmod(0o444)

    result = _run_python(_OPEN_AND_CREATE.format(url=f"sqlite:///{path}"), wrapper=_without_root_permissions(), cwd=tmp_path)

    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith(f"cannot write SQLite file {path}: the file has no write permission.")


def test_optimize_full_disk_stops_with_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a small tmpfs")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow a private mount namespace")
    disk = tmp_path / "disk"
    disk.mkdir()
    # A private mount namespace: the 200 KiB tmpfs disappears with the process.
    script = f"mount -t tmpfs -o size=200k tmpfs {disk} && exec {' '.join(_OPTIMIZE_MANY)} --storage sqlite:///{disk}/study.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"hpo: error: cannot write SQLite file {disk}/study.db: the disk is full (")
    assert "StorageInternalError" not in last_line


def test_optimize_file_size_limit_stops_with_one_line(tmp_path: Path) -> None:
    resource = pytest.importorskip("resource")

    def limit_file_size() -> None:
        # Without SIG_IGN the kernel kills the process at the limit instead of failing the write.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200 * 1024, 200 * 1024))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [*_OPTIMIZE_MANY, "--storage", f"sqlite:///{tmp_path / 'study.db'}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)

    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == (
        f"hpo: error: cannot write SQLite file {tmp_path / 'study.db'}: disk I/O error, and this process may write "
        "files of at most 204800 bytes (ulimit -f). Raise the limit or move the study with --storage."
    )


def test_load_study_garbage_file_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)

    with pytest.raises(StorageError) as caught:
        load_study("ocean", f"sqlite:///{path}")

    assert str(caught.value) == f"{path} is not a SQLite database. Point --storage at a study file, or move that file away."
    assert path.read_bytes().startswith(b"these are my notes")


def test_open_storage_old_schema_names_upgrade_command(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    path = tmp_path / "old.db"
    # Optuna's own migrations, stopped one revision before the current head.
    folder = Path(optuna.storages._rdb.storage.__file__).parent
    config = Config(str(folder / "alembic.ini"))
    config.set_main_option("script_location", str(folder / "alembic"))
    config.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    command.upgrade(config, "v3.0.0.d")

    with pytest.raises(StorageError) as caught:
        open_storage(f"sqlite:///{path}", create=False)

    assert str(caught.value) == (
        f"storage {path} was created by an older Optuna and needs a schema upgrade; "
        f"back it up, then run: optuna storage upgrade --storage 'sqlite:///{path}'"
    )


def test_optimize_foreign_table_says_other_application(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE studies (id INTEGER PRIMARY KEY, title TEXT)")
    connection.commit()
    connection.close()

    with pytest.raises(StorageError) as caught:
        hpo.optimize("iris", study_name="iris", storage=f"sqlite:///{path}", n_trials=1, device="cpu", space=TINY)

    message = str(caught.value)
    assert message.startswith(f"SQLite file {path} has a table that Optuna did not create (")
    assert "no such column: studies.study_id" in message
    assert "StorageInternalError" not in message


def test_open_storage_foreign_schema_version_says_other_application(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
    connection.execute("INSERT INTO alembic_version VALUES ('1f2e3d4c5b6a')")
    connection.commit()
    connection.close()

    with pytest.raises(StorageError, match="does not know: a newer Optuna wrote it, or another application owns this database"):
        open_storage(f"sqlite:///{path}", create=True)


def test_optimize_locked_database_says_locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hpo.storage

    monkeypatch.setattr(hpo.storage, "_SQLITE_BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "busy.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{path}")
    holder = sqlite3.connect(path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageError, match=f"SQLite file {path} stayed locked by another process"):
            hpo.optimize("iris", study_name="iris", storage=f"sqlite:///{path}", n_trials=1, device="cpu", space=TINY)
    finally:
        holder.rollback()
        holder.close()


def test_finalize_missing_file_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    relative = "elsewhere/study.db"

    code = main(["finalize", "--study", "ocean", "--storage", f"sqlite:///{relative}", "--out", "model"])

    assert code == 1
    assert capsys.readouterr().err == f"hpo: error: study storage not found: {tmp_path / relative}. Run 'hpo optimize' first or check --storage.\n"
    assert not (tmp_path / "elsewhere").exists()


def test_relative_sqlite_url_second_folder_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    study = hpo.optimize("iris", study_name="iris", storage="sqlite:///rel.db", n_trials=1, device="cpu", space=TINY)
    assert study._storage._backend.url == f"sqlite:///{first / 'rel.db'}"

    # Plain Optuna creates an empty rel.db in the second folder and reports a missing record.
    monkeypatch.chdir(second)
    with pytest.raises(KeyError):
        optuna.load_study(study_name="iris", storage="sqlite:///plain.db")
    assert (second / "plain.db").exists()
    with pytest.raises(StorageError, match=f"study storage not found: {second / 'rel.db'}"):
        hpo.finalize("iris", "model", storage="sqlite:///rel.db")
    assert not (second / "rel.db").exists()


def test_load_study_unknown_name_lists_studies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'two.db'}"
    optuna.create_study(study_name="alpha", storage=url)

    with pytest.raises(StudyError, match=r"study 'beta' not found in sqlite:///.*two\.db; studies there: alpha\."):
        load_study("beta", url)


@pytest.fixture()
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield port


def test_open_storage_refused_connection_names_host(closed_port: int) -> None:
    pytest.importorskip("psycopg2")
    url = f"postgresql+psycopg2://hpo:Sesame-{uuid.uuid4().hex[:6]}@127.0.0.1:{closed_port}/studies"

    with pytest.raises(StorageError) as caught:
        open_storage(url, create=False)

    message = str(caught.value)
    assert message.startswith(f"cannot connect to the database server at postgresql://127.0.0.1:{closed_port}/studies (")
    assert "Sesame" not in message


def test_open_storage_missing_database_says_create_it() -> None:
    pytest.importorskip("psycopg2")
    name = f"hpo_missing_{uuid.uuid4().hex[:8]}"

    with pytest.raises(StorageError, match=f"the database of storage postgresql://127.0.0.1:5432/{name} does not exist"):
        open_storage(f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}", create=False)


def test_open_storage_missing_named_driver_names_package() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("psycopg is installed, so postgresql+psycopg:// has its driver")

    with pytest.raises(StorageError) as caught:
        open_storage("postgresql+psycopg://postgres:Sesame-1@127.0.0.1:5432/test", create=False)

    message = str(caught.value)
    assert message.startswith(
        "the database driver for storage postgresql://127.0.0.1:5432/test is not installed (No module named 'psycopg'). "
        "Install the package that provides 'psycopg', or leave the driver out of the URL (postgresql://, mysql://)"
    )
    assert "Sesame" not in message


@pytest.mark.parametrize(
    ("url", "hidden", "extra"),
    [
        ("postgresql://postgres:Sesame-2@127.0.0.1:5432/test", ("psycopg", "psycopg2"), "postgresql"),
        ("mariadb://root:Sesame-3@127.0.0.1:3306/test", ("MySQLdb", "pymysql"), "mysql"),
    ],
)
def test_open_storage_no_driver_names_extra(monkeypatch: pytest.MonkeyPatch, url: str, hidden: tuple[str, ...], extra: str) -> None:
    for module in hidden:
        # A None entry makes Python treat the package as not installed.
        monkeypatch.setitem(sys.modules, module, None)

    with pytest.raises(StorageError) as caught:
        open_storage(url, create=False)

    message = str(caught.value)
    assert message.startswith(f"no database driver for storage {url.split(':Sesame')[0]}:***@")
    assert f"looked for {hidden[0]} or {hidden[1]}" in message
    assert message.endswith(f"Run pip install 'hpo[{extra}]'.")
    assert "Sesame" not in message


def test_translated_storage_errors_leaves_other_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a storage problem"):
        with translated_storage_errors(f"sqlite:///{tmp_path / 'x.db'}"):
            raise ValueError("not a storage problem")
