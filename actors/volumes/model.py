"""A volume as the volumes actor keeps it, persists it and shows it to the API."""

from __future__ import annotations

import re
from typing import Any, Protocol

import msgspec

from kernel.errors import InvalidParameter

LOCAL = "local"
# Set on the volumes created without a name (moby volume/service AnonymousLabel).
ANONYMOUS_LABEL = "com.docker.volume.anonymous"
METADATA_FILE = "volume.json"

# moby daemon/names.RestrictedNamePattern: the name becomes a directory under volumes/.
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
RESTRICTED_CHARS = "[a-zA-Z0-9][a-zA-Z0-9_.-]"


class Volume(msgspec.Struct, kw_only=True):
    """The persisted record (volumes/<name>/volume.json); `api()` is the Engine API view."""

    Name: str
    Driver: str = LOCAL
    CreatedAt: str = ""
    Labels: dict[str, str] | None = None
    Options: dict[str, str] | None = None
    Scope: str = "local"
    # A plugin's mountpoint as it last reported it (the local driver derives its own).
    Mountpoint: str = ""

    @property
    def anonymous(self) -> bool:
        return ANONYMOUS_LABEL in (self.Labels or {})

    def api(self, mountpoint: str) -> dict[str, Any]:
        return {
            "CreatedAt": self.CreatedAt,
            "Driver": self.Driver,
            "Labels": self.Labels,
            "Mountpoint": mountpoint,
            "Name": self.Name,
            "Options": self.Options,
            "Scope": self.Scope,
        }


def check_name(name: str) -> None:
    """dockerd's local driver name check, with its texts (for every driver here: the name
    is also the metadata directory's)."""
    if len(name) == 1:
        raise InvalidParameter(
            f"create {name}: volume name is too short, names should be at least two "
            "alphanumeric characters"
        )
    if not _NAME.match(name):
        raise InvalidParameter(
            f'create {name}: "{name}" includes invalid characters for a local volume name, '
            f'only "{RESTRICTED_CHARS}" are allowed. If you intended to pass a host '
            "directory, use absolute path"
        )


class Driver(Protocol):
    """A volume driver: the local one or a plugin's adapter."""

    name: str

    async def scope(self) -> str: ...
    def check_options(self, name: str, options: dict[str, str]) -> None: ...
    async def create(self, name: str, options: dict[str, str]) -> None: ...
    async def remove(self, volume: Volume) -> None: ...
    async def mount(self, volume: Volume, ref: str, first: bool) -> str: ...
    async def unmount(self, volume: Volume, ref: str, last: bool) -> None: ...
    def path(self, volume: Volume) -> str: ...
