"""Error classes that cross actor boundaries; the API maps each class to one HTTP status.

They mirror moby's errdefs: the class, never the handler, decides the status code.
"""

from __future__ import annotations


class DaemonError(Exception):
    """Base of every error meant for an API client; `status` is its HTTP code."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidParameter(DaemonError):
    status = 400


class Unauthorized(DaemonError):
    status = 401


class Forbidden(DaemonError):
    status = 403


class NotFound(DaemonError):
    status = 404


class Conflict(DaemonError):
    status = 409


class NotModified(DaemonError):
    status = 304


class NotImplementedYet(DaemonError):
    status = 501


class Unavailable(DaemonError):
    status = 503


class InternalError(DaemonError):
    status = 500


class StartupError(Exception):
    """The daemon cannot start as configured (socket in use, bad certificates, ...)."""
