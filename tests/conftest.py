"""Session-wide cleanup of what the integration helpers create outside pytest's tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.daemon import CREATED_DIRS


@pytest.fixture(autouse=True, scope="session")
def _remove_short_tempdirs() -> Iterator[None]:
    yield
    for path in CREATED_DIRS:
        shutil.rmtree(path, ignore_errors=True)
