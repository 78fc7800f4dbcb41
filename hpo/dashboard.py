"""Serve optuna-dashboard on a study's storage, read-only and on loopback unless asked otherwise.

optuna-dashboard has no login: anyone who reaches its port can rename, change or delete
studies (a DELETE request removes a study and its artifact files). So ``serve_dashboard``
opens SQLite storage in SQLite's read-only mode and hides the artifact store behind a
read-only wrapper, binds 127.0.0.1, and rejects a non-loopback host unless the caller
acknowledges that there is no authentication.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import IO, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from hpo.exceptions import InputError, StorageError
from hpo.storage import (
    ARTIFACTS_ATTR,
    mask_password,
    open_read_only_storage,
    open_storage,
    resolve_storage_url,
    sqlite_path,
    validate_study_name,
)

_logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
REMOTE_FLAG = "--allow-remote-unauthenticated"


@dataclass(frozen=True)
class DashboardInfo:
    """Address, storage and mode of a started dashboard."""

    url: str
    storage: str
    writable: bool
    artifact_dir: Path | None


class ReadOnlyArtifactStore:
    """An Optuna artifact store that reads through to another store and rejects every change."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def open_reader(self, artifact_id: str) -> IO[bytes]:
        """Open an artifact for reading."""
        return self._store.open_reader(artifact_id)

    def write(self, artifact_id: str, content_body: IO[bytes]) -> None:
        """Reject the upload: the dashboard is read-only."""
        raise PermissionError(f"the dashboard is read-only; cannot write artifact {artifact_id}. Restart it with --writable.")

    def remove(self, artifact_id: str) -> None:
        """Reject the removal: the dashboard is read-only."""
        raise PermissionError(f"the dashboard is read-only; cannot remove artifact {artifact_id}. Restart it with --writable.")


def check_host(host: str, *, allow_remote: bool) -> None:
    """Reject a host that is not a loopback address unless ``allow_remote`` acknowledges the risk.

    Raises:
        InputError: For a non-loopback host without ``allow_remote``.
    """
    if _is_loopback(host):
        return
    if not allow_remote:
        raise InputError(
            f"refusing to serve the dashboard on {host}: optuna-dashboard has no login, so anyone who can reach "
            f"the port could change or delete studies. Use an SSH tunnel to 127.0.0.1, or pass {REMOTE_FLAG} "
            "to bind it anyway."
        )
    _logger.warning("Serving the dashboard on %s without authentication: anyone who can reach it can read the studies.", host)


def serve_dashboard(
    study_name: str | None = None,
    storage: str | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    writable: bool = False,
    allow_remote: bool = False,
    on_ready: Callable[[DashboardInfo], None] | None = None,
) -> None:
    """Serve optuna-dashboard on a study's storage until interrupted.

    Args:
        study_name: The study to open first; with ``storage`` None it also selects the
            study's default SQLite file. Checked to exist in the storage.
        storage: Storage URL; every study in it is shown.
        host: Address to bind. Only loopback addresses unless ``allow_remote``.
        port: TCP port, 1..65535, or 0 for any free port (``on_ready`` receives it).
        writable: Open the storage and artifact store for writing, so that the
            dashboard can change and delete studies. By default SQLite is opened read-only.
        allow_remote: Acknowledge that a non-loopback ``host`` exposes the studies
            without authentication.
        on_ready: Called with the dashboard's URL once the server listens.

    Raises:
        InputError: For a missing study name and storage, a bad port or a refused host.
        StudyError: When ``study_name`` is not in the storage.
        StorageError: When the storage is missing, not an Optuna storage, or unreadable.
    """
    if study_name is None and storage is None:
        raise InputError("give --study NAME or --storage URL to choose the studies to show.")
    if not 0 <= port <= 65535:
        raise InputError(f"port must be 0..65535; got {port}.")
    check_host(host, allow_remote=allow_remote)
    name = validate_study_name(study_name) if study_name is not None else None
    url = resolve_storage_url(storage, name or "unused")

    rdb_storage = _open(url, writable=writable)
    study_id = _study_id(rdb_storage, name, url)
    artifact_dir = _artifact_dir(rdb_storage, study_id)
    app = _build_app(rdb_storage, artifact_dir, writable=writable)

    server_class = _ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer
    server = make_server(host, port, app, server_class=server_class, handler_class=_LoggingRequestHandler)
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    page = f"/dashboard/studies/{study_id}" if study_id is not None else "/dashboard"
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    info = DashboardInfo(f"http://{url_host}:{bound_port}{page}", mask_password(url), writable, artifact_dir)
    _logger.info("Dashboard on %s for %s (%s).", info.url, info.storage, "writable" if writable else "read-only")
    if on_ready is not None:
        on_ready(info)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def _open(url: str, *, writable: bool) -> optuna.storages.RDBStorage:
    if writable:
        return open_storage(url, create=False)
    if sqlite_path(url) is None:
        # NOTE: only SQLite has a read-only mode that hpo can switch on. On PostgreSQL or
        # MySQL, browsing is safe only as a database user with SELECT grants.
        _logger.warning("Read-only mode covers SQLite files only; %s is opened with the URL's own permissions.", mask_password(url))
    return open_read_only_storage(url)


def _study_id(storage: optuna.storages.RDBStorage, name: str | None, url: str) -> int | None:
    from hpo.exceptions import StudyError

    if name is None:
        return None
    try:
        return storage.get_study_id_from_name(name)
    except KeyError as err:
        known = ", ".join(sorted(s.study_name for s in storage.get_all_studies())) or "none"
        raise StudyError(f"study {name!r} not found in {mask_password(url)}; studies there: {known}.") from err


def _artifact_dir(storage: optuna.storages.RDBStorage, study_id: int | None) -> Path | None:
    studies = storage.get_all_studies()
    folders = []
    for frozen in studies:
        folder = frozen.user_attrs.get(ARTIFACTS_ATTR)
        if folder and (study_id is None or frozen._study_id == study_id):
            folders.append(Path(folder))
    existing = sorted({folder for folder in folders if folder.is_dir()})
    if not existing:
        return None
    if len(existing) > 1:
        # NOTE: optuna-dashboard takes one artifact store, so only one folder's artifacts open.
        _logger.warning("Studies in this storage use %d artifact folders; showing artifacts from %s only.", len(existing), existing[0])
    return existing[0]


def _build_app(storage: optuna.storages.RDBStorage, artifact_dir: Path | None, *, writable: bool) -> Any:
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    store: Any = None
    if artifact_dir is not None:
        store = FileSystemArtifactStore(str(artifact_dir))
        if not writable:
            store = ReadOnlyArtifactStore(store)
    try:
        return optuna_dashboard.wsgi(storage, artifact_store=store)
    except Exception as err:  # optuna-dashboard raises many types for one unusable storage
        raise StorageError(f"optuna-dashboard cannot use this storage: {type(err).__name__}: {err}") from err


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _LoggingRequestHandler(WSGIRequestHandler):
    """Log each request at DEBUG on hpo's logger instead of printing it to stderr."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the name is fixed by http.server
        _logger.debug("%s %s", self.address_string(), format % args)
