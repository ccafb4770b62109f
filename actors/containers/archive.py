"""`docker cp`: stat, read and write paths inside a container's root filesystem.

Paths are resolved with the root as `/` (symbolic links never lead out of it), reading
never follows links, and writing reuses the layer extractor, which resolves every entry
inside its target the same way. Bind mounts inside a running container are not seen
here (they live in the container's mount namespace).
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import stat
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

from actors.images.tarstream import LayerError, NoWhiteouts, extract, scoped_path
from kernel.clock import rfc3339_nano
from kernel.errors import InvalidParameter, NotFound

# Go's os.FileMode type bits, which the CLI reads from X-Docker-Container-Path-Stat.
_GO_TYPE_BITS = (
    (stat.S_ISDIR, 1 << 31),
    (stat.S_ISLNK, 1 << 27),
    (stat.S_ISBLK, 1 << 26),
    (stat.S_ISFIFO, 1 << 25),
    (stat.S_ISSOCK, 1 << 24),
    (stat.S_ISCHR, (1 << 26) | (1 << 21)),
)


def go_file_mode(mode: int) -> int:
    bits = mode & 0o777
    for test, flag in _GO_TYPE_BITS:
        if test(mode):
            bits |= flag
    if mode & stat.S_ISUID:
        bits |= 1 << 23
    if mode & stat.S_ISGID:
        bits |= 1 << 22
    if mode & stat.S_ISVTX:
        bits |= 1 << 20
    return bits


def resolve(root: Path, path: str, container_name: str) -> Path:
    """`path` inside the root: its directory resolved in scope, its last component kept as
    is (a symbolic link is copied as a link) unless the path ends in `/` or `/.`, as dockerd."""
    parent, base = posixpath.split(path)
    follow = base in ("", ".")
    try:
        target = scoped_path(root, path) if follow else scoped_path(root, parent) / base
    except LayerError:
        target = Path("/nonexistent")
    if not os.path.lexists(target):
        raise NotFound(f"Could not find the file {path} in container {container_name.lstrip('/')}")
    return target


def path_stat(root: Path, path: str, container_name: str) -> str:
    """The base64 JSON of X-Docker-Container-Path-Stat."""
    target = resolve(root, path, container_name)
    info = os.lstat(target)
    record: dict[str, Any] = {
        "name": os.path.basename(path.rstrip("/")) or "/",
        "size": info.st_size,
        "mode": go_file_mode(info.st_mode),
        "mtime": rfc3339_nano(info.st_mtime_ns),
        "linkTarget": os.readlink(target) if stat.S_ISLNK(info.st_mode) else "",
    }
    return base64.b64encode(json.dumps(record).encode()).decode()


def write_tar(root: Path, path: str, container_name: str, out: BinaryIO) -> None:
    """The path as a tar whose top entry is its base name (`docker cp ctr:/p dst`)."""
    target = resolve(root, path, container_name)
    name = os.path.basename(path.rstrip("/")) or "."
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        archive.add(target, arcname=name, recursive=True)


def extract_into(
    root: Path,
    path: str,
    container_name: str,
    source: BinaryIO,
    *,
    owner: tuple[int, int] | None = None,
    no_overwrite_dir_non_dir: bool = False,
) -> None:
    """Unpack a tar into the directory `path` (`docker cp src ctr:/p`)."""
    target = resolve(root, path, container_name)
    # lstat: a link here would be followed outside the root by the extractor.
    if not stat.S_ISDIR(os.lstat(target).st_mode):
        raise InvalidParameter("extraction point is not a directory")
    try:
        extract(
            source,
            target,
            NoWhiteouts(),
            hashing=False,
            owner=owner,
            no_overwrite_dir_non_dir=no_overwrite_dir_non_dir,
        )
    except LayerError as exc:
        raise InvalidParameter(exc.message) from None
