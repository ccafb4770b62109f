"""Graph drivers: where layer contents live and how a root filesystem is assembled.

`overlay2` (the default where overlayfs works) keeps each layer's own files in
`overlay2/<id>/diff`, names every layer by a short link `overlay2/l/<LID>` (so the
`lowerdir=` list of a deep image still fits in one page), lists a layer's parents in its
`lower` file, and mounts overlayfs at `<id>/merged`. `vfs` keeps a full copy of the parent
in every layer (`vfs/dir/<id>`) and works on any filesystem. Both as dockerd lays them out.

Synchronous and thread-safe; the images actor calls them from worker threads.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, ClassVar

import msgspec

from actors.images.tarstream import (
    DeletingWhiteouts,
    Extracted,
    OverlayWhiteouts,
    Whiteouts,
    extract,
)
from kernel.errors import InternalError, StartupError

log = logging.getLogger("pydockerd.images")

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MAX_DEPTH = 128  # dockerd's limit on the layers below an overlay2 layer
LINK_LENGTH = 26


class Mount(msgspec.Struct, frozen=True):
    """One mount of a root filesystem, in containerd's terms (`CreateTaskRequest.rootfs`)."""

    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()


class DriverError(InternalError):
    pass


def mount(source: str, target: str, fstype: str, data: str, flags: int = 0) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()):
        err = ctypes.get_errno()
        raise DriverError(f"mount {fstype} on {target}: {os.strerror(err)}")


def unmount(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH):
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not mounted: nothing to undo
            raise DriverError(f"unmount {target}: {os.strerror(err)}")


def _backing_filesystem(path: Path) -> str:
    try:
        out = subprocess.run(
            ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return {"ext2/ext3": "extfs"}.get(out, out)


def directory_size(path: Path, unchanged: Path | None = None) -> int:
    """Bytes in files and symlinks under `path` (hard links once), as dockerd's
    directory.Size; with `unchanged`, only what differs from the same path there."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(path)]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            if unchanged is not None:
                try:
                    before = os.lstat(unchanged / os.path.relpath(entry.path, path))
                    if (before.st_size, before.st_mtime_ns, before.st_mode) == (
                        st.st_size,
                        st.st_mtime_ns,
                        st.st_mode,
                    ):
                        continue
                except OSError:
                    pass
            total += st.st_size
    return total


class GraphDriver:
    """Layers by ID (a cache-id, mount-id or init-id of the layer store)."""

    name: ClassVar[str] = ""
    whiteouts: ClassVar[Whiteouts]

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True, mode=0o710)
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}  # id -> get() calls not yet put()

    def create(self, id: str, parent: str | None) -> None:
        """A new, empty layer on top of `parent` (vfs: a copy of it)."""
        raise NotImplementedError

    def diff_dir(self, id: str) -> Path:
        """Where the layer's own files are (tar-split regenerates layer tars from here)."""
        raise NotImplementedError

    def apply_diff(self, id: str, source: BinaryIO) -> Extracted:
        """Extract an uncompressed layer tar into a layer made by `create`."""
        return extract(source, self.diff_dir(id), self.whiteouts)

    def get(self, id: str) -> Path:
        """The layer's whole filesystem (mounted if need be); pair with `put`."""
        raise NotImplementedError

    def put(self, id: str) -> None:
        raise NotImplementedError

    def mounts(self, id: str) -> list[Mount]:
        """How to mount the layer's filesystem elsewhere (containerd mounts the rootfs
        itself); nothing is mounted here."""
        raise NotImplementedError

    def remove(self, id: str) -> None:
        raise NotImplementedError

    def diff_size(self, id: str, parent: str | None) -> int:
        """Bytes the layer adds to its parent (a container's SizeRw)."""
        return directory_size(self.diff_dir(id))

    def exists(self, id: str) -> bool:
        raise NotImplementedError

    def ids(self) -> set[str]:
        raise NotImplementedError

    def status(self) -> list[tuple[str, str]]:
        return [("Backing Filesystem", _backing_filesystem(self.home))]

    def cleanup(self) -> None:
        """Undo every mount we made (daemon shutdown)."""
        with self._lock:
            active, self._active = list(self._active), {}
        for id in active:
            self._unmount(id)

    def _unmount(self, id: str) -> None:
        pass


class VfsDriver(GraphDriver):
    name = "vfs"
    whiteouts = DeletingWhiteouts()

    def _dir(self, id: str) -> Path:
        return self.home / "dir" / id

    def create(self, id: str, parent: str | None) -> None:
        path = self._dir(id)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.mkdir(mode=0o755)
        if parent is None:
            return
        # cp -a keeps owners, modes, times, xattrs, hard links and special files, and
        # --reflink shares the blocks where the filesystem can (btrfs, xfs).
        done = subprocess.run(
            ["cp", "-a", "--reflink=auto", "--", f"{self._dir(parent)}/.", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            shutil.rmtree(path, ignore_errors=True)
            raise DriverError(f"vfs: copying layer {parent}: {done.stderr.strip()}")

    def diff_dir(self, id: str) -> Path:
        return self._dir(id)

    def get(self, id: str) -> Path:
        if not self.exists(id):
            raise DriverError(f"vfs: layer {id} does not exist")
        return self._dir(id)

    def put(self, id: str) -> None:
        pass

    def mounts(self, id: str) -> list[Mount]:
        return [Mount(type="bind", source=str(self._dir(id)), options=("rbind", "rw"))]

    def remove(self, id: str) -> None:
        shutil.rmtree(self._dir(id), ignore_errors=True)

    def diff_size(self, id: str, parent: str | None) -> int:
        # A vfs layer is a whole copy: count what differs from the parent's copy.
        return directory_size(self._dir(id), self._dir(parent) if parent else None)

    def exists(self, id: str) -> bool:
        return self._dir(id).is_dir()

    def ids(self) -> set[str]:
        return _listing(self.home / "dir")


class Overlay2Driver(GraphDriver):
    name = "overlay2"
    whiteouts = OverlayWhiteouts()

    def __init__(self, home: Path, *, index_off: bool = False) -> None:
        super().__init__(home)
        (home / "l").mkdir(mode=0o700, exist_ok=True)
        # index=off: a layer may be mounted over a different lower stack after a restore;
        # the overlay index would refuse that (dockerd turns it off where supported).
        self._prefix = ("index=off",) if index_off else ()

    def _dir(self, id: str) -> Path:
        if not id or "/" in id or id in (".", "..", "l"):
            raise DriverError(f"overlay2: invalid layer id {id!r}")
        return self.home / id

    def create(self, id: str, parent: str | None) -> None:
        base = self._dir(id)
        base.mkdir(mode=0o710)
        try:
            (base / "diff").mkdir(mode=0o755)
            link = base64.b32encode(secrets.token_bytes(20)).decode()[:LINK_LENGTH]
            os.symlink(f"../{id}/diff", self.home / "l" / link)
            (base / "link").write_text(link)
            if parent is None:
                return
            (base / "work").mkdir(mode=0o700)
            lowers = [f"l/{self._link(parent)}", *self._lowers(parent)]
            if len(lowers) > MAX_DEPTH:
                raise DriverError("max depth exceeded")
            (base / "lower").write_text(":".join(lowers))
        except BaseException:
            self.remove(id)
            raise

    def _link(self, id: str) -> str:
        return (self._dir(id) / "link").read_text().strip()

    def _lowers(self, id: str) -> list[str]:
        try:
            text = (self._dir(id) / "lower").read_text().strip()
        except FileNotFoundError:
            return []
        return text.split(":") if text else []

    def diff_dir(self, id: str) -> Path:
        return self._dir(id) / "diff"

    def _options(self, id: str, *, relative: bool) -> list[str]:
        base = self._dir(id)
        if relative:
            lower = ":".join(self._lowers(id))
            upper, work = f"{id}/diff", f"{id}/work"
        else:
            lower = ":".join(str(self.home / entry) for entry in self._lowers(id))
            upper, work = str(base / "diff"), str(base / "work")
        return [*self._prefix, f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"]

    def get(self, id: str) -> Path:
        base = self._dir(id)
        if not (base / "lower").exists():
            if not base.is_dir():
                raise DriverError(f"overlay2: layer {id} does not exist")
            return base / "diff"  # nothing below it: no mount needed, as dockerd does
        merged = base / "merged"
        with self._lock:
            count = self._active.get(id, 0)
            self._active[id] = count + 1
            if count:
                return merged
            try:
                merged.mkdir(mode=0o700, exist_ok=True)
                if not os.path.ismount(merged):  # still mounted from before a restart
                    self._mount(id, merged)
            except BaseException:
                del self._active[id]
                raise
        return merged

    def _mount(self, id: str, merged: Path) -> None:
        data = ",".join(self._options(id, relative=False))
        if len(data) < PAGE_SIZE:
            mount("overlay", str(merged), "overlay", data)
            return
        # Too long for one page: relative paths from inside the driver's home, in a child
        # process (chdir is per process, and we have threads).
        data = ",".join(self._options(id, relative=True))
        done = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", data, f"{id}/merged"],
            cwd=self.home,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise DriverError(f"mount overlay on {merged}: {done.stderr.strip()}")

    def put(self, id: str) -> None:
        with self._lock:
            count = self._active.get(id, 0)
            if count > 1:
                self._active[id] = count - 1
                return
            self._active.pop(id, None)
            self._unmount(id)

    def _unmount(self, id: str) -> None:
        merged = self._dir(id) / "merged"
        if merged.exists():
            unmount(str(merged))
            try:
                merged.rmdir()
            except OSError:
                pass

    def mounts(self, id: str) -> list[Mount]:
        base = self._dir(id)
        if not (base / "lower").exists():
            return [Mount(type="bind", source=str(base / "diff"), options=("rbind", "rw"))]
        options = tuple(self._options(id, relative=False))
        return [Mount(type="overlay", source="overlay", options=options)]

    def remove(self, id: str) -> None:
        base = self._dir(id)
        with self._lock:
            self._active.pop(id, None)
        self._unmount(id)
        try:
            (self.home / "l" / self._link(id)).unlink(missing_ok=True)
        except OSError:
            pass
        shutil.rmtree(base, ignore_errors=True)

    def exists(self, id: str) -> bool:
        return (self.home / id / "diff").is_dir()

    def ids(self) -> set[str]:
        return {name for name in os.listdir(self.home) if name != "l"}

    def status(self) -> list[tuple[str, str]]:
        return [
            *super().status(),
            ("Supports d_type", "true"),
            ("Using metacopy", "false"),
            ("Native Overlay Diff", "true"),
            ("userxattr", "false"),
        ]


def probe_overlay(scratch: Path) -> tuple[bool, bool]:
    """Can overlayfs be mounted here, with two lower layers? (works, index=off works)"""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="overlay-probe-") as tmp:
        base = Path(tmp)
        for sub in ("lower1", "lower2", "upper", "work", "merged"):
            (base / sub).mkdir()
        layers = (
            f"lowerdir={base / 'lower1'}:{base / 'lower2'},"
            f"upperdir={base / 'upper'},workdir={base / 'work'}"
        )
        for prefix in ("index=off,", ""):
            try:
                mount("overlay", str(base / "merged"), "overlay", prefix + layers)
            except DriverError:
                continue
            unmount(str(base / "merged"))
            return True, bool(prefix)
    return False, False


_PRIOR = {"overlay2": "overlay2", "vfs": "vfs/dir"}  # where each driver keeps its layers


def _listing(path: Path) -> set[str]:
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()


def choose(data_root: Path, name: str = "") -> GraphDriver:
    """The configured driver; else the one that already holds layers; else overlay2 where
    overlayfs works, else vfs (dockerd's order)."""
    if not name:
        prior = [d for d, layers in _PRIOR.items() if _listing(data_root / layers) - {"l"}]
        name = prior[0] if len(prior) == 1 else ""
    if name == "vfs":
        return VfsDriver(data_root / "vfs")
    if name not in ("", "overlay2"):
        raise StartupError(f"error initializing graphdriver: driver not supported: {name}")
    works, index_off = probe_overlay(data_root / "tmp")
    if works:
        return Overlay2Driver(data_root / "overlay2", index_off=index_off)
    if name == "overlay2":
        raise StartupError("error initializing graphdriver: driver not supported: overlay2")
    log.info("overlayfs does not work on %s; using the vfs storage driver", data_root)
    return VfsDriver(data_root / "vfs")
