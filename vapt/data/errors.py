"""The one error every vapt data check raises (kept apart so registries can raise it without Lightning)."""
from __future__ import annotations


class DataError(ValueError):
    """A dataset on disk does not match what the configuration expects."""
