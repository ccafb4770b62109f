"""The pidfile that keeps a second daemon off the same roots."""

from __future__ import annotations

import os
from pathlib import Path

from kernel.fsutil import atomic_write


class PidfileError(Exception):
    pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_pidfile(path: Path) -> None:
    """Claim `path` for this process; refuse while another live process holds it."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text.isdigit() and int(text) != os.getpid() and _process_alive(int(text)):
        raise PidfileError(
            f"pid file found, ensure pydockerd is not running or delete {path} "
            f"(held by process {text})"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, f"{os.getpid()}\n".encode())


def remove_pidfile(path: Path) -> None:
    """Remove `path` if it is still ours."""
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except FileNotFoundError:
        pass
