"""The `local` volume driver: a directory under <data-root>/volumes/<name>/_data, or, with
options, a filesystem mounted there at the first use and unmounted after the last."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import trio

from actors.volumes.model import LOCAL, Volume
from kernel.errors import InternalError, InvalidParameter
from kernel.fsutil import is_mount_point

log = logging.getLogger("pydockerd.volumes")

DATA_DIR = "_data"
_VALID_OPTIONS = ("type", "o", "device")
# An option that needs others (moby volume/local mandatoryOpts).
_REQUIRES = {"device": ("type",), "type": ("device",), "o": ("device", "type")}


class LocalDriver:
    name = LOCAL

    def __init__(self, root: Path) -> None:
        self.root = root

    async def scope(self) -> str:
        return "local"

    def data_path(self, name: str) -> Path:
        return self.root / name / DATA_DIR

    def path(self, volume: Volume) -> str:
        return str(self.data_path(volume.Name))

    def check_options(self, name: str, options: dict[str, str]) -> None:
        for key in options:
            if key == "size":
                raise InvalidParameter(f"create {name}: quota size requested but no quota support")
            if key not in _VALID_OPTIONS:
                raise InvalidParameter(f'create {name}: invalid option: "{key}"')
        for key, needed in _REQUIRES.items():
            for other in needed if key in options else ():
                if other not in options:
                    raise InvalidParameter(f'create {name}: missing required option: "{other}"')

    async def create(self, name: str, options: dict[str, str]) -> None:
        # The volume's own directory is traversable only; its data directory is 0755.
        (self.root / name).mkdir(mode=0o701, exist_ok=True)
        self.data_path(name).mkdir(mode=0o755, exist_ok=True)

    async def remove(self, volume: Volume) -> None:
        path = self.data_path(volume.Name)
        if volume.Options:
            await self._umount(path)
        # Never delete through a mount: that would delete the device's (or host's) files.
        if await trio.to_thread.run_sync(is_mount_point, path):
            raise InternalError(f"error removing volume path '{path}': still mounted")
        await trio.to_thread.run_sync(shutil.rmtree, self.root / volume.Name)

    async def mount(self, volume: Volume, ref: str, first: bool) -> str:
        path = self.data_path(volume.Name)
        options = volume.Options or {}
        if first and options.get("type"):
            command = ["mount", "-t", options["type"]]
            if options.get("o"):
                command += ["-o", options["o"]]
            command += [options.get("device", ""), str(path)]
            result = await trio.run_process(command, capture_stderr=True, check=False)
            if result.returncode != 0:
                detail = result.stderr.decode(errors="replace").strip()
                raise InternalError(
                    f"error while mounting volume '{path}': failed to mount local volume: "
                    f"type='{options.get('type', '')}' device='{options.get('device', '')}' "
                    f"o='{options.get('o', '')}': {detail}"
                )
        return str(path)

    async def unmount(self, volume: Volume, ref: str, last: bool) -> None:
        if last and (volume.Options or {}).get("type"):
            await self._umount(self.data_path(volume.Name))

    async def _umount(self, path: Path) -> None:
        if not await trio.to_thread.run_sync(is_mount_point, path):
            return
        result = await trio.run_process(["umount", str(path)], capture_stderr=True, check=False)
        if result.returncode != 0:  # busy: detach it now, the kernel frees it when unused
            await trio.run_process(["umount", "-l", str(path)], check=False)

    async def unmount_leftovers(self, volume: Volume) -> None:
        """At start: a mount left by an unclean stop (moby's local.New does the same)."""
        if (volume.Options or {}).get("type"):
            try:
                await self._umount(self.data_path(volume.Name))
            except OSError as exc:
                log.warning("unmounting leftover volume %s: %s", volume.Name, exc)
