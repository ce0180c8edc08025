"""What every data module shares: a sample is ``(image path, label)``; a dataset that cannot be used raises
:class:`DataError` (a leaf module, so the readers and the DataModule base can all import it)."""
from __future__ import annotations

Sample = tuple[str, int]


class DataError(ValueError):
    """A dataset on disk does not match what the configuration expects."""
