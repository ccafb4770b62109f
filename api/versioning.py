"""Engine API versions: what we report, what we accept, and dockerd's texts for the rest."""

from __future__ import annotations

import re

API_VERSION = "1.47"
MIN_API_VERSION = "1.24"

_PREFIX = re.compile(r"^/v([0-9][0-9.]*)(/.*)$")


def version_key(version: str) -> tuple[int, ...]:
    """Numeric per dot-separated part, as moby's versions.Compare."""
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


class VersionError(Exception):
    def __init__(self, message: str, *, plain: bool) -> None:
        super().__init__(message)
        self.message = message
        # dockerd answers "too old" below its minimum in plain text, everything else in JSON.
        self.plain = plain


def split_version(path: str) -> tuple[str, str]:
    """(`api version`, `path without the /vX.Y prefix`); bare paths get the current version."""
    match = _PREFIX.match(path)
    if match is None:
        return API_VERSION, path
    version, rest = match.group(1), match.group(2)
    key = version_key(version)
    if key < version_key(MIN_API_VERSION):
        raise VersionError(
            f"client version {version} is too old. Minimum supported API version is "
            f"{MIN_API_VERSION}, please upgrade your client to a newer version",
            plain=True,
        )
    if key > version_key(API_VERSION):
        raise VersionError(
            f"client version {version} is too new. Maximum supported API version is {API_VERSION}",
            plain=False,
        )
    return version, rest
