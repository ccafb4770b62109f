"""Typed errors of the containerd bridge (flavour-neutral).

gRPC status codes and transport failures are translated once, in `_aio.py`, so
no grpclib exception ever reaches trio code.
"""

from __future__ import annotations

from kernel import errors


class ContainerdError(errors.DaemonError):
    """A containerd call failed; `message` is containerd's own text. Each class is also
    the daemon error class the API maps to a status code."""


class NotFound(ContainerdError, errors.NotFound):
    pass


class AlreadyExists(ContainerdError, errors.Conflict):
    pass


class FailedPrecondition(ContainerdError, errors.Conflict):
    pass


class InvalidArgument(ContainerdError, errors.InvalidParameter):
    pass


class ContainerdUnavailable(ContainerdError, errors.Unavailable):
    """containerd cannot be reached: socket gone, connection lost, deadline hit."""

    def __init__(self, message: str = "containerd is not available") -> None:
        super().__init__(message)


class EventStreamBroken(ContainerdError):
    """The events subscription lost events (subscriber too slow); resubscribe and
    reconcile with `list_tasks`."""


class ContainerdStartFailed(ContainerdError):
    """Our managed containerd exited or did not answer in time at start."""
