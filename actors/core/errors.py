"""Root of the streamrec exception hierarchy.

Each folder adds a few narrow subclasses; messages carry ids and, where a record
is involved, ``topic[partition]@offset``. Errors that need a human say what to do.
"""

__all__ = ["StreamrecError"]


class StreamrecError(Exception):
    """Base class of every error streamrec raises on purpose."""
