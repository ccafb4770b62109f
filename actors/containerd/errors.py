"""Typed errors of the containerd bridge (flavour-neutral).

gRPC status codes and transport failures are translated once, in `_aio.py`, so
no grpclib exception ever reaches trio code.
"""

from __future__ import annotations


class ContainerdError(Exception):
    """A containerd call failed; `message` is containerd's own text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ContainerdError):
    pass


class AlreadyExists(ContainerdError):
    pass


class FailedPrecondition(ContainerdError):
    pass


class InvalidArgument(ContainerdError):
    pass


class ContainerdUnavailable(ContainerdError):
    """containerd cannot be reached: socket gone, connection lost, deadline hit."""

    def __init__(self, message: str = "containerd is not available") -> None:
        super().__init__(message)


class EventStreamBroken(ContainerdError):
    """The events subscription lost events (subscriber too slow); resubscribe and
    reconcile with `list_tasks`."""


class ContainerdStartFailed(ContainerdError):
    """Our managed containerd exited or did not answer in time at start."""
