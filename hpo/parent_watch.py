"""Stop a spawned worker when the ``hpo optimize`` process that started it is gone.

``hpo optimize --workers N`` passes its process id to each worker in ``$HPO_PARENT_PID``.
When that process is killed with SIGKILL, it cannot stop its workers, and they would run
the whole queue on their own. So a daemon thread in each worker compares ``os.getppid()``
with that id. Once they differ, the worker has been handed to another parent, and the
thread sends the worker SIGTERM. The worker then stops as on the parent's own SIGTERM: its
running trial is marked as interrupted and queued again. A worker that a user started with
``hpo worker`` has no ``$HPO_PARENT_PID`` and is not watched.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

_logger = logging.getLogger(__name__)

# Environment variable with the process id of the ``hpo optimize`` process that started a worker.
PARENT_PID_ENV = "HPO_PARENT_PID"
# Seconds between two checks of the parent process id.
POLL_INTERVAL_S = 0.5


class ParentWatch:
    """A daemon thread that sends this process SIGTERM once its parent process is gone."""

    def __init__(self, parent_pid: int, interval: float = POLL_INTERVAL_S) -> None:
        self.parent_pid = parent_pid
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpo-parent-watch", daemon=True)

    @classmethod
    def from_env(cls) -> ParentWatch | None:
        """Return a watch of the process named in ``$HPO_PARENT_PID``, or None when it is unset or invalid."""
        value = os.environ.get(PARENT_PID_ENV, "")
        if not value.isdigit():
            if value:
                _logger.warning("Ignoring %s=%r, which is not a process id; this worker does not watch its parent.", PARENT_PID_ENV, value)
            return None
        return cls(int(value))

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; it ends within one poll interval."""
        self._stop.set()

    def _run(self) -> None:
        # Checked before the first wait too: the parent may have died while this worker started.
        while not self._stop.is_set():
            if os.getppid() != self.parent_pid:
                _logger.warning(
                    "The hpo optimize process (pid %d) that started this worker is gone; stopping as on SIGTERM.", self.parent_pid
                )
                # Sent to the main thread, so that a sleep or a blocking call there is cut short at once.
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
                return
            self._stop.wait(self.interval)
