"""Layer tars: read a stream once, extract it safely into a layer directory, hash it, and
record its exact bytes minus file contents so `docker save` can rebuild it byte for byte
(the DiffID is the sha256 of those bytes). Our compact equivalent of dockerd's tar-split.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import msgspec

log = logging.getLogger("pydockerd.images")

BLOCK = 512
CHUNK = 1 << 20
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

# A segment is raw bytes, or [path, size]: that many content bytes of the file at path.
Segment = bytes | tuple[str, int]


class LayerError(Exception):
    """The layer tar is corrupt, truncated or unsafe."""


class WhiteoutPolicy:
    """How a graph driver represents deletions (vfs deletes, overlay2 marks)."""

    def whiteout(self, root: Path, rel: str) -> None:
        raise NotImplementedError

    def opaque(self, root: Path, rel: str, created: set[str]) -> None:
        raise NotImplementedError


@dataclass
class ReadResult:
    diff_id: str  # sha256:...
    tar_size: int
    segments: list[Segment] = field(default_factory=list)


class HashingReader:
    """Reads exactly what it is asked for, hashing every byte; short reads are errors."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, size: int) -> bytes:
        data = self.source.read(size)
        self.sha.update(data)
        self.count += len(data)
        return data

    def read_exact(self, size: int) -> bytes:
        parts = []
        left = size
        while left:
            data = self.read(min(left, CHUNK))
            if not data:
                raise LayerError("unexpected EOF: the layer tar is truncated")
            parts.append(data)
            left -= len(data)
        return b"".join(parts)


def _octal(field_bytes: bytes) -> int:
    if field_bytes and field_bytes[0] & 0x80:  # GNU base-256
        value = field_bytes[0] & 0x7F
        for byte in field_bytes[1:]:
            value = (value << 8) | byte
        return value
    text = field_bytes.rstrip(b"\0 ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise LayerError("archive/tar: invalid tar header") from None


def _checksum_ok(header: bytes) -> bool:
    stored = _octal(header[148:156])
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    return stored == unsigned


def _pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    while data:
        length_text, _, _ = data.partition(b" ")
        try:
            length = int(length_text)
        except ValueError:
            raise LayerError("archive/tar: invalid PAX record") from None
        record, data = data[:length], data[length:]
        key, _, value = record[len(length_text) + 1 : -1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
    return records


def _padding(size: int) -> int:
    return (BLOCK - size % BLOCK) % BLOCK


def safe_relpath(name: str) -> str:
    """The entry's path inside the layer, or LayerError when it would leave the layer."""
    cleaned = posixpath.normpath(name.lstrip("/"))
    if cleaned in ("", "."):
        return ""
    if cleaned == ".." or cleaned.startswith("../"):
        raise LayerError(f"invalid tar entry {name!r}: path escapes the layer")
    return cleaned


def _ensure_parents(root: Path, rel: str) -> Path:
    """Create missing parent directories; refuse to go through a symlink (it could point out)."""
    current = root
    for part in rel.split("/")[:-1]:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if stat.S_ISLNK(mode):
            raise LayerError(f"invalid tar entry {rel!r}: path goes through a symbolic link")
        if not stat.S_ISDIR(mode):
            raise LayerError(f"invalid tar entry {rel!r}: a parent is not a directory")
    return root / rel


def remove_path(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        import shutil

        shutil.rmtree(path)
    else:
        os.unlink(path)


def extract(source: BinaryIO, root: Path, policy: WhiteoutPolicy) -> ReadResult:
    """Apply one uncompressed layer tar to `root`; return its DiffID and segments."""
    reader = HashingReader(source)
    segments: list[Segment] = []
    created: set[str] = set()
    dir_times: list[tuple[Path, int]] = []
    long_name: str | None = None
    long_link: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = reader.read(BLOCK)
        if not header:
            if reader.count == 0:
                raise LayerError("unexpected EOF: empty layer")
            raise LayerError("unexpected EOF: the layer tar has no end marker")
        if len(header) < BLOCK:
            header += reader.read_exact(BLOCK - len(header))
        if header == b"\0" * BLOCK:
            # End of archive: keep everything that follows, byte for byte.
            tail = [header]
            while data := reader.read(CHUNK):
                tail.append(data)
            segments.append(b"".join(tail))
            break
        if not _checksum_ok(header):
            raise LayerError("archive/tar: invalid tar header")
        size = _octal(header[124:136])
        kind = header[156:157]
        if kind in (b"L", b"K", b"x", b"g"):
            content = reader.read_exact(size)
            padding = reader.read_exact(_padding(size))
            segments.append(header + content + padding)
            if kind == b"L":
                long_name = content.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif kind == b"K":
                long_link = content.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif kind == b"x":
                pax = _pax(content)
            continue
        name = header[0:100].rstrip(b"\0").decode("utf-8", "surrogateescape")
        if header[257:262] == b"ustar" and header[345:500].strip(b"\0"):
            prefix = header[345:500].rstrip(b"\0").decode("utf-8", "surrogateescape")
            name = f"{prefix}/{name}"
        linkname = header[157:257].rstrip(b"\0").decode("utf-8", "surrogateescape")
        name = pax.get("path", long_name or name)
        linkname = pax.get("linkpath", long_link or linkname)
        size = int(pax.get("size", size))
        uid = int(pax.get("uid", _octal(header[108:116])))
        gid = int(pax.get("gid", _octal(header[116:124])))
        mode = _octal(header[100:108]) & 0o7777
        mtime_ns = int(float(pax.get("mtime", _octal(header[136:148]))) * 1e9)
        xattrs = {
            k[len("SCHILY.xattr.") :]: v for k, v in pax.items() if k.startswith("SCHILY.xattr.")
        }
        long_name = long_link = None
        pax = {}
        segments.append(header)
        content_size, consumed = size, False
        rel = safe_relpath(name)
        base = posixpath.basename(rel)
        regular = kind in (b"0", b"\0", b"7")
        if rel and base.startswith(WHITEOUT):
            parent = posixpath.dirname(rel)
            _ensure_parents(root, rel)
            if base == OPAQUE:
                policy.opaque(root, parent, created)
            else:
                policy.whiteout(root, posixpath.join(parent, base[len(WHITEOUT) :]))
        elif rel:
            target = _ensure_parents(root, rel)
            if kind == b"5":
                if (os.path.lexists(target) and not os.path.isdir(target)) or os.path.islink(
                    target
                ):
                    remove_path(target)
                if not os.path.lexists(target):
                    os.mkdir(target, 0o755)
                dir_times.append((target, mtime_ns))
            elif regular:
                if os.path.isdir(target) and not os.path.islink(target):
                    remove_path(target)
                elif os.path.lexists(target):
                    os.unlink(target)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    left = size
                    while left:
                        data = reader.read(min(left, CHUNK))
                        if not data:
                            raise LayerError("unexpected EOF: the layer tar is truncated")
                        out.write(data)
                        left -= len(data)
                segments.append((rel, size))
                consumed = True
            elif kind == b"2":
                remove_path(target)
                os.symlink(linkname, target)
            elif kind == b"1":
                source_rel = safe_relpath(linkname)
                source_path = _ensure_parents(root, source_rel) if source_rel else root
                if not source_rel or not os.path.lexists(source_path):
                    raise LayerError(f"invalid hardlink {name!r} -> {linkname!r}")
                remove_path(target)
                os.link(source_path, target, follow_symlinks=False)
            elif kind == b"6":
                remove_path(target)
                os.mkfifo(target, 0o600)
            else:
                # Device nodes (and unknown types) never reach the host's filesystem.
                log.warning("skipping %r in layer: entry type %r is not allowed", name, kind)
                target = Path()
            if target != Path() and kind != b"1":
                os.lchown(target, uid, gid)
                if kind != b"2":
                    os.chmod(target, mode)
                for key, value in xattrs.items():
                    try:
                        os.setxattr(
                            target,
                            key,
                            value.encode("utf-8", "surrogateescape"),
                            follow_symlinks=False,
                        )
                    except OSError:
                        pass
                if kind != b"5":
                    os.utime(target, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
            created.add(rel)
        if content_size and not consumed:  # content we did not write out stays raw
            segments.append(reader.read_exact(content_size))
        segments.append(reader.read_exact(_padding(content_size)))
    for path, mtime_ns in reversed(dir_times):
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    return ReadResult(
        diff_id=f"sha256:{reader.sha.hexdigest()}", tar_size=reader.count, segments=_merge(segments)
    )


def _merge(segments: list[Segment]) -> list[Segment]:
    """Join neighbouring raw segments (fewer, larger records on disk)."""
    merged: list[Segment] = []
    for segment in segments:
        if isinstance(segment, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] = merged[-1] + segment
        elif segment != b"":
            merged.append(segment)
    return merged


def save_segments(path: Path, segments: list[Segment]) -> None:
    encoded = msgspec.msgpack.encode([s if isinstance(s, bytes) else list(s) for s in segments])
    path.write_bytes(gzip.compress(encoded, compresslevel=1))


def load_segments(path: Path) -> list[Segment]:
    raw = msgspec.msgpack.decode(gzip.decompress(path.read_bytes()))
    return [s if isinstance(s, bytes) else (str(s[0]), int(s[1])) for s in raw]


def regenerate(segments: list[Segment], root: Path) -> Iterator[bytes]:
    """The layer tar exactly as it was imported."""
    for segment in segments:
        if isinstance(segment, bytes):
            yield segment
            continue
        rel, size = segment
        with open(root / rel, "rb") as handle:
            left = size
            while left:
                data = handle.read(min(left, CHUNK))
                if not data:
                    raise LayerError(f"layer content changed on disk: {rel}")
                yield data
                left -= len(data)


def open_maybe_gzip(source: BinaryIO) -> BinaryIO:
    """Transparent gzip: layers may be compressed (inside an archive, or for import)."""
    buffered: Any = source if hasattr(source, "peek") else io.BufferedReader(source, CHUNK)  # type: ignore[arg-type]
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    return cast(BinaryIO, buffered)


Opener = Callable[[], BinaryIO]
