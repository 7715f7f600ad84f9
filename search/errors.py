"""The errors a user can cause that the CLI turns into one line and exit status 2.

They live here, apart from the modules that raise them, so that `search.cli` can catch them
without importing torch (search.data) or the whole search (search.study): `studies`,
`report`, `plots` and `dashboard` start in about a second.
"""


class DataError(RuntimeError):
    """The data the user pointed at cannot be loaded; the message says why and what to do."""


class StudyMismatch(ValueError):
    """The named study exists but was made for another model or space."""
