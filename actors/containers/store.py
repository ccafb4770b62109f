"""The containers actor's records: by ID, by name, by unique ID prefix, persisted atomically.

Reads for `docker ps` and inspect never wait on a container's lock: each change publishes
a fresh summary into a snapshot dict that readers copy (moby's ViewDB idea).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from actors.containers.model import Container
from actors.containers.names import generate_name
from kernel.errors import Conflict, InvalidParameter, NotFound
from kernel.fsutil import atomic_write_files, fsync_dir

log = logging.getLogger("pydockerd.containers")

CONFIG_FILE = "config.v2.json"
HOSTCONFIG_FILE = "hostconfig.json"


def _valid_name(name: str) -> bool:
    import re

    return re.fullmatch(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+", name) is not None


class ContainerStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.trash = root / ".removed"
        self._by_id: dict[str, Container] = {}
        self._by_name: dict[str, str] = {}
        self._summaries: dict[str, dict[str, Any]] = {}
        self._host_configs: dict[str, bytes] = {}  # as last written, per container

    # -- lookups -----------------------------------------------------------

    def __iter__(self) -> Iterator[Container]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, ref: str) -> Container:
        """By full ID, name (with or without /), or unique ID prefix (dockerd's order)."""
        if ref in self._by_id:
            return self._by_id[ref]
        name = ref if ref.startswith("/") else "/" + ref
        if name in self._by_name:
            return self._by_id[self._by_name[name]]
        if ref:
            matches = [cid for cid in self._by_id if cid.startswith(ref)]
            if len(matches) == 1:
                return self._by_id[matches[0]]
            if len(matches) > 1:
                raise InvalidParameter(f"multiple IDs found with provided prefix: {ref}")
        raise NotFound(f"No such container: {ref}")

    def get_or_none(self, cid: str) -> Container | None:
        return self._by_id.get(cid)

    def summaries(self) -> list[dict[str, Any]]:
        """The snapshot, newest first (it is kept in creation order: no sort per request)."""
        return list(reversed(self._summaries.values()))

    # -- changes -----------------------------------------------------------

    def new_id(self) -> str:
        while True:
            cid = secrets.token_hex(32)
            # An ID that looks like a number would be taken for an index by some tools.
            if not cid[:12].isdigit() and cid not in self._by_id:
                return cid

    def reserve_name(self, name: str, cid: str) -> str:
        if not name:
            for _ in range(10):
                candidate = "/" + generate_name()
                if candidate not in self._by_name:
                    self._by_name[candidate] = cid
                    return candidate
            raise Conflict("could not generate a unique container name")
        if not _valid_name(name):
            raise InvalidParameter(
                f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        name = name if name.startswith("/") else "/" + name
        holder = self._by_name.get(name)
        if holder is not None and holder != cid:
            raise Conflict(
                f'Conflict. The container name "{name}" is already in use by container '
                f'"{holder}". You have to remove (or rename) that container to be able to '
                "reuse that name."
            )
        self._by_name[name] = cid
        return name

    def release_name(self, name: str) -> None:
        self._by_name.pop(name, None)

    def add(self, container: Container) -> None:
        self._by_id[container.Id] = container
        self._by_name[container.Name] = container.Id
        self.save(container)

    def save(self, container: Container) -> None:
        """Persist atomically and refresh the snapshot readers see."""
        directory = self.root / container.Id
        directory.mkdir(mode=0o710, exist_ok=True)
        record = msgspec.to_builtins(container)
        host_config = msgspec.json.encode(record.pop("HostConfig"))
        files = {CONFIG_FILE: msgspec.json.encode(record)}
        # The host config changes seldom (update, rename of a link): most saves skip it.
        if self._host_configs.get(container.Id) != host_config:
            files[HOSTCONFIG_FILE] = host_config
        atomic_write_files(directory, files, mode=0o600)
        self._host_configs[container.Id] = host_config
        self.refresh(container)

    def refresh(self, container: Container) -> None:
        if container.Id in self._by_id:
            self._summaries[container.Id] = container.summary()

    def remove(self, container: Container) -> None:
        """Forget the container; its directory moves to the trash in one rename (a crash
        after it cannot bring the container back), to go with `empty_trash`."""
        self._by_id.pop(container.Id, None)
        self._summaries.pop(container.Id, None)
        self._host_configs.pop(container.Id, None)
        if self._by_name.get(container.Name) == container.Id:
            del self._by_name[container.Name]
        self.trash.mkdir(exist_ok=True)
        try:
            os.rename(self.root / container.Id, self.trash / container.Id)
        except FileNotFoundError:
            return
        fsync_dir(self.root)

    def trashed(self) -> list[str]:
        """IDs of removed containers whose leftovers are still to be deleted."""
        return sorted(os.listdir(self.trash)) if self.trash.exists() else []

    def empty_trash(self, cid: str) -> None:
        shutil.rmtree(self.trash / cid, ignore_errors=True)

    def load_all(self) -> list[Container]:
        """Read every container directory; a broken one is logged and skipped."""
        loaded = []
        for directory in sorted(self.root.iterdir()) if self.root.exists() else []:
            if directory == self.trash:
                continue
            try:
                record = json.loads((directory / CONFIG_FILE).read_bytes())
                record["HostConfig"] = json.loads((directory / HOSTCONFIG_FILE).read_bytes())
                container = msgspec.convert(record, Container)
            except (OSError, ValueError, msgspec.ValidationError) as exc:
                log.error("skipping container %s: cannot load it: %s", directory.name, exc)
                continue
            if container.RemovalInProgress:
                # A removal cut short (crash, kill -9): dockerd marks such a container dead.
                container.RemovalInProgress = False
                container.State.Dead, container.State.Running = True, False
                container.State.Status = "dead"
            loaded.append(container)
        # Registered oldest first: the snapshot stays in creation order (see `summaries`).
        # Created times are fixed-width UTC RFC 3339, so string order is time order.
        loaded.sort(key=lambda c: c.Created)
        for container in loaded:
            self._by_id[container.Id] = container
            self._by_name[container.Name] = container.Id
            self._summaries[container.Id] = container.summary()
        return loaded
