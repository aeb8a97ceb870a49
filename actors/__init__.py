"""Stateful units of streamrec as plain classes (profile workers, encoder shards).

Ray options are applied in :mod:`cluster`; the pure math lives in :mod:`actors.core`.
"""
