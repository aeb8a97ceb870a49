"""Pure math and state transitions. Imports numpy, torch and faiss only: never ray or kafka."""

from actors.core.errors import StreamrecError

__all__ = ["StreamrecError"]

# The hierarchical interest profile (see actors.core.profile; snapshots in actors.core.snapshot).
from actors.core.config import InvalidEventError, ProfileConfig, ProfileConfigError  # noqa: E402
from actors.core.profile import (  # noqa: E402
    Profile,
    ProfileBank,
    RingEntry,
    apply,
    apply_batch,
    new_profile,
    rebuild,
    ring_entries,
)
from actors.core.profile_query import explain, long_term_vector, negative_vector, query_vectors, session_vector  # noqa: E402
from actors.core.snapshot import SnapshotError, UnsupportedSnapshotVersion  # noqa: E402

__all__ += [
    "InvalidEventError",
    "ProfileConfig",
    "ProfileConfigError",
    "Profile",
    "ProfileBank",
    "RingEntry",
    "apply",
    "apply_batch",
    "new_profile",
    "rebuild",
    "ring_entries",
    "explain",
    "long_term_vector",
    "negative_vector",
    "query_vectors",
    "session_vector",
    "SnapshotError",
    "UnsupportedSnapshotVersion",
]
