"""Graph drivers: where layer contents live and how a container's rootfs is assembled.

`overlay2` (the default where overlayfs works) stores each layer's own files in `diff/`
and mounts a container as overlayfs; `vfs` keeps a full copy per layer and works anywhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from actors.images.tarstream import WhiteoutPolicy, remove_path

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
MNT_DETACH = 2


def mount(source: str, target: str, fstype: str, options: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def unmount(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not mounted: nothing to do
            raise OSError(err, f"unmount {target}: {os.strerror(err)}")


class DeletingWhiteouts(WhiteoutPolicy):
    """vfs: a whiteout deletes; an opaque directory loses what the parent layers put there."""

    def whiteout(self, root: Path, rel: str) -> None:
        remove_path(root / rel)

    def opaque(self, root: Path, rel: str, created: set[str]) -> None:
        directory = root / rel
        prefix = f"{rel}/" if rel else ""
        for entry in os.listdir(directory):
            if f"{prefix}{entry}" not in created:
                remove_path(directory / entry)


class OverlayWhiteouts(WhiteoutPolicy):
    """overlay2: overlayfs's own marks, a 0/0 character device and the opaque xattr."""

    def whiteout(self, root: Path, rel: str) -> None:
        target = root / rel
        remove_path(target)
        os.mknod(target, 0o600 | 0o020000, os.makedev(0, 0))

    def opaque(self, root: Path, rel: str, created: set[str]) -> None:
        directory = root / rel
        directory.mkdir(exist_ok=True)
        os.setxattr(directory, "trusted.overlay.opaque", b"y")


class GraphDriver:
    name = ""
    whiteouts: WhiteoutPolicy

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True, mode=0o710)

    def create_layer(self, cache_id: str, parent: str | None) -> Path:
        """A directory to extract a layer tar into; returns it."""
        raise NotImplementedError

    def layer_files(self, cache_id: str) -> Path:
        """Where the layer's own files are (for regenerating its tar)."""
        raise NotImplementedError

    def create_rw(self, rw_id: str, parent: str | None) -> None:
        raise NotImplementedError

    def mount_rw(self, rw_id: str, chain: list[str]) -> str:
        """Mount a container's rootfs; `chain` is the image's cache IDs, top layer first."""
        raise NotImplementedError

    def unmount_rw(self, rw_id: str) -> None:
        raise NotImplementedError

    def remove(self, cache_id: str) -> None:
        raise NotImplementedError

    def status(self) -> list[list[str]]:
        return [["Backing Filesystem", _backing_fs(self.home)]]


def _backing_fs(path: Path) -> str:
    try:
        out = subprocess.run(
            ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return {"ext2/ext3": "extfs"}.get(out, out)


def _copy_tree(source: Path, target: Path) -> None:
    # cp -a keeps owners, modes, times, xattrs, hard links and special files.
    subprocess.run(["cp", "-a", "--", f"{source}/.", str(target)], check=True)


class VfsDriver(GraphDriver):
    name = "vfs"
    whiteouts = DeletingWhiteouts()

    def _dir(self, cache_id: str) -> Path:
        return self.home / "dir" / cache_id

    def create_layer(self, cache_id: str, parent: str | None) -> Path:
        path = self._dir(cache_id)
        path.mkdir(parents=True, mode=0o755)
        if parent:
            _copy_tree(self._dir(parent), path)
        return path

    def layer_files(self, cache_id: str) -> Path:
        return self._dir(cache_id)

    def create_rw(self, rw_id: str, parent: str | None) -> None:
        self.create_layer(rw_id, parent)

    def mount_rw(self, rw_id: str, chain: list[str]) -> str:
        return str(self._dir(rw_id))

    def unmount_rw(self, rw_id: str) -> None:
        pass

    def remove(self, cache_id: str) -> None:
        shutil.rmtree(self._dir(cache_id), ignore_errors=True)


class Overlay2Driver(GraphDriver):
    name = "overlay2"
    whiteouts = OverlayWhiteouts()

    def _dir(self, cache_id: str) -> Path:
        return self.home / cache_id

    def create_layer(self, cache_id: str, parent: str | None) -> Path:
        diff = self._dir(cache_id) / "diff"
        diff.mkdir(parents=True, mode=0o755)
        return diff

    def layer_files(self, cache_id: str) -> Path:
        return self._dir(cache_id) / "diff"

    def create_rw(self, rw_id: str, parent: str | None) -> None:
        base = self._dir(rw_id)
        for sub in ("diff", "work", "merged"):
            (base / sub).mkdir(parents=True, mode=0o755)

    def mount_rw(self, rw_id: str, chain: list[str]) -> str:
        base = self._dir(rw_id)
        merged = base / "merged"
        if os.path.ismount(merged):
            return str(merged)
        lower = ":".join(str(self._dir(c) / "diff") for c in chain)
        options = f"lowerdir={lower},upperdir={base / 'diff'},workdir={base / 'work'}"
        mount("overlay", str(merged), "overlay", options)
        return str(merged)

    def unmount_rw(self, rw_id: str) -> None:
        merged = self._dir(rw_id) / "merged"
        if os.path.ismount(merged):
            unmount(str(merged))

    def remove(self, cache_id: str) -> None:
        self.unmount_rw(cache_id)
        shutil.rmtree(self._dir(cache_id), ignore_errors=True)

    def status(self) -> list[list[str]]:
        return [*super().status(), ["Supports d_type", "true"], ["Using metacopy", "false"],
                ["Native Overlay Diff", "true"], ["userxattr", "false"]]  # fmt: skip


def overlay_works(scratch: Path) -> bool:
    """Probe: can we mount overlayfs here (kernel support, backing filesystem)?"""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        base = Path(tmp)
        for sub in ("lower", "upper", "work", "merged"):
            (base / sub).mkdir()
        try:
            dirs = f"lowerdir={base / 'lower'},upperdir={base / 'upper'},workdir={base / 'work'}"
            mount("overlay", str(base / "merged"), "overlay", dirs)
        except OSError:
            return False
        unmount(str(base / "merged"))
        return True


def choose(data_root: Path, name: str) -> GraphDriver:
    """The configured driver, or overlay2 when it works here, else vfs."""
    if name == "vfs":
        return VfsDriver(data_root / "vfs")
    if name == "overlay2":
        return Overlay2Driver(data_root / "overlay2")
    if name:
        raise ValueError(f"unsupported storage driver: {name}")
    if overlay_works(data_root / "tmp"):
        return Overlay2Driver(data_root / "overlay2")
    return VfsDriver(data_root / "vfs")
