"""What a storage fault that was ridden out says on the terminal: one line of ours, now and then.

A lost connection is retried (storage/resilient.py), but Optuna and SQLAlchemy also log it on
their own: Optuna's RDBStorage warns "Caught an error from sqlalchemy: ..." with the whole
SQLAlchemy message (the SQL text, its parameters, a link: 9 lines), SQLAlchemy's pool logs a
connection it failed to reset or close with its traceback. A storm of dropped connections made
dozens of such lines (issue 24). So:
- `quiet_driver_logs()` drops those records when what they report is a storage fault, which
  the retry loop handles and reports itself; anything else (a bug) still gets through, Optuna's
  warning cut to its first line, without the SQL;
- `Reconnects` says, when a call succeeds after retries, one line: what was lost and how many
  retries so far, at most once a minute per process, so a storm is a line, not one per drop.
An outage that outlasts the patience says nothing here: its one error line is StorageUnavailable.
"""
from __future__ import annotations

import logging
import sys
import threading
import time

from storage import internals
from storage.faults import classify

log = logging.getLogger(__name__)  # unconfigured: Python prints WARNING lines as they are
SAY_EVERY_SECONDS = 60.0   # a storm of drops says one line a minute per process, at most
# SQLAlchemy's pools log on the logger of their class, not on a parent whose filter would see it.
POOL_LOGGERS = ("sqlalchemy.pool.impl.QueuePool", "sqlalchemy.pool.impl.NullPool")


class _StorageFaultsAreOurs(logging.Filter):
    """Drop a record that reports a storage fault (the retry loop says it); cut the rest to one
    line when it comes from Optuna, whose messages carry the SQL."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Optuna logs inside its `except` without exc_info; SQLAlchemy passes exc_info.
        error = (record.exc_info[1] if record.exc_info and record.exc_info[1] is not None
                 else sys.exc_info()[1])
        if error is not None and classify(error) is not None:
            return False
        if record.name == internals.OPTUNA_RDB_LOGGER:
            lines = record.getMessage().split("[SQL:")[0].strip().splitlines() or [""]
            record.msg, record.args = lines[0][:300], ()
        return True


_filter = _StorageFaultsAreOurs()


def quiet_driver_logs() -> None:
    """Install the filter on Optuna's RDB storage logger and SQLAlchemy's pool loggers (once:
    a logger holds a filter object once however often it is added)."""
    for name in (internals.OPTUNA_RDB_LOGGER, *POOL_LOGGERS):
        logging.getLogger(name).addFilter(_filter)


class Reconnects:
    """Counts the retries after transient faults of one storage in this process and says, now
    and then, that they happened."""

    def __init__(self, name: str):
        self.name, self.retries, self.said_at = name, 0, None
        self.lock = threading.Lock()   # the heartbeat's thread retries beside the main one

    def __getstate__(self) -> dict:    # a worker process counts its own
        return {"name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"])

    def retried(self) -> None:
        """A call failed with a transient fault and is about to be run again."""
        with self.lock:
            self.retries += 1

    def back(self, what: str) -> None:
        """A call that was retried after `what` (the last fault) succeeded."""
        now = time.monotonic()
        with self.lock:
            if self.said_at is not None and now - self.said_at < SAY_EVERY_SECONDS:
                return
            self.said_at, retries = now, self.retries
        log.warning(f"storage {self.name}: {what}; carried on after retrying "
                    f"({retries} {'retry' if retries == 1 else 'retries'} so far)")
