"""Layer tars: read a stream once, extract it safely into a layer directory while hashing it,
and record its exact bytes minus file contents so `docker save` can rebuild it byte for byte
(the DiffID is the sha256 of those bytes). Our compact equivalent of dockerd's tar-split.

Safety: every path is resolved inside the layer directory as if it were `/` (what dockerd
gets by extracting in a chroot): `..` stops at the root, symbolic links are followed only
within it, absolute names are made relative, device nodes are never created.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import posixpath
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from kernel.errors import InvalidParameter

log = logging.getLogger("pydockerd.images")

BLOCK = 512
CHUNK = 1 << 20
ZERO_BLOCK = bytes(BLOCK)
WHITEOUT = ".wh."
WHITEOUT_META = ".wh..wh."
OPAQUE = ".wh..wh..opq"
MAX_SYMLINK_HOPS = 40
MAX_SPECIAL = 1 << 20  # extension headers and content-bearing odd entries (Go's limit)

# A record is raw bytes (headers, padding, the end), or [path, size]: that many bytes of
# the file at path (bytes, as the OS names it) inside the layer.
Record = bytes | tuple[bytes, int]


class LayerError(InvalidParameter):
    """The layer tar is corrupt, truncated or unsafe, or its files changed on disk."""


Remove = Callable[[str], None]


class Whiteouts:
    """How a graph driver represents deletions: vfs deletes, overlay2 leaves marks.
    `remove` deletes a path the way the extraction needs (never following symlinks)."""

    def whiteout(self, directory: str, name: str, uid: int, gid: int, remove: Remove) -> None:
        raise NotImplementedError

    def opaque(self, directory: str, created: set[str], remove: Remove) -> None:
        """`directory` (absolute) hides what lower layers put there; `created` holds the
        absolute paths this layer has written so far."""
        raise NotImplementedError


class DeletingWhiteouts(Whiteouts):
    """vfs: the layer is a full copy of its parent, so a whiteout simply deletes."""

    def whiteout(self, directory: str, name: str, uid: int, gid: int, remove: Remove) -> None:
        remove(os.path.join(directory, name))

    def opaque(self, directory: str, created: set[str], remove: Remove) -> None:
        for entry in os.listdir(directory):
            path = os.path.join(directory, entry)
            if path not in created:
                remove(path)


class NoWhiteouts(Whiteouts):
    """Archives that are not layers (`docker load`'s outer tar) have no deletions."""

    def whiteout(self, directory: str, name: str, uid: int, gid: int, remove: Remove) -> None:
        pass

    def opaque(self, directory: str, created: set[str], remove: Remove) -> None:
        pass


class OverlayWhiteouts(Whiteouts):
    """overlay2: overlayfs's own marks, a 0/0 character device and the opaque xattr."""

    def whiteout(self, directory: str, name: str, uid: int, gid: int, remove: Remove) -> None:
        path = os.path.join(directory, name)
        remove(path)
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        os.lchown(path, uid, gid)

    def opaque(self, directory: str, created: set[str], remove: Remove) -> None:
        os.setxattr(directory, "trusted.overlay.opaque", b"y", follow_symlinks=False)


@dataclass(frozen=True)
class Extracted:
    diff_id: str  # sha256:<hex> of every byte of the stream
    tar_size: int  # bytes in the stream
    size: int  # what the layer adds: file and symlink sizes (dockerd's layer size)
    records: list[Record]


def clean_name(name: str) -> str:
    """The entry's path relative to the layer root ("" for the root itself).

    Absolute names become relative (as dockerd does); `..` that would climb out is an error.
    """
    relative = posixpath.normpath(name.lstrip("/"))
    if relative == ".." or relative.startswith("../"):
        raise LayerError(f"invalid tar entry {name!r}: path escapes the layer")
    return "" if relative == "." else relative


# -- reading ------------------------------------------------------------------------


class _NoHash:
    def update(self, data: bytes | memoryview) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


class _Reader:
    """Reads the stream exactly once, hashing and counting every byte."""

    def __init__(self, source: BinaryIO, *, hashing: bool = True) -> None:
        self.source = source
        self.sha = hashlib.sha256() if hashing else _NoHash()
        self.count = 0
        self.buffer = memoryview(bytearray(CHUNK))

    def read(self, size: int) -> bytes:
        """Up to `size` bytes; fewer only at the end of the stream."""
        parts = []
        while size:
            data = self.source.read(size)
            if not data:
                break
            parts.append(data)
            size -= len(data)
        data = b"".join(parts)
        self.sha.update(data)
        self.count += len(data)
        return data

    def read_exact(self, size: int) -> bytes:
        data = self.read(size)
        if len(data) != size:
            raise LayerError("unexpected EOF: the tar stream is truncated")
        return data

    def copy_to(self, fd: int, size: int) -> None:
        while size:
            n = self.source.readinto(self.buffer[: min(size, CHUNK)])  # type: ignore[attr-defined]
            if not n:
                raise LayerError("unexpected EOF: the tar stream is truncated")
            chunk = self.buffer[:n]
            self.sha.update(chunk)
            self.count += n
            size -= n
            while chunk:
                chunk = chunk[os.write(fd, chunk) :]

    def rest(self) -> bytes:
        parts = []
        while data := self.read(CHUNK):
            parts.append(data)
        return b"".join(parts)


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 (big values, negative ones unused)
        value = field[0] & 0x7F
        for byte in field[1:]:
            value = (value << 8) | byte
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise LayerError("archive/tar: invalid tar header") from None


def _checksum_ok(header: bytes) -> bool:
    stored = _number(header[148:156])
    rest = header[:148] + header[156:]
    unsigned = sum(rest) + 8 * 32
    if stored == unsigned:
        return True
    return stored == unsigned - 256 * sum(1 for b in rest if b > 127)  # old signed sums


def _cstring(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    while data:
        length_text, space, _ = data.partition(b" ")
        try:
            length = int(length_text)
        except ValueError:
            raise LayerError("archive/tar: invalid PAX record") from None
        if not space or length <= len(length_text) + 1 or length > len(data):
            raise LayerError("archive/tar: invalid PAX record")
        record, data = data[len(length_text) + 1 : length - 1], data[length:]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value
    return records


def _padding(size: int) -> int:
    return -size % BLOCK


@dataclass
class _Header:
    name: str
    linkname: str
    kind: bytes
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: dict[str, bytes]


class _Records:
    """Builds the record list, joining neighbouring raw bytes without quadratic copies."""

    def __init__(self, root: str = "") -> None:
        self.records: list[Record] = []
        self._raw: list[bytes] = []
        self._root = root
        self._files: dict[str, int] = {}  # absolute path -> its record

    def raw(self, data: bytes) -> None:
        if data:
            self._raw.append(data)

    def file(self, path: str, size: int) -> None:
        self._flush()
        self._files[path] = len(self.records)
        self.records.append((os.fsencode(path[len(self._root) + 1 :]), size))

    def preserve(self, path: str) -> None:
        """`path` is about to go (a later entry replaces it, a whiteout deletes it): keep
        the content of files recorded there inline, or `save` could not rebuild them."""
        if not self._files:
            return
        prefix = path + "/"
        for name in [n for n in self._files if n == path or n.startswith(prefix)]:
            index = self._files.pop(name)
            _, size = self.records[index]
            with open(name, "rb") as handle:  # a regular file we wrote: no symlink here
                data = handle.read(size)
            if len(data) != size:
                raise LayerError(f"{name}: changed during extraction")
            self.records[index] = data

    def _flush(self) -> None:
        if self._raw:
            self.records.append(b"".join(self._raw))
            self._raw = []

    def done(self) -> list[Record]:
        self._flush()
        return self.records


def _next_header(reader: _Reader, records: _Records) -> _Header | None:
    """The next entry's header (extension headers folded in), or None at the end."""
    long_name = long_link = None
    pax: dict[str, bytes] = {}
    while True:
        block = reader.read(BLOCK)
        if not block:
            return None  # a clean end on a block boundary, as Go's archive/tar accepts
        if len(block) != BLOCK:
            raise LayerError("unexpected EOF: the tar stream is truncated")
        if block == ZERO_BLOCK:
            records.raw(block + reader.rest())  # end marker and any padding, byte for byte
            return None
        if not _checksum_ok(block):
            raise LayerError("archive/tar: invalid tar header")
        records.raw(block)
        size = _number(block[124:136])
        kind = block[156:157]
        if kind in (b"L", b"K", b"x", b"g"):
            if size > MAX_SPECIAL:
                raise LayerError("archive/tar: header field too long")
            content = reader.read_exact(size + _padding(size))
            records.raw(content)
            content = content[:size]
            if kind == b"L":
                long_name = _cstring(content)
            elif kind == b"K":
                long_link = _cstring(content)
            elif kind == b"x":
                pax = _pax_records(content)
            continue
        name = _cstring(block[0:100])
        if block[257:263] == b"ustar\0" and block[345] != 0:  # POSIX ustar: name prefix
            name = _cstring(block[345:500]) + "/" + name
        linkname = _cstring(block[157:257])
        if long_name is not None:
            name = long_name
        if long_link is not None:
            linkname = long_link
        if "path" in pax:
            name = pax["path"].decode("utf-8", "surrogateescape")
        if "linkpath" in pax:
            linkname = pax["linkpath"].decode("utf-8", "surrogateescape")
        try:
            size = int(pax.get("size", size))
            uid = int(pax.get("uid", _number(block[108:116])))
            gid = int(pax.get("gid", _number(block[116:124])))
            mtime_ns = int(float(pax.get("mtime", _number(block[136:148]))) * 1e9)
        except ValueError:
            raise LayerError("archive/tar: invalid PAX record") from None
        if kind == b"\0" and name.endswith("/"):
            kind = b"5"  # old tars mark directories only by the slash
        xattrs = {k[13:]: v for k, v in pax.items() if k.startswith("SCHILY.xattr.")}
        mode = _number(block[100:108]) & 0o7777
        return _Header(name, linkname, kind, size, mode, uid, gid, mtime_ns, xattrs)


# -- extracting ---------------------------------------------------------------------


class _Root:
    """Path resolution inside a layer directory, as if it were `/` (chroot semantics)."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self._dirs: dict[str, str] = {"": self.root}  # resolved directories, cleared on removal

    def forget(self) -> None:
        self._dirs = {"": self.root}

    def directory(self, rel: str, *, create: bool = True) -> str:
        """The real absolute path of directory `rel`, following symlinks only inside the
        root and creating what is missing (dockerd's MkdirAll of a parent)."""
        cached = self._dirs.get(rel)
        if cached is not None:
            return cached
        parts = rel.split("/")[::-1]
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            path = os.path.join(self.root, *done, part)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                if not create:
                    raise LayerError(f"invalid tar entry {rel!r}: no such directory") from None
                os.mkdir(path, 0o755)
                done.append(part)
                continue
            if stat.S_ISLNK(mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise LayerError(f"invalid tar entry {rel!r}: too many symbolic links")
                target = os.readlink(path)
                if target.startswith("/"):
                    done = []
                parts.extend(reversed(target.split("/")))
                continue
            if not stat.S_ISDIR(mode):
                raise LayerError(f"invalid tar entry {rel!r}: {part!r} is not a directory")
            done.append(part)
        resolved = os.path.join(self.root, *done)
        self._dirs[rel] = resolved
        return resolved


def scoped_path(root: Path, name: str) -> Path:
    """Where `name` leads inside `root`, following symbolic links as if `root` were `/`
    (dockerd's FollowSymlinkInScope for the files an archive's manifest names)."""
    resolver = _Root(root)
    rel = clean_name(name)
    for _ in range(MAX_SYMLINK_HOPS):
        parent, base = posixpath.split(rel)
        path = os.path.join(resolver.directory(parent, create=False), base)
        if not base or not os.path.islink(path):
            return Path(path)
        target = os.readlink(path)
        if not target.startswith("/"):
            target = posixpath.join(os.path.relpath(os.path.dirname(path), resolver.root), target)
        rel = posixpath.normpath("/" + target).lstrip("/")  # `..` stops at the root
    raise LayerError(f"{name}: too many levels of symbolic links")


def _replace(path: str, root: _Root, records: _Records, *, keep_dir: bool = False) -> None:
    """Clear the way for a new entry at `path` (tar semantics: the last entry wins), or
    delete it for a whiteout."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode) and keep_dir:
        return
    records.preserve(path)
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
        root.forget()
    else:
        os.unlink(path)


def _check_kind_change(path: str, rel: str, *, is_dir: bool) -> None:
    try:
        was_dir = stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return
    if was_dir and not is_dir:
        raise LayerError(f'cannot overwrite directory "/{rel}" with non-directory')
    if is_dir and not was_dir:
        raise LayerError(f'cannot overwrite non-directory "/{rel}" with directory')


def extract(
    source: BinaryIO,
    target: Path,
    whiteouts: Whiteouts,
    *,
    hashing: bool = True,
    owner: tuple[int, int] | None = None,
    no_overwrite_dir_non_dir: bool = False,
) -> Extracted:
    """Apply one uncompressed layer tar to the directory `target`.

    `owner` replaces every entry's uid/gid; `no_overwrite_dir_non_dir` refuses to replace a
    directory by a non-directory and the reverse (both for `docker cp`).
    """
    reader = _Reader(source, hashing=hashing)
    root = _Root(target)
    records = _Records(root.root)

    def remove(path: str) -> None:
        _replace(path, root, records)

    created: set[str] = set()
    dir_times: list[tuple[str, int]] = []
    size = 0
    skipped_devices = 0
    while (header := _next_header(reader, records)) is not None:
        rel = clean_name(header.name)
        parent_rel, base = posixpath.split(rel)
        consumed = False
        if not rel:
            pass  # the root directory itself: dockerd leaves it alone
        elif base.startswith(WHITEOUT):
            directory = root.directory(parent_rel)
            hidden = base[len(WHITEOUT) :]
            if base == OPAQUE:
                whiteouts.opaque(directory, created, remove)
            elif not base.startswith(WHITEOUT_META) and hidden not in ("", ".", ".."):
                # (other .wh..wh. names are aufs metadata, ignored as dockerd does)
                whiteouts.whiteout(directory, hidden, header.uid, header.gid, remove)
        else:
            directory = root.directory(parent_rel)
            path = os.path.join(directory, base)
            kind = header.kind
            if owner is not None:
                header.uid, header.gid = owner
            if no_overwrite_dir_non_dir:
                _check_kind_change(path, rel, is_dir=kind == b"5")
            if kind in (b"0", b"\0", b"7"):
                _replace(path, root, records)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                try:
                    reader.copy_to(fd, header.size)
                    os.fchown(fd, header.uid, header.gid)
                    os.fchmod(fd, header.mode)
                    _set_xattrs(fd, header.xattrs)
                    os.utime(fd, ns=(header.mtime_ns, header.mtime_ns))
                finally:
                    os.close(fd)
                records.file(path, header.size)
                consumed = True
                size += header.size
            elif kind == b"5":
                _replace(path, root, records, keep_dir=True)
                if not os.path.isdir(path):
                    os.mkdir(path, 0o755)
                os.lchown(path, header.uid, header.gid)
                os.chmod(path, header.mode)
                _set_xattrs(path, header.xattrs)
                dir_times.append((path, header.mtime_ns))  # set after its children
            elif kind == b"2":
                _replace(path, root, records)
                os.symlink(header.linkname, path)
                os.lchown(path, header.uid, header.gid)
                os.utime(path, ns=(header.mtime_ns, header.mtime_ns), follow_symlinks=False)
                size += len(os.fsencode(header.linkname))
            elif kind == b"1":
                link_rel = clean_name(header.linkname)
                link_parent, link_base = posixpath.split(link_rel)
                source_path = os.path.join(root.directory(link_parent, create=False), link_base)
                if not link_base or not os.path.lexists(source_path):
                    raise LayerError(f"invalid hard link {header.name!r} -> {header.linkname!r}")
                if source_path != path:
                    _replace(path, root, records)
                    os.link(source_path, path, follow_symlinks=False)
            elif kind == b"6":
                _replace(path, root, records)
                os.mkfifo(path, 0o600)
                os.lchown(path, header.uid, header.gid)
                os.chmod(path, header.mode)
                os.utime(path, ns=(header.mtime_ns, header.mtime_ns))
            else:
                # Device nodes (and unknown types) never reach the host's filesystem: a
                # crafted /dev/sda in an image would hand the disk to anyone who can read it.
                skipped_devices += 1
            created.add(path)
        if header.size and not consumed:  # content nobody wrote out stays raw (and small)
            if header.size > MAX_SPECIAL:
                raise LayerError(f"tar entry {header.name!r}: unsupported type {header.kind!r}")
            records.raw(reader.read_exact(header.size))
        records.raw(reader.read_exact(_padding(header.size)))
    for path, mtime_ns in reversed(dir_times):
        try:
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        except FileNotFoundError:
            pass  # a later entry removed it
    if skipped_devices:
        log.warning("layer %s: skipped %d device node(s)", target.name, skipped_devices)
    return Extracted(
        diff_id=f"sha256:{reader.sha.hexdigest()}",
        tar_size=reader.count,
        size=size,
        records=records.done(),
    )


def _set_xattrs(target: int | str, xattrs: dict[str, bytes]) -> None:
    for key, value in xattrs.items():
        try:
            os.setxattr(target, key, value, follow_symlinks=False)
        except OSError as exc:  # e.g. security.* the backing filesystem refuses
            log.debug("xattr %s not set: %s", key, exc)


# -- tar-split ----------------------------------------------------------------------


def encode_records(records: list[Record]) -> bytes:
    return gzip.compress(
        msgspec.msgpack.encode([r if isinstance(r, bytes) else list(r) for r in records]),
        compresslevel=1,
    )


def decode_records(data: bytes) -> list[Record]:
    raw = msgspec.msgpack.decode(gzip.decompress(data))
    return [r if isinstance(r, bytes) else (bytes(r[0]), int(r[1])) for r in raw]


class _Files:
    """Opens files under a root without ever following a symbolic link, so a layer whose
    content changed since import cannot make `save` read files outside it."""

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
        self.dir_key = b""
        self.dir_fd = os.dup(self.root_fd)

    def open(self, rel: bytes) -> int:
        directory, _, base = rel.rpartition(b"/")
        if directory != self.dir_key:
            fd = os.dup(self.root_fd)
            try:
                for part in directory.split(b"/") if directory else ():
                    next_fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                    os.close(fd)
                    fd = next_fd
            except BaseException:
                os.close(fd)
                raise
            os.close(self.dir_fd)
            self.dir_fd, self.dir_key = fd, directory
        fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{rel!r} is not a regular file")
        return fd

    def close(self) -> None:
        os.close(self.dir_fd)
        os.close(self.root_fd)


def regenerate(records: list[Record], root: Path, diff_id: str) -> Iterator[bytes]:
    """The layer tar exactly as it was imported, checked against its DiffID as it streams
    (a mismatch fails at the end, like dockerd's verified reader)."""
    sha = hashlib.sha256()
    files = _Files(root)
    pending: list[bytes] = []
    pending_size = 0
    try:
        for record in records:
            if isinstance(record, bytes):
                pending.append(record)
                pending_size += len(record)
                if pending_size >= CHUNK:
                    out = b"".join(pending)
                    sha.update(out)
                    yield out
                    pending, pending_size = [], 0
                continue
            rel, left = record
            try:
                fd = files.open(rel)
            except OSError as exc:
                raise LayerError(f"layer content changed on disk: {rel!r}: {exc}") from None
            try:
                while left:
                    data = os.read(fd, min(left, CHUNK))
                    if not data:
                        raise LayerError(f"layer content changed on disk: {rel!r} shrank")
                    pending.append(data)
                    pending_size += len(data)
                    left -= len(data)
                    if pending_size >= CHUNK:
                        out = b"".join(pending)
                        sha.update(out)
                        yield out
                        pending, pending_size = [], 0
            finally:
                os.close(fd)
        if pending:
            out = b"".join(pending)
            sha.update(out)
            yield out
    finally:
        files.close()
    if f"sha256:{sha.hexdigest()}" != diff_id:
        raise LayerError(f"layer {diff_id} does not match its content on disk any more")
