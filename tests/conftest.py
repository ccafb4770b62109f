"""Shared fixtures: the offline busybox image, a daemon per module that has it loaded, and
the session-wide cleanup of what the integration helpers create outside pytest's tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import (
    CREATED_DAEMONS,
    CREATED_DIRS,
    Daemon,
    remove_network_leftovers,
    remove_root,
    running_daemon,
)
from tests.fixtures.busybox import busybox_archive


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox image in `docker save` form, built once for the session."""
    return busybox_archive(tmp_path_factory.mktemp("fixtures") / "busybox.tar")


@contextmanager
def busybox_daemon(archive: Path, *args: str, **options: Any) -> Iterator[Daemon]:
    """A running daemon (`running_daemon` arguments) with the busybox image loaded."""
    with running_daemon(*args, **options) as d:
        d.docker("load", "-i", str(archive))
        yield d


@pytest.fixture(scope="module")
def daemon(busybox_tar: Path) -> Iterator[Daemon]:
    """One daemon per test module, with busybox; a module may define its own instead."""
    with busybox_daemon(busybox_tar) as d:
        yield d


@pytest.fixture(autouse=True, scope="session")
def _remove_short_tempdirs() -> Iterator[None]:
    yield
    for daemon in CREATED_DAEMONS:  # daemons started without running_daemon leave a bridge
        if daemon.proc is None or daemon.proc.poll() is not None:
            remove_network_leftovers(daemon)
    for path in CREATED_DIRS:
        remove_root(path)
