"""Storage URL -> Optuna storage (SQLite by default, a journal file, PostgreSQL) that rides out
outages of its database, with heartbeat and retry of trials whose worker died, the artifact
store that lives beside it, a background writer for a running trial, and the lock that
serialises the decisions about what runs next."""
from storage.artifacts import folder_fault
from storage.faults import StorageFailure, StorageFault, StorageUnavailable, first_line
from storage.lock import study_lock
from storage.open import (DEFAULT_PATIENCE_SECONDS, DEFAULT_STORAGE, StorageError,
                          artifact_dir, artifact_store, check_url, check_writable, open_storage,
                          redact, sqlalchemy_url, storage_kind)
from storage.retries import MAX_TRIES, retry_callback
from storage.sqlite import keep_signals_off_this_thread
from storage.store import Store, open_store
from storage.writer import TrialWriter

__all__ = ["DEFAULT_PATIENCE_SECONDS", "DEFAULT_STORAGE", "MAX_TRIES", "StorageError",
           "StorageFailure", "StorageFault", "StorageUnavailable", "TrialWriter", "artifact_dir",
           "artifact_store", "check_url", "check_writable", "first_line", "folder_fault",
           "keep_signals_off_this_thread", "open_storage", "redact", "retry_callback",
           "sqlalchemy_url", "storage_kind", "study_lock", "Store", "open_store"]
