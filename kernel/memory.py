"""Give the C heap's free pages back to the system (start-up leaves megabytes of them)."""

from __future__ import annotations

import ctypes
import ctypes.util


def trim() -> None:
    """glibc's malloc_trim(0); a no-op where the C library has none (musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass
