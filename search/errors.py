"""The errors a user can cause, each one line on stderr and exit status 2 (search/cli/__init__.py).

Defined here, without torch, so the command line can name them before anything heavy is
imported; the modules that raise them import them from here.
"""
from __future__ import annotations

from reports.table import ReportError
from spaces import ConfigError
from search.train.errors import DataError
from storage import StorageError


class UsageError(Exception):
    """Bad input on the command line."""


class StudyMismatch(ValueError):
    """The named study exists but was made with another spec, or does not exist (join)."""


class DashboardError(ValueError):
    """The port is taken, the host unknown, or the storage file missing."""


USER_ERRORS = (UsageError, ConfigError, StorageError, DataError, StudyMismatch,
               DashboardError, ReportError)
