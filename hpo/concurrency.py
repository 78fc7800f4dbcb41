"""Storage settings and retries that let many worker processes share one study."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

_logger = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds a SQLite connection waits for another writer's lock before it reports "database is locked".
SQLITE_BUSY_TIMEOUT_S = 60
# Attempts of one storage call before its error is raised; the waits between them grow to ~8 s.
STORAGE_ATTEMPTS = 6
_FIRST_WAIT_S = 0.25
# Lower-case parts of the messages of SQLite, PostgreSQL and MySQL/MariaDB errors that pass.
_TRANSIENT_MARKERS = (
    "database is locked", "database table is locked", "busy", "deadlock", "lock wait timeout",
    "could not serialize", "server closed the connection", "connection refused", "could not connect",
    "gone away", "lost connection", "terminating connection",
)


def sqlite_engine_kwargs() -> dict[str, Any]:
    """Return the ``engine_kwargs`` of a SQLite ``RDBStorage``: the busy timeout, in seconds."""
    return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}


def server_engine_kwargs() -> dict[str, Any]:
    """Return the ``engine_kwargs`` of a PostgreSQL or MySQL ``RDBStorage``.

    ``pool_pre_ping`` replaces connections that the server closed while a long trial ran.
    """
    return {"pool_pre_ping": True}


def configure_sqlite(engine: Engine) -> None:
    """Make every later connection of ``engine`` safe for several writing processes.

    - WAL journal mode: readers (such as optuna-dashboard) never block writers, and
      writers never block readers. The mode is stored in the file, so it holds for
      every later connection, including other programs'.
    - ``BEGIN IMMEDIATE`` for every transaction: Optuna reads a row and then updates it in
      one transaction. With SQLite's default deferred ``BEGIN``, two processes doing that
      at once make one of them fail at once with "database is locked", whatever the busy
      timeout. Taking the write lock at ``BEGIN`` makes the second one wait instead.
    - ``synchronous=NORMAL``: in WAL mode a commit survives a crash of the process; only a
      power loss can undo the last commits.
    - ``wal_autocheckpoint=1``: each commit also copies the log into the database file
      (unless a reader still needs the old pages), so that a copy of the ``.db`` file alone,
      without its ``-wal`` file, still holds every finished run.

    Connections that ``engine`` already holds are closed, so that all of them get these
    settings.

    NOTE: WAL needs a local file system; on NFS, use PostgreSQL or MySQL for many workers.
    """
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    engine.dispose()


def call_with_retries(what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``function``, retrying when the database reports a lock, deadlock or lost connection.

    Only transient operational errors are retried, with growing random waits; every other
    error is raised at once. ``what`` names the call in the warning logged for each retry.
    A call that failed this way made no change, because its transaction was rolled back.

    Raises:
        The last error, after ``STORAGE_ATTEMPTS`` attempts.
    """
    for attempt in range(1, STORAGE_ATTEMPTS + 1):
        try:
            return function(*args, **kwargs)
        except (optuna.exceptions.StorageInternalError, OperationalError, DBAPIError) as err:
            if not is_transient(err) or attempt == STORAGE_ATTEMPTS:
                raise
            wait = _FIRST_WAIT_S * 2 ** (attempt - 1) * (0.5 + random.random())
            _logger.warning("Storage call %s failed (%s); retry %d of %d in %.1f s.", what, short_error(err), attempt, STORAGE_ATTEMPTS - 1, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` (or its cause) is a lock, deadlock or connection error worth retrying.

    A full disk, a read-only file or a missing table is not: retrying changes nothing.
    """
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, DBAPIError) and cause.connection_invalidated:
            return True
        if isinstance(cause, OperationalError) and any(marker in str(cause).lower() for marker in _TRANSIENT_MARKERS):
            return True
        cause = cause.__cause__
    return False


def short_error(err: BaseException) -> str:
    """Return the type and first line of ``err``'s cause, such as the database's "database is locked".

    The text of Optuna's ``StorageInternalError`` blames the commit; the driver's error is its cause.
    """
    cause = err.__cause__ or err
    first_line = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return f"{type(cause).__name__}: {first_line}"[:200]


def _on_sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Stop the sqlite3 module from emitting its own deferred BEGIN; _on_sqlite_begin emits one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA wal_autocheckpoint=1")
    finally:
        cursor.close()


def _on_sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")
