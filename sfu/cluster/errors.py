"""Cluster errors: what a caller of the registry, directory or bus may have to handle."""

from __future__ import annotations


class ClusterError(Exception):
    """Base class of the cluster's errors."""


class ClusterUnavailable(ClusterError):
    """The shared state (Redis) cannot be reached: cluster-wide operations fail while the
    node keeps serving the rooms it holds itself."""


class RoomNotFound(ClusterError):
    """The directory has no such room."""
