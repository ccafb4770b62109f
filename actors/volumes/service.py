"""The volumes actor: volume records, their drivers (local, plugins), references held by
containers and active mount counts.

A volume is *referenced* by every container that names it (running or not): such a
volume is in use for `rm` and `prune`. It is *mounted* while a container runs; the driver
mounts at the first mount and unmounts after the last. References are not persisted:
the containers actor gives them back at start (`add_ref`), as dockerd rebuilds them.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

from actors.events import EventsService
from actors.volumes.local import DATA_DIR, LocalDriver
from actors.volumes.model import ANONYMOUS_LABEL, LOCAL, METADATA_FILE, Driver, Volume, check_name
from actors.volumes.plugins import PluginDriver, activate
from kernel.errors import Conflict, DaemonError, InvalidParameter, NotFound
from kernel.fsutil import atomic_write, fsync_dir, is_mount_point

log = logging.getLogger("pydockerd.volumes")

LIST_FILTERS = {"dangling", "name", "driver", "label"}
PRUNE_FILTERS = {"label", "label!", "all"}
DEFAULT_PLUGIN_DIRS = ("/run/docker/plugins", "/etc/docker/plugins", "/usr/lib/docker/plugins")


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except InvalidParameter:
        return False  # a name we could not keep a record under
    return True


def _truthy(value: str, key: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise InvalidParameter(f"invalid filter '{key}={value}'")


def _labels_match(labels: dict[str, str], wanted: list[str]) -> bool:
    for label in wanted:
        key, sep, value = label.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def dir_size(path: Path) -> int:
    """Bytes in the files under `path` (hard links counted once), as moby's directory.Size."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for directory, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


class VolumesService:
    def __init__(
        self,
        root: Path,
        events: EventsService,
        plugin_dirs: Callable[[], tuple[str, ...]] = lambda: DEFAULT_PLUGIN_DIRS,
    ) -> None:
        self.root = root
        self.events = events
        self.plugin_dirs = plugin_dirs
        self.local = LocalDriver(root)
        self._plugins: dict[str, PluginDriver] = {}
        self._volumes: dict[str, Volume] = {}
        self._refs: dict[str, set[str]] = {}
        self._active: dict[str, int] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._pruning = False
        self._loaded = False

    # -- the actor -------------------------------------------------------------

    async def run(self, *, stopping: trio.Event, task_status: trio.TaskStatus[Any]) -> None:
        if not self._loaded:
            self.root.mkdir(mode=0o701, parents=True, exist_ok=True)
            self._load()
            self._loaded = True
        task_status.started(self)
        await stopping.wait()

    def _load(self) -> None:
        """Every volumes/<name>/: its metadata file, or a bare `_data` (a local volume whose
        metadata write was cut short). A broken one is logged and skipped."""
        for directory in sorted(self.root.iterdir()):
            if not directory.is_dir():
                continue
            try:
                raw = (directory / METADATA_FILE).read_bytes()
                volume = msgspec.json.decode(raw, type=Volume)
            except FileNotFoundError:
                if not (directory / DATA_DIR).is_dir():
                    continue
                created = time.gmtime((directory / DATA_DIR).stat().st_mtime)
                volume = Volume(
                    Name=directory.name, CreatedAt=time.strftime("%Y-%m-%dT%H:%M:%SZ", created)
                )
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("skipping volume %s: cannot load it: %s", directory.name, exc)
                continue
            self._volumes[volume.Name] = volume

    @asynccontextmanager
    async def _lock(self, name: str) -> AsyncIterator[None]:
        async with self._locks.setdefault(name, trio.Lock()):
            yield

    async def _driver(self, name: str) -> Driver:
        if name in ("", LOCAL):
            return self.local
        if name not in self._plugins:
            self._plugins[name] = await activate(name, self.plugin_dirs())
        return self._plugins[name]

    def _save(self, volume: Volume) -> None:
        directory = self.root / volume.Name
        directory.mkdir(mode=0o701, exist_ok=True)
        atomic_write(directory / METADATA_FILE, msgspec.json.encode(volume), mode=0o600)

    def _publish(self, action: str, name: str, attributes: dict[str, str]) -> None:
        self.events.publish("volume", action, name, attributes)

    def _mountpoint(self, volume: Volume) -> str:
        if volume.Driver == LOCAL:
            return self.local.path(volume)
        plugin = self._plugins.get(volume.Driver)
        return plugin.path(volume) if plugin is not None else volume.Mountpoint

    def _get(self, name: str) -> Volume:
        volume = self._volumes.get(name)
        if volume is None:
            raise NotFound(f"get {name}: no such volume")
        return volume

    # -- requests ----------------------------------------------------------------

    def check(self, name: str, driver: str) -> None:
        """Validate a volume a container will create, before anything exists on disk."""
        if name and name not in self._volumes:
            check_name(name)

    async def create(
        self,
        name: str = "",
        driver: str = "",
        options: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        *,
        ref: str = "",
    ) -> dict[str, Any]:
        """Create the volume, or return the existing one of that name (dockerd does too)."""
        if not name:
            name = secrets.token_hex(32)
            labels = {**(labels or {}), ANONYMOUS_LABEL: ""}
        check_name(name)
        async with self._lock(name):
            existing = self._volumes.get(name)
            if existing is not None:
                if driver and driver != existing.Driver:
                    raise Conflict(
                        f"create {name}: driver '{existing.Driver}' already has volume "
                        f"'{name}': volume name must be unique"
                    )
                if ref:
                    self._refs.setdefault(name, set()).add(ref)
                return existing.api(self._mountpoint(existing))
            try:
                handler = await self._driver(driver)
            except DaemonError as exc:
                raise type(exc)(f"create {name}: {exc.message}") from None
            handler.check_options(name, options or {})
            try:
                await handler.create(name, options or {})
            except DaemonError as exc:
                raise type(exc)(f"create {name}: {exc.message}") from None
            volume = Volume(
                Name=name,
                Driver=handler.name,
                CreatedAt=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                Labels=labels or {},
                Options=options or {},
                Scope=await handler.scope(),
            )
            if isinstance(handler, PluginDriver):
                try:
                    volume.Mountpoint = await handler.refresh_path(volume)
                except DaemonError:
                    pass
            await trio.to_thread.run_sync(self._save, volume)
            self._volumes[name] = volume
            if ref:
                self._refs.setdefault(name, set()).add(ref)
        self._publish("create", name, {"driver": volume.Driver})
        return volume.api(self._mountpoint(volume))

    def get(self, name: str) -> dict[str, Any]:
        volume = self._get(name)
        return volume.api(self._mountpoint(volume))

    def is_anonymous(self, name: str) -> bool:
        volume = self._volumes.get(name)
        return volume is not None and volume.anonymous

    async def list_volumes(
        self, filters: dict[str, list[str]]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The volumes that match, and warnings. Plugins in use are asked for their volumes
        (VolumeDriver.List): ones made outside the daemon are adopted, as dockerd does."""
        for key in filters:
            if key not in LIST_FILTERS:
                raise InvalidParameter(f"invalid filter '{key}'")
        warnings = []
        for plugin in list(self._plugins.values()):
            try:
                listed = await plugin.list()
            except DaemonError as exc:
                warnings.append(f"{plugin.name}: {exc.message}")
                continue
            for name, mountpoint in listed:
                if name not in self._volumes and _valid_name(name):
                    volume = Volume(
                        Name=name, Driver=plugin.name,
                        CreatedAt=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        Scope=await plugin.scope(), Mountpoint=mountpoint,
                    )  # fmt: skip
                    self._save(volume)
                    self._volumes[name] = volume
        out = []
        for volume in sorted(self._volumes.values(), key=lambda v: v.Name):
            if self._list_match(volume, filters):
                out.append(volume.api(self._mountpoint(volume)))
        return out, warnings

    def _list_match(self, volume: Volume, filters: dict[str, list[str]]) -> bool:
        for key, values in filters.items():
            if not values:
                continue
            if key == "dangling":
                dangling = _truthy(values[0], key)
                if bool(self._refs.get(volume.Name)) == dangling:
                    return False
            elif key == "name":
                if not any(re.search(v, volume.Name) for v in values):
                    return False
            elif key == "driver":
                if not any(re.search(v, volume.Driver) for v in values):
                    return False
            elif key == "label":
                if not _labels_match(volume.Labels or {}, values):
                    return False
        return True

    async def remove(self, name: str, *, force: bool = False) -> None:
        async with self._lock(name):
            volume = self._volumes.get(name)
            if volume is None:
                if force:
                    return
                raise NotFound(f"get {name}: no such volume")
            refs = self._refs.get(name)
            if refs:
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(sorted(refs))}]")
            try:
                handler = await self._driver(volume.Driver)
                await handler.remove(volume)
            except DaemonError as exc:
                if not force:
                    raise type(exc)(f"remove {name}: {exc.message}") from None
                log.warning("removing volume %s (forced): %s", name, exc.message)
            await trio.to_thread.run_sync(self._purge, name)
            del self._volumes[name]
            self._active.pop(name, None)
        self._locks.pop(name, None)
        self._publish("destroy", name, {"driver": volume.Driver})

    def _purge(self, name: str) -> None:
        directory = self.root / name
        try:
            (directory / METADATA_FILE).unlink()
        except FileNotFoundError:
            pass
        if is_mount_point(directory / DATA_DIR):  # a forced removal: keep what is mounted
            log.warning("volume %s: %s is still mounted, left in place", name, directory)
        elif directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
        fsync_dir(self.root)

    async def prune(self, filters: dict[str, list[str]], *, all_volumes: bool) -> dict[str, Any]:
        """Unused local volumes without mount options; anonymous ones unless `all`."""
        for key in filters:
            if key not in PRUNE_FILTERS:
                raise InvalidParameter(f"invalid filter '{key}'")
        if self._pruning:
            raise Conflict("a prune operation is already running")
        self._pruning = True
        try:
            deleted: list[str] = []
            reclaimed = 0
            for volume in list(self._volumes.values()):
                if volume.Driver != LOCAL or volume.Options or self._refs.get(volume.Name):
                    continue
                if not all_volumes and not volume.anonymous:
                    continue
                labels = volume.Labels or {}
                if not _labels_match(labels, filters.get("label", [])):
                    continue
                if any(_labels_match(labels, [x]) for x in filters.get("label!", [])):
                    continue
                size = await trio.to_thread.run_sync(dir_size, self.local.data_path(volume.Name))
                try:
                    await self.remove(volume.Name)
                except DaemonError as exc:
                    log.warning("prune: volume %s: %s", volume.Name, exc.message)
                    continue
                deleted.append(volume.Name)
                reclaimed += size
        finally:
            self._pruning = False
        self._publish("prune", "", {"reclaimed": str(reclaimed)})
        return {"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed}

    # -- containers' use -----------------------------------------------------------

    def add_ref(self, name: str, ref: str) -> bool:
        """A container names this volume; False when there is no such volume."""
        self._refs.setdefault(name, set()).add(ref)
        return name in self._volumes

    def release(self, name: str, ref: str) -> None:
        refs = self._refs.get(name)
        if refs is not None:
            refs.discard(ref)
            if not refs:
                del self._refs[name]

    def refs(self, name: str) -> set[str]:
        return set(self._refs.get(name, ()))

    async def mount(
        self,
        name: str,
        ref: str,
        attributes: dict[str, str],
        populate: Callable[[str], None] | None = None,
    ) -> str:
        """Mount for a container's run; the path to bind into it. `populate(path)` (the
        copy-up) runs in a thread under the volume's lock, so two containers starting on
        one new volume never copy into it at the same time."""
        async with self._lock(name):
            volume = self._get(name)
            handler = await self._driver(volume.Driver)
            count = self._active.get(name, 0)
            path = await handler.mount(volume, ref, count == 0)
            self._active[name] = count + 1
            if populate is not None:
                try:
                    await trio.to_thread.run_sync(populate, path)
                except BaseException:
                    with trio.CancelScope(shield=True):
                        self._active[name] = count
                        await handler.unmount(volume, ref, count == 0)
                    raise
        self._publish("mount", name, {"driver": volume.Driver, "container": ref, **attributes})
        return path

    async def unmount(self, name: str, ref: str) -> None:
        async with self._lock(name):
            volume = self._volumes.get(name)
            count = self._active.get(name, 0)
            if volume is None or count <= 0:
                return
            # The count drops even if the driver fails: else the volume could never go.
            self._active[name] = count - 1
            handler = await self._driver(volume.Driver)
            await handler.unmount(volume, ref, count == 1)
        self._publish("unmount", name, {"driver": volume.Driver, "container": ref})

    async def unmount_unused(self) -> None:
        """Daemon start, once the containers gave back their mounts: unmount the local
        volumes an unclean stop left mounted that no running container uses."""
        for volume in list(self._volumes.values()):
            if volume.Driver == LOCAL and not self._active.get(volume.Name):
                async with self._lock(volume.Name):
                    if not self._active.get(volume.Name):
                        await self.local.unmount_leftovers(volume)

    def restore_mount(self, name: str) -> None:
        """A container that kept running across our restart still has the volume mounted."""
        if name in self._volumes:
            self._active[name] = self._active.get(name, 0) + 1

    async def verify(self, name: str) -> bool:
        """Is the volume still there (a plugin may have lost it)? Never raises."""
        volume = self._volumes.get(name)
        if volume is None:
            return False
        if volume.Driver == LOCAL:
            return await trio.to_thread.run_sync(self.local.data_path(name).is_dir)
        try:
            handler = await self._driver(volume.Driver)
        except DaemonError:
            return False
        assert isinstance(handler, PluginDriver)
        return await handler.exists(volume)

    async def usage(self) -> list[dict[str, Any]]:
        """`system df`: local volumes with their size and reference count."""
        out = []
        for volume in sorted(self._volumes.values(), key=lambda v: v.Name):
            entry = volume.api(self._mountpoint(volume))
            size = -1
            if volume.Driver == LOCAL and not volume.Options:
                size = await trio.to_thread.run_sync(dir_size, self.local.data_path(volume.Name))
            entry["UsageData"] = {"Size": size, "RefCount": len(self._refs.get(volume.Name, ()))}
            out.append(entry)
        return out
