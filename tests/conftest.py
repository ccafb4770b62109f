"""Session-wide cleanup of what the integration helpers create outside pytest's tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.daemon import CREATED_DAEMONS, CREATED_DIRS, remove_network_leftovers


@pytest.fixture(autouse=True, scope="session")
def _remove_short_tempdirs() -> Iterator[None]:
    yield
    for daemon in CREATED_DAEMONS:  # daemons started without running_daemon leave a bridge
        if daemon.proc is None or daemon.proc.poll() is not None:
            remove_network_leftovers(daemon)
    for path in CREATED_DIRS:
        shutil.rmtree(path, ignore_errors=True)
