"""Generic trio helpers, nothing daemon-specific."""

from __future__ import annotations


def collapse(exc: BaseException) -> BaseException:
    """The single leaf of nested one-member exception groups, else `exc` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
