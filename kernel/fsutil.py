"""Crash-safe metadata writes: a reader, or a restart after a crash, sees the old state or
the new one, never half of either (temp file, fsync, rename, fsync the directory)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_files(files: dict[Path, bytes], mode: int, *, sync: bool) -> None:
    """Write new files, then fsync them: the first fsync commits the filesystem's journal
    with all of them, so the others find little left to do."""
    fds = []
    try:
        for path, data in files.items():
            fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
            view = memoryview(data)
            while view:
                view = view[os.write(fds[-1], view) :]
        if sync:
            for fd in fds:
                os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """One file: see `atomic_write_files`."""
    atomic_write_files(path.parent, {path.name: data}, mode=mode, durable=durable)


def atomic_write_files(
    directory: Path, files: dict[str, bytes], *, mode: int = 0o644, durable: bool = True
) -> None:
    """Replace each file in `directory` atomically: temp files beside them (unique per
    call: threads write concurrently), fsync, rename each over its file, fsync the
    directory. `durable=False` skips the fsyncs, for files that record what a reboot
    erases anyway or that are made anew at every use: readers still see the old file or
    the new one, and only a power cut (never a crash of ours) can lose the write."""
    temps = {directory / f".{name}.{secrets.token_hex(6)}.tmp": name for name in files}
    try:
        _write_files({tmp: files[name] for tmp, name in temps.items()}, mode, sync=durable)
        for tmp, name in temps.items():
            os.replace(tmp, directory / name)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(directory)


def write_dir(staging_root: Path, final: Path, files: dict[str, bytes]) -> None:
    """Create directory `final` holding `files`, all at once: the files are written and
    synced in a staging directory that is then renamed into place."""
    staging = staging_root / f"{final.name}.{secrets.token_hex(6)}"
    staging.mkdir(mode=0o700)
    try:
        _write_files({staging / name: data for name, data in files.items()}, 0o644, sync=True)
        fsync_dir(staging)
        staging.chmod(0o755)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(final.parent)


def remove_dir(trash_root: Path, path: Path) -> None:
    """Remove a metadata directory at once (rename into the trash), then its files."""
    doomed = trash_root / f"rm-{path.name}.{secrets.token_hex(6)}"
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def mount_points() -> list[str]:
    """Every mount point in this mount namespace, from /proc/self/mountinfo (where spaces
    and the like are escaped as octal)."""
    with open("/proc/self/mountinfo", "rb") as info:
        raw = [line.split()[4].decode(errors="replace") for line in info]
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point) for point in raw]


def is_mount_point(path: str | Path) -> bool:
    """Is something mounted at `path`? (`Path.is_mount` misses a bind mount from the same
    filesystem.)"""
    return os.path.realpath(path) in mount_points()
