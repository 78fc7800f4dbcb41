"""Turn storage failures into one line that names the real cause, the file or host, and a fix.

Optuna wraps most database errors in ``StorageInternalError``, whose text blames "invalid
data" while the real cause ("database is locked", "disk is full", "readonly database")
sits in ``__cause__``. An unusable schema surfaces as a plain ``RuntimeError``. This module
walks the exception chain to the database driver's error and words the message from it.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from hpo.exceptions import StorageError

# Exceptions that mean "the storage failed", as opposed to a bug or bad input.
STORAGE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    optuna.exceptions.StorageInternalError,
    sqlalchemy.exc.SQLAlchemyError,
    sqlite3.Error,
)
# Phrases of database errors that mean a table exists with columns Optuna did not create.
_FOREIGN_TABLE_PHRASES = ("no such column", "has no column named", "unknown column", "does not exist", "no such table")


@contextmanager
def translated_storage_errors(url: str) -> Iterator[None]:
    """Re-raise storage failures inside the block as ``StorageError`` with a plain message.

    Args:
        url: The storage URL in use; its password never appears in the message.

    Raises:
        StorageError: For any exception in ``STORAGE_EXCEPTIONS`` raised inside the block.
    """
    try:
        yield
    except STORAGE_EXCEPTIONS as err:
        raise StorageError(describe_storage_error(err, url)) from err


class StopOnStorageError:
    """Wrap an objective so that a storage failure inside a trial stops the study.

    Optuna's ``catch`` would record such a failure as one more failed trial and go on,
    although every following trial fails the same way. The wrapper keeps the first
    error in ``error`` for the caller to raise once ``study.optimize`` returns.
    """

    def __init__(self, objective: Callable[[optuna.Trial], float]) -> None:
        self.objective = objective
        self.error: BaseException | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self.objective(trial)
        except STORAGE_EXCEPTIONS as err:
            if self.error is None:
                self.error = err
            trial.study.stop()
            raise

    def raise_error(self, url: str) -> None:
        """Raise the stored storage failure as ``StorageError``; do nothing when there was none."""
        if self.error is not None:
            raise StorageError(describe_storage_error(self.error, url)) from self.error


def describe_storage_error(err: BaseException, url: str) -> str:
    """Return a one-line message for a failure of the storage at ``url``.

    The message names the SQLite file (as an absolute path) or the database host, states
    the cause found at the bottom of the exception chain, and says what to do. The
    password of ``url`` is masked, also where a driver message repeats it.
    """
    cause = root_cause(err)
    text = _first_line(cause)
    lowered = text.lower()
    path = _sqlite_file(url)
    message = _schema_message(cause, url)
    if message is None and isinstance(cause, ModuleNotFoundError):
        message = _driver_message(cause, url)
    if message is None:
        message = _sqlite_message(path, lowered, text) if path is not None else _server_message(url, lowered, text)
    if message is None:
        message = f"storage {_where(url)} failed: {type(cause).__name__}: {text}"
    return hide_password(message, url)


def describe_folder_error(err: OSError, path: Path) -> str:
    """Return a one-line message for a SQLite file whose folder cannot be created."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    return (
        f"cannot create the folder {path.parent} for SQLite file {path}: {reason}. "
        "Choose a writable location with --storage or HPO_STUDY_DIR."
    )


def root_cause(err: BaseException) -> BaseException:
    """Return the innermost exception of ``err``'s chain: the driver's own error, as a rule."""
    seen = {id(err)}
    current = err
    while True:
        following = current.__cause__ or current.__context__
        if following is None or id(following) in seen:
            return current
        seen.add(id(following))
        current = following


def hide_password(text: str, url: str) -> str:
    """Return ``text`` with every occurrence of ``url``'s password replaced by ``***``."""
    try:
        password = make_url(url).password
    except ArgumentError:
        return text
    if not password:
        return text
    return text.replace(str(password), "***")


def _schema_message(cause: BaseException, url: str) -> str | None:
    # Optuna's schema check raises a bare RuntimeError whose text names the fix.
    if not isinstance(cause, RuntimeError):
        return None
    text = str(cause)
    masked = _masked(url)
    if "optuna storage upgrade" in text:
        return (
            f"storage {_where(url)} was created by an older Optuna and needs a schema upgrade; "
            f"back it up, then run: optuna storage upgrade --storage '{masked}'"
        )
    if "no longer compatible with the table schema" in text:
        return (
            f"storage {_where(url)} holds a schema revision that Optuna {optuna.__version__} does not know: "
            "a newer Optuna wrote it, or another application owns this database. "
            "Upgrade Optuna, or give hpo a database or file of its own."
        )
    return None


def _driver_message(cause: ModuleNotFoundError, url: str) -> str:
    return (
        f"the database driver for storage {_where(url)} is not installed ({cause}). Install the package that "
        f"provides {cause.name!r}, or leave the driver out of the URL (postgresql://, mysql://) so that hpo "
        "uses the one that pip install 'hpo[postgresql]' or 'hpo[mysql]' installs."
    )


def _sqlite_message(path: Path, lowered: str, text: str) -> str | None:
    folder = path.parent
    if "unable to open database file" in lowered:
        if not folder.is_dir():
            return f"cannot open SQLite file {path}: the folder {folder} does not exist. Create it or fix --storage."
        if not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
            return f"cannot create SQLite file {path}: no permission to write in the folder {folder}. Choose another --storage location or fix the folder's permissions."
        if path.exists() and not os.access(path, os.R_OK):
            return f"cannot open SQLite file {path}: no permission to read it. Fix its permissions."
        return f"cannot open SQLite file {path} ({text}). Check that the path is a file and its folder is writable."
    if "readonly database" in lowered or "read-only" in lowered:
        if not os.access(path, os.W_OK):
            where = "the file has no write permission"
        elif not os.access(folder, os.W_OK | os.X_OK):
            where = f"its folder {folder} has no write permission, and SQLite needs one for its journal"
        else:
            where = "its filesystem is read-only"
        return f"cannot write SQLite file {path}: {where}. Make it writable, or copy the study to a writable place."
    if "database or disk is full" in lowered or "no space left" in lowered:
        return f"cannot write SQLite file {path}: the disk is full ({_free_space(folder)} free on its filesystem). Free some space or move the study with --storage."
    if "disk i/o error" in lowered:
        size_limit = _file_size_limit()
        if size_limit is not None:
            return (
                f"cannot write SQLite file {path}: disk I/O error, and this process may write files of at most "
                f"{size_limit} bytes (ulimit -f). Raise the limit or move the study with --storage."
            )
        return f"cannot write SQLite file {path}: disk I/O error ({_free_space(folder)} free on its filesystem). Check the disk and its free space."
    if "not a database" in lowered:
        return f"{path} is not a SQLite database. Point --storage at a study file, or move that file away."
    if "database is locked" in lowered:
        return (
            f"SQLite file {path} stayed locked by another process until the wait ran out ({text}). "
            "Retry when the other process is done, or use PostgreSQL or MySQL for many parallel workers."
        )
    if any(phrase in lowered for phrase in _FOREIGN_TABLE_PHRASES):
        return _foreign_table_message(f"SQLite file {path}", text)
    return None


def _server_message(url: str, lowered: str, text: str) -> str | None:
    where = _where(url)
    if "password authentication failed" in lowered or "access denied" in lowered:
        return f"the database server at {where} rejected the login ({text}). Check the user and password, set in HPO_STORAGE or the config file."
    if ("database" in lowered and "does not exist" in lowered) or "unknown database" in lowered:
        return f"the database of storage {where} does not exist ({text}). Create it first, e.g. with createdb or CREATE DATABASE."
    if any(phrase in lowered for phrase in ("connection refused", "could not connect", "can't connect", "could not translate host", "timeout expired", "name or service not known")):
        return f"cannot connect to the database server at {where} ({text}). Check that the server runs and the host and port of the storage URL."
    if any(phrase in lowered for phrase in _FOREIGN_TABLE_PHRASES):
        return _foreign_table_message(f"storage {where}", text)
    return None


def _foreign_table_message(where: str, text: str) -> str:
    return (
        f"{where} has a table that Optuna did not create ({text}); another application uses this database. "
        "Give hpo a database or file of its own."
    )


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError as err:
        return "unknown" if err.errno != errno.ENOENT else "no folder"
    return f"{free / 2**20:.1f} MiB"


def _file_size_limit() -> int | None:
    """Return the process's maximum file size in bytes (``ulimit -f``), or None when unlimited."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def _sqlite_file(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve()


def _where(url: str) -> str:
    """Name the SQLite file, or the server, port and database of another storage."""
    path = _sqlite_file(url)
    if path is not None:
        return str(path)
    try:
        parsed = make_url(url)
    except ArgumentError:
        return _masked(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.get_backend_name()}://{parsed.host or 'localhost'}{port}/{parsed.database or ''}"


def _masked(url: str) -> str:
    from hpo.storage import mask_password

    return mask_password(url)
