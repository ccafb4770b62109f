"""A container's mounts: every form a client can ask for, parsed and validated at create
into mount points stored with the container; volumes created, referenced, mounted at
start (with the image's files copied up), unmounted at exit and released at removal.

The forms: `Binds` (`name:/path[:opts]`, `/host:/path[:opts]`, `/path`), `Mounts`
(type volume, bind, tmpfs), `VolumesFrom` (`id[:ro|rw]`), the image's and the config's
`Volumes` (anonymous volumes) and `Tmpfs`. Texts are dockerd's (volume/mounts).
"""

from __future__ import annotations

import logging
import os
import posixpath
import subprocess
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from kernel.errors import DaemonError, InvalidParameter

if TYPE_CHECKING:
    from actors.containers.model import Container
    from actors.volumes.service import VolumesService

log = logging.getLogger("pydockerd.containers")

_RW_MODES = {"rw", "ro"}
_LABEL_MODES = {"z", "Z"}
_PROPAGATIONS = {"private", "rprivate", "slave", "rslave", "shared", "rshared"}
_COPY_MODES = {"nocopy"}
_CONSISTENCY = {"consistent", "cached", "delegated"}
DEFAULT_PROPAGATION = "rprivate"


class MountPoint(msgspec.Struct, kw_only=True):
    """One mount of a container, persisted with it (dockerd's MountPoints)."""

    Type: str  # volume | bind | tmpfs
    Destination: str
    Source: str = ""
    Name: str = ""  # the volume's; empty until an anonymous volume is created
    Driver: str = ""
    Mode: str = ""
    RW: bool = True
    Propagation: str = ""
    CopyData: bool = False  # copy the image's files into an empty volume at mount
    CreateSource: bool = False  # `-v /host:/path`: a missing host directory is created
    DriverOpts: dict[str, str] | None = None
    Labels: dict[str, str] | None = None
    TmpfsData: str = ""  # tmpfs mount options (size=, mode=)

    def api(self) -> dict[str, Any]:
        """The entry of `Mounts` in container inspect and `docker ps`."""
        out: dict[str, Any] = {"Type": self.Type}
        if self.Type == "volume":
            out["Name"] = self.Name
        out["Source"] = self.Source
        out["Destination"] = self.Destination
        if self.Type == "volume":
            out["Driver"] = self.Driver
        out.update(Mode=self.Mode, RW=self.RW, Propagation=self.Propagation)
        return out


# -- parsing (create time, nothing touches the disk) -----------------------------------


def _valid_mode(mode: str) -> bool:
    if not mode:
        return True
    counts = [0, 0, 0, 0, 0]
    for option in mode.split(","):
        for i, group in enumerate((_RW_MODES, _LABEL_MODES, _PROPAGATIONS, _COPY_MODES)):
            if option in group:
                counts[i] += 1
                break
        else:
            if option not in _CONSISTENCY:
                return False
            counts[4] += 1
    return all(c <= 1 for c in counts)


def _check_target(kind: str, target: str) -> None:
    prefix = f'invalid mount config for type "{kind}": '
    if not target:
        raise InvalidParameter(prefix + "field Target must not be empty")
    if posixpath.normpath(target.replace("\\", "/")) == "/":
        raise InvalidParameter(prefix + "invalid specification: destination can't be '/'")
    if not target.startswith("/"):
        raise InvalidParameter(
            prefix + f"invalid mount path: '{target}' mount path must be absolute"
        )


def _tmpfs_data(options: dict[str, Any] | None, read_only: bool) -> str:
    """moby ConvertTmpfsOptions: ro, mode=<octal>, size=<n>[kmg]."""
    data = ["ro"] if read_only else []
    options = options or {}
    if options.get("Mode"):
        data.append(f"mode={int(options['Mode']):o}")
    size = int(options.get("SizeBytes") or 0)
    if size:
        suffix = ""
        for unit, divisor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
            if size % divisor == 0:
                size, suffix = size // divisor, unit
                break
        data.append(f"size={size}{suffix}")
    return ",".join(data)


def parse_bind(raw: str, volume_driver: str) -> MountPoint:
    """One `Binds` entry (moby linuxParser.ParseMountRaw)."""
    invalid = f"invalid volume specification: '{raw}'"
    parts = raw.split(":", 3)
    if not parts[0] or len(parts) > 3:
        raise InvalidParameter(invalid)
    source, mode = "", ""
    if len(parts) == 1:
        target = parts[0]
    elif len(parts) == 2:
        if _valid_mode(parts[1]):  # `/foo:rw`: a volume cannot have a mode without a name
            raise InvalidParameter(invalid)
        source, target = parts
    else:
        source, target, mode = parts
    if not _valid_mode(mode):
        raise InvalidParameter(f"invalid mode: {mode}")
    kind = "bind" if source.startswith("/") else "volume"
    options = mode.split(",") if mode else []
    try:
        _check_target(kind, target)
    except InvalidParameter as exc:
        raise InvalidParameter(f"{invalid}: {exc.message}") from None
    point = MountPoint(
        Type=kind,
        Destination=posixpath.normpath(target),
        Mode=mode,
        RW="ro" not in options,
    )
    if kind == "bind":
        point.Source = posixpath.normpath(source)
        point.CreateSource = True
        point.Propagation = next((o for o in options if o in _PROPAGATIONS), DEFAULT_PROPAGATION)
    else:
        point.Name = source
        point.Driver = volume_driver
        point.CopyData = "nocopy" not in options
    return point


def parse_mount(mount: dict[str, Any], volume_driver: str) -> MountPoint:
    """One `Mounts` entry (moby validateMountConfigImpl + parseMountSpec)."""
    kind = str(mount.get("Type") or "")
    target = str(mount.get("Target") or "")
    source = str(mount.get("Source") or "")
    read_only = bool(mount.get("ReadOnly"))
    prefix = f'invalid mount config for type "{kind}": '
    _check_target(kind, target)
    destination = posixpath.normpath(target)
    if kind == "bind":
        bind_options = mount.get("BindOptions") or {}
        propagation = bind_options.get("Propagation") or DEFAULT_PROPAGATION
        if not source:
            raise InvalidParameter(prefix + "field Source must not be empty")
        if propagation not in _PROPAGATIONS:
            raise InvalidParameter(prefix + f"invalid propagation mode: {propagation}")
        if mount.get("VolumeOptions") is not None:
            raise InvalidParameter(prefix + "field VolumeOptions must not be specified")
        if not source.startswith("/"):
            raise InvalidParameter(
                prefix + f"invalid mount path: '{source}' mount path must be absolute"
            )
        if not os.path.exists(source) and not bind_options.get("CreateMountpoint"):
            raise InvalidParameter(prefix + f"bind source path does not exist: {source}")
        return MountPoint(
            Type="bind",
            Destination=destination,
            Source=posixpath.normpath(source),
            RW=not read_only,
            Propagation=propagation,
            CreateSource=bool(bind_options.get("CreateMountpoint")),
        )
    if kind == "volume":
        if mount.get("BindOptions") is not None:
            raise InvalidParameter(prefix + "field BindOptions must not be specified")
        if read_only and not source:
            raise InvalidParameter(
                prefix + "must not set ReadOnly mode when using anonymous volumes"
            )
        options = mount.get("VolumeOptions") or {}
        driver_config = options.get("DriverConfig") or {}
        return MountPoint(
            Type="volume",
            Destination=destination,
            Name=source,
            Driver=driver_config.get("Name") or volume_driver,
            RW=not read_only,
            CopyData=not options.get("NoCopy"),
            DriverOpts=driver_config.get("Options"),
            Labels=options.get("Labels"),
        )
    if kind == "tmpfs":
        if mount.get("BindOptions") is not None:
            raise InvalidParameter(prefix + "field BindOptions must not be specified")
        if source:
            raise InvalidParameter(prefix + "field Source must not be specified")
        return MountPoint(
            Type="tmpfs",
            Destination=destination,
            RW=not read_only,
            TmpfsData=_tmpfs_data(mount.get("TmpfsOptions"), read_only),
        )
    raise InvalidParameter(prefix + "mount type unknown")


def parse_volumes_from(spec: str) -> tuple[str, str]:
    if not spec:
        raise InvalidParameter("volumes-from specification cannot be an empty string")
    ref, _, mode = spec.partition(":")
    if not mode:
        return ref, "rw"
    options = mode.split(",")
    if not _valid_mode(mode) or any(o in _PROPAGATIONS for o in options) or "nocopy" in options:
        raise InvalidParameter(f"invalid mode: {mode}")
    return ref, mode


def plan(
    config: dict[str, Any],
    host: dict[str, Any],
    lookup: Callable[[str], Container],
    check_volume: Callable[[str, str], None],
) -> list[MountPoint]:
    """Every mount point of a new container, validated (dockerd registerMountPoints and
    the image volumes of createContainerOSSpecificSettings)."""
    driver = str(host.get("VolumeDriver") or "")
    points: dict[str, MountPoint] = {}
    for spec in host.get("VolumesFrom") or []:
        ref, mode = parse_volumes_from(spec)
        other = lookup(ref)
        for theirs in other.MountPoints:
            # dockerd copies neither the mode text nor the copy-up wish.
            mine = msgspec.structs.replace(theirs, CopyData=False, Mode="")
            mine.RW = theirs.RW and "ro" not in mode.split(",")
            points[mine.Destination] = mine
    tmpfs = {posixpath.normpath(d) for d in host.get("Tmpfs") or {}}
    taken: set[str] = set()
    for bind in host.get("Binds") or []:
        point = parse_bind(bind, driver)
        if point.Destination in taken or point.Destination in tmpfs:
            raise InvalidParameter(f"Duplicate mount point: {point.Destination}")
        taken.add(point.Destination)
        points[point.Destination] = point
    for mount in host.get("Mounts") or []:
        point = parse_mount(mount, driver)
        if point.Destination in taken:
            raise InvalidParameter(f"Duplicate mount point: {mount.get('Target')}")
        taken.add(point.Destination)
        points[point.Destination] = point
    for destination in taken:
        point = points[destination]
        if point.Type == "volume" and not point.Mode:
            point.Mode = "z"  # dockerd's setBindModeIfNull (undone below for plugins)
    for target in config.get("Volumes") or {}:
        destination = posixpath.normpath(target)
        if destination in points or destination in tmpfs:
            continue
        try:
            _check_target("volume", target)
        except InvalidParameter as exc:
            raise InvalidParameter(
                f"invalid volume specification: '{target}': {exc.message}"
            ) from None
        points[destination] = MountPoint(
            Type="volume", Destination=destination, Driver=driver, CopyData=True
        )
    for point in points.values():
        if point.Type == "volume" and point.Name:
            check_volume(point.Name, point.Driver)
    return list(points.values())


# -- the volumes' life with the container ---------------------------------------------


def _copy_up(rootfs: Path, destination: str, volume_path: str) -> None:  # in a thread
    """The image's files at `destination` into the volume, if the volume is empty
    (moby copyExistingContents): owners, modes, links and times kept."""
    from actors.images.tarstream import scoped_path

    try:
        source = scoped_path(rootfs, destination)
    except (OSError, DaemonError, ValueError):
        return
    if not source.is_dir() or not os.path.isdir(volume_path) or os.listdir(volume_path):
        return
    if not os.listdir(source):
        return
    result = subprocess.run(
        ["cp", "-a", f"{source}/.", f"{volume_path}/"], capture_output=True, check=False
    )
    if result.returncode != 0:
        raise InvalidParameter(
            f"copying the image's files into the volume at {destination}: "
            + result.stderr.decode(errors="replace").strip()
        )


def _make_source(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)  # dockerd creates a missing `-v` host dir


def _depth(point: MountPoint) -> int:
    return len(point.Destination.rstrip("/").split("/"))


class ContainerMounts:
    """The containers actor's side of volumes: which of its containers hold which mounts."""

    def __init__(self, volumes: VolumesService | None) -> None:
        self.volumes = volumes
        # Container ID -> volumes its current run mounted; at exit they move to `_exited`
        # (under the container's lock) until the after-exit work unmounts them, so a
        # quick restart's mounts are never mistaken for the old run's.
        self._mounted: dict[str, list[str]] = {}
        self._exited: dict[str, list[str]] = {}

    def plan(
        self, config: dict[str, Any], host: dict[str, Any], lookup: Callable[[str], Container]
    ) -> list[MountPoint]:
        volumes = self.volumes
        return plan(config, host, lookup, volumes.check if volumes else lambda n, d: None)

    async def create_volumes(self, cid: str, points: list[MountPoint]) -> None:
        """Create (or reference) the container's volumes; on failure release them all."""
        if not any(p.Type == "volume" for p in points):
            return
        if self.volumes is None:
            raise InvalidParameter("volumes are not available")
        try:
            for point in points:
                if point.Type != "volume":
                    continue
                volume = await self.volumes.create(
                    point.Name, point.Driver, point.DriverOpts, point.Labels, ref=cid
                )
                point.Name, point.Driver = volume["Name"], volume["Driver"]
                point.Source = volume["Mountpoint"]
                if point.Driver != "local" and point.Mode == "z":
                    point.Mode = ""  # dockerd sets `z` for the local driver's volumes only
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.release(cid, points, remove_anonymous=True)
            raise

    async def release(
        self, cid: str, points: Iterable[MountPoint], *, remove_anonymous: bool
    ) -> None:
        """The container is gone: drop its references; `rm -v` removes anonymous volumes
        that nothing else uses (named volumes always stay)."""
        if self.volumes is None:
            return
        for point in points:
            if point.Type != "volume" or not point.Name:
                continue
            self.volumes.release(point.Name, cid)
            if remove_anonymous and self.volumes.is_anonymous(point.Name):
                if self.volumes.refs(point.Name):
                    continue
                try:
                    await self.volumes.remove(point.Name)
                except DaemonError as exc:
                    log.warning("removing anonymous volume %s: %s", point.Name, exc.message)

    async def setup(self, container: Container, rootfs: Path) -> list[dict[str, Any]]:
        """Start: mount the volumes, copy up, create missing `-v` host directories; the
        OCI mounts, parents before children. On failure, everything mounted is undone."""
        mounted: list[str] = []
        out: list[dict[str, Any]] = []
        try:
            for point in sorted(container.MountPoints, key=_depth):
                source = point.Source
                if point.Type == "volume":
                    assert self.volumes is not None
                    attributes = {
                        "destination": point.Destination,
                        "read/write": str(point.RW).lower(),
                        "propagation": point.Propagation,
                    }
                    populate = (
                        partial(_copy_up, rootfs, point.Destination) if point.CopyData else None
                    )
                    source = await self.volumes.mount(
                        point.Name, container.Id, attributes, populate
                    )
                    mounted.append(point.Name)
                    point.Source = source
                elif point.Type == "bind" and point.CreateSource:
                    await trio.to_thread.run_sync(_make_source, point.Source)
                if point.Type == "bind" and point.Propagation.lstrip("r") in ("shared", "slave"):
                    await trio.to_thread.run_sync(check_propagation, source, point.Propagation)
                out.append(oci_mount(point, source))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._unmount(container, mounted)
            raise
        self._mounted[container.Id] = mounted
        for destination, options in (container.HostConfig.get("Tmpfs") or {}).items():
            data = [o for o in str(options).split(",") if o]
            out.append(
                {
                    "destination": destination,
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "nodev", "noexec", *data],
                }
            )
        return out

    def exited(self, cid: str) -> None:
        """The run ended (called under the container's lock); `teardown` unmounts."""
        self._exited.setdefault(cid, []).extend(self._mounted.pop(cid, []))

    async def teardown(self, container: Container) -> None:
        """After an exit (or a failed start): unmount what the ended run mounted."""
        await self._unmount(container, self._exited.pop(container.Id, []))

    async def _unmount(self, container: Container, names: list[str]) -> None:
        for name in names:
            assert self.volumes is not None
            try:
                await self.volumes.unmount(name, container.Id)
            except DaemonError as exc:
                log.warning("unmounting volume %s of %s: %s", name, container.short_id, exc)

    def restore(self, containers: Iterable[Container]) -> None:
        """Daemon start: references back from the containers; running (live-restored)
        containers still have their volumes mounted."""
        if self.volumes is None:
            return
        for container in containers:
            for point in container.MountPoints:
                if point.Type != "volume" or not point.Name:
                    continue
                self.volumes.add_ref(point.Name, container.Id)
                if container.State.Running:
                    self.volumes.restore_mount(point.Name)
                    self._mounted.setdefault(container.Id, []).append(point.Name)

    async def verify(self, containers: Iterable[Container]) -> None:
        """Daemon start, in the background: warn about volumes that went missing, one at a
        time, so one broken volume (or plugin) delays nothing else."""
        if self.volumes is None:
            return
        # Mounts left by an unclean stop that no live-restored container uses.
        await self.volumes.unmount_unused()
        for container in containers:
            for point in container.MountPoints:
                if point.Type != "volume" or not point.Name:
                    continue
                with trio.move_on_after(10):
                    if await self.volumes.verify(point.Name):
                        continue
                log.error(
                    "container %s: volume %s (%s) is missing or not reachable",
                    container.short_id,
                    point.Name,
                    point.Destination,
                )

    def uses(self, container: Container, wanted: list[str]) -> bool:
        """`docker ps --filter volume=`: by volume name (a bind's source) or destination."""
        return any(
            value in (point.Name or point.Source, point.Destination)
            for point in container.MountPoints
            for value in wanted
        )


def oci_mount(point: MountPoint, source: str) -> dict[str, Any]:
    if point.Type == "tmpfs":
        data = [o for o in point.TmpfsData.split(",") if o]
        return {
            "destination": point.Destination,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "noexec", *data],
        }
    return {
        "destination": point.Destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", point.Propagation or DEFAULT_PROPAGATION, "rw" if point.RW else "ro"],
    }


def _mount_of(path: str) -> tuple[str, list[str]]:
    """The mount point holding `path` and its optional fields (shared:N, master:N)."""
    target = os.path.realpath(path)
    best, fields = "", []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            parts = line.split()
            point = parts[4]
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, fields = point, parts[6 : parts.index("-")]
    return best, fields


def check_propagation(source: str, propagation: str) -> None:
    """A shared (slave) bind needs a shared (or slave) source mount (dockerd's
    ensureShared / ensureSharedOrSlave, with their texts)."""
    point, fields = _mount_of(source)
    shared = any(f.startswith("shared:") for f in fields)
    slave = any(f.startswith("master:") for f in fields)
    if propagation.lstrip("r") == "shared" and not shared:
        raise InvalidParameter(f"path {source} is mounted on {point} but it is not a shared mount")
    if propagation.lstrip("r") == "slave" and not (shared or slave):
        raise InvalidParameter(
            f"path {source} is mounted on {point} but it is not a shared or slave mount"
        )


def rootfs_propagation(mounts: Iterable[dict[str, Any]]) -> str:
    """dockerd keeps the root shared when a mount is shared (else slave when one is a
    slave), so the propagation of those mounts can work; empty: runc's default."""
    options = {o for m in mounts for o in m.get("options", [])}
    if options & {"shared", "rshared"}:
        return "rshared"
    if options & {"slave", "rslave"}:
        return "rslave"
    return ""
