"""Storage URL -> Optuna storage (SQLite by default, a journal file, PostgreSQL), with heartbeat
and retry of trials whose worker died, and the artifact store that lives beside it."""
from storage.open import (DEFAULT_STORAGE, StorageError, artifact_dir, artifact_store,
                          check_url, open_storage, redact, sqlalchemy_url)

__all__ = ["DEFAULT_STORAGE", "StorageError", "artifact_dir", "artifact_store", "check_url",
           "open_storage", "redact", "sqlalchemy_url"]
