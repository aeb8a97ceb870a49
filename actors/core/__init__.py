"""Pure math and state transitions. Imports numpy, torch and faiss only: never ray or kafka."""

from actors.core.errors import StreamrecError

__all__ = ["StreamrecError"]
