"""Storage URLs, study creation and loading: the only module that builds an Optuna storage."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from hpo.concurrency import configure_sqlite, server_engine_kwargs, sqlite_engine_kwargs
from hpo.exceptions import InputError, StorageError, StudyError
from hpo.storage_errors import describe_folder_error, describe_storage_error, translated_storage_errors

_logger = logging.getLogger(__name__)

STUDY_DIR_ENV = "HPO_STUDY_DIR"
# Storage URL used when no --storage is given, so that a password stays off command lines.
STORAGE_ENV = "HPO_STORAGE"
DEFAULT_STUDY_DIR = "study_db"
SETTINGS_ATTR = "hpo_settings"
ARTIFACTS_ATTR = "hpo_artifact_dir"
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# Seconds a SQLite connection waits for another writer's lock before it reports "database is locked".
_SQLITE_BUSY_TIMEOUT_S = 60
# Tables that every Optuna RDB storage has, whatever its schema version.
_OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})
# Drivers of a server URL that names none, as (SQLAlchemy driver name, module), first
# installed wins. SQLAlchemy 2.1 alone would pick only the first of each, psycopg 3 and
# mysqlclient, while hpo's extras install psycopg2 and PyMySQL.
_SERVER_DRIVERS = {
    "postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2")),
    "mysql": (("mysqldb", "MySQLdb"), ("pymysql", "pymysql")),
}
# Dialect names that mean one of the above. Optuna 5.1 uses its MySQL upsert statements
# only when the engine is named "mysql"; SQLAlchemy's mysql dialect detects MariaDB itself.
_BACKEND_ALIASES = {"postgres": "postgresql", "mariadb": "mysql"}
_SERVER_EXTRAS = {"postgresql": "postgresql", "mysql": "mysql"}


def validate_study_name(name: str) -> str:
    """Return ``name`` if it is a plain name (letters, digits, ``_``, ``.``, ``-``; at most 100).

    Raises:
        InputError: For any other name, since it becomes part of a file name.
    """
    if not _STUDY_NAME.match(name) or name in (".", ".."):
        raise InputError(
            f"invalid study name {name!r}; use letters, digits, '_', '.' or '-' (at most 100, "
            "starting with a letter or digit)."
        )
    return name


def study_dir() -> Path:
    """Folder of the default SQLite files: ``$HPO_STUDY_DIR`` or ``./study_db``, as an absolute path."""
    return Path(os.environ.get(STUDY_DIR_ENV, DEFAULT_STUDY_DIR)).expanduser().resolve()


def default_storage_url(study_name: str) -> str:
    """Return the SQLite URL of a study's default file, ``study_db/<study>.db``."""
    return f"sqlite:///{study_dir() / f'{study_name}.db'}"


def resolve_storage_url(url: str | None, study_name: str) -> str:
    """Return ``url``, else ``$HPO_STORAGE``, else the study's default SQLite URL.

    A relative SQLite path is made absolute against the current folder, so that the
    URL printed and stored names one file whatever folder a later command runs in.

    Raises:
        InputError: When the URL cannot be parsed.
    """
    if url is None:
        url = os.environ.get(STORAGE_ENV) or None
    if url is None:
        return default_storage_url(study_name)
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise InputError(f"invalid storage URL {mask_password(url)!r}; expected e.g. sqlite:///path/to/file.db or postgresql://user@host/db.") from err
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        absolute = Path(parsed.database).expanduser().resolve()
        return parsed.set(database=str(absolute)).render_as_string(hide_password=False)
    return url


def mask_password(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``, for logs and messages."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)


def with_installed_driver(url: str) -> str:
    """Return the URL that the storage engine opens: ``url`` with an installed driver named.

    ``postgresql://`` gets psycopg (3) or else psycopg2, ``mysql://`` and ``mariadb://``
    get mysqlclient or else PyMySQL, whichever is installed. ``postgres://`` is read as
    ``postgresql://``, and ``mariadb`` URLs open as ``mysql`` ones, which reach MariaDB
    servers too. A URL that names a driver keeps it; SQLite URLs are returned unchanged.

    Raises:
        StorageError: When no driver for the URL's database is installed; the message names
            the hpo extra to install.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # open_storage reports the invalid URL
    backend = _BACKEND_ALIASES.get(parsed.get_backend_name(), parsed.get_backend_name())
    if backend not in _SERVER_DRIVERS:
        return url
    if "+" in parsed.drivername:
        driver = parsed.get_driver_name()
    else:
        installed = [name for name, module in _SERVER_DRIVERS[backend] if importlib.util.find_spec(module) is not None]
        if not installed:
            choices = " or ".join(module for _, module in _SERVER_DRIVERS[backend])
            raise StorageError(
                f"no database driver for storage {mask_password(url)} is installed (looked for {choices}). "
                f"Run pip install 'hpo[{_SERVER_EXTRAS[backend]}]'."
            )
        driver = installed[0]
    return parsed.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """Return the file of a SQLite URL, or None for other storages."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def open_storage(url: str, *, create: bool) -> optuna.storages.RDBStorage:
    """Open an RDB storage.

    Args:
        url: A resolved storage URL.
        create: Whether a missing SQLite file (and its folder) may be created. Reading
            commands pass False, so that a typo never leaves an empty database behind.

    Raises:
        StorageError: When the storage cannot be opened.
    """
    path = sqlite_path(url)
    engine_kwargs: dict[str, Any] = server_engine_kwargs()
    if path is not None:
        if not path.exists():
            if not create:
                raise StorageError(f"study storage not found: {path}. Run 'hpo optimize' first or check --storage.")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StorageError(describe_folder_error(err, path)) from err
        engine_kwargs = sqlite_engine_kwargs()
    engine_url = with_installed_driver(url)
    try:
        storage = optuna.storages.RDBStorage(engine_url, engine_kwargs=engine_kwargs)
        if path is not None:
            configure_sqlite(storage.engine)
        return storage
    except Exception as err:  # SQLAlchemy, drivers and Optuna's schema check raise many types
        raise StorageError(describe_storage_error(err, url)) from err


def load_study(study_name: str, storage_url: str) -> optuna.Study:
    """Load an existing study without creating anything.

    Raises:
        StudyError: When no study of that name exists in the storage.
        StorageError: When the storage cannot be opened.
    """
    storage = open_storage(storage_url, create=False)
    try:
        with translated_storage_errors(storage_url):
            return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as err:
        with translated_storage_errors(storage_url):
            names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        known = ", ".join(names) if names else "none"
        raise StudyError(f"study {study_name!r} not found in {mask_password(storage_url)}; studies there: {known}.") from err


def find_study(study_name: str) -> str | None:
    """Return the default SQLite URL of ``study_name`` if its file exists, else None."""
    url = default_storage_url(study_name)
    path = sqlite_path(url)
    return url if path is not None and path.exists() else None


def study_settings(study: optuna.Study) -> dict[str, Any]:
    """Return the settings hpo stored on the study when it was created.

    Raises:
        StudyError: When the study was not created by hpo.
    """
    settings = study.user_attrs.get(SETTINGS_ATTR)
    if not isinstance(settings, dict):
        raise StudyError(f"study {study.study_name!r} was not created by hpo (no {SETTINGS_ATTR!r} attribute).")
    return settings


def artifact_dir(storage_url: str, study_name: str) -> Path:
    """Folder of the study's artifact store: beside a SQLite file, else under ``study_db/``."""
    path = sqlite_path(storage_url)
    if path is not None:
        return path.parent / f"{path.stem}.artifacts"
    return study_dir() / f"{study_name}.artifacts"


def open_read_only_storage(url: str) -> optuna.storages.RDBStorage:
    """Open an existing storage for reading only.

    A SQLite file is opened in SQLite's read-only mode, so no statement through this
    storage can change or delete a study or take a write lock. Other databases are opened
    as usual, because read-only access there is a matter of the database user's grants.

    Raises:
        StorageError: When the SQLite file is missing or is not an Optuna storage, or
            the storage cannot be opened.
    """
    path = sqlite_path(url)
    if path is None:
        return open_storage(url, create=False)
    if not path.is_file():
        raise StorageError(f"study storage not found: {path}. Run 'hpo optimize' first or check --storage.")
    _check_optuna_tables(path)
    # SQLite URI filenames must be percent-encoded; see https://www.sqlite.org/uri.html
    read_only_url = f"sqlite:///file:{quote(str(path))}?mode=ro&uri=true"
    engine_kwargs = {"connect_args": {"timeout": _SQLITE_BUSY_TIMEOUT_S}}
    try:
        return optuna.storages.RDBStorage(read_only_url, engine_kwargs=engine_kwargs, skip_table_creation=True)
    except Exception as err:  # SQLAlchemy, drivers and Optuna's schema check raise many types
        raise StorageError(describe_storage_error(err, url)) from err


def _check_optuna_tables(path: Path) -> None:
    try:
        connection = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            connection.close()
    except sqlite3.Error as err:
        raise StorageError(f"cannot read {path} as a SQLite database: {err}. Check --storage.") from err
    missing = sorted(_OPTUNA_TABLES - tables)
    if missing:
        raise StorageError(f"{path} is not an Optuna storage (no table {', '.join(missing)}). Check --storage.")
