"""Errors of the wiring layer."""

from actors.core.errors import StreamrecError

__all__ = ["ConfigError"]


class ConfigError(StreamrecError):
    """Settings are missing or inconsistent; the message says which and how to fix it."""
