"""Storage URL -> Optuna storage (SQLite by default, a journal file, PostgreSQL), with heartbeat
and retry of trials whose worker died, the artifact store that lives beside it, and the lock
that serialises the decisions about what runs next."""
from storage.lock import study_lock
from storage.open import (DEFAULT_STORAGE, StorageError, artifact_dir, artifact_store,
                          check_url, open_storage, redact, sqlalchemy_url)

__all__ = ["DEFAULT_STORAGE", "StorageError", "artifact_dir", "artifact_store", "check_url",
           "open_storage", "redact", "sqlalchemy_url", "study_lock"]
