"""The json-file log driver: one JSON object per line, rotated by size, read back with
tail/since/until filters (moby daemon/logger/jsonfilelog)."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from kernel.clock import parse_time, rfc3339

MAX_PARTIAL = 16 * 1024  # dockerd splits lines longer than its 16 KiB buffer


class LogEntry(msgspec.Struct, frozen=True):
    log: str
    stream: str
    time: str


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LogEntry)

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
}


def parse_size(text: str) -> int:
    """Go units.RAMInBytes: "10m" = 10 MiB."""
    raw = text.strip().lower()
    digits = raw.rstrip("bkmg")
    unit = raw[len(digits) :]
    if not digits or unit not in _UNITS:
        raise ValueError(f"invalid size: '{text}'")
    return int(float(digits) * _UNITS[unit])


@dataclass
class LogWriter:
    path: Path
    max_size: int = 0  # 0: never rotate
    max_file: int = 1

    def __post_init__(self) -> None:
        self._file = open(self.path, "ab", buffering=0)
        self._size = self._file.tell()
        self._partial = {"stdout": b"", "stderr": b""}

    def write(self, stream: str, data: bytes) -> None:
        """Append `data`, one entry per complete line; keep a partial line for later."""
        buffer = self._partial[stream] + data
        lines = buffer.split(b"\n")
        self._partial[stream] = lines.pop()
        out = [self._entry(stream, line + b"\n") for line in lines]
        while len(self._partial[stream]) >= MAX_PARTIAL:
            out.append(self._entry(stream, self._partial[stream][:MAX_PARTIAL]))
            self._partial[stream] = self._partial[stream][MAX_PARTIAL:]
        if out:
            self._append(b"".join(out))

    def flush_partial(self) -> None:
        """At process exit a last line without a newline is still logged."""
        pending = [self._entry(s, p) for s, p in self._partial.items() if p]
        self._partial = {"stdout": b"", "stderr": b""}
        if pending:
            self._append(b"".join(pending))

    def _entry(self, stream: str, payload: bytes) -> bytes:
        entry = LogEntry(payload.decode("utf-8", "replace"), stream, rfc3339(time.time_ns()))
        return _encoder.encode(entry) + b"\n"

    def _append(self, data: bytes) -> None:
        if self.max_size and self._size + len(data) > self.max_size and self._size > 0:
            self._rotate()
        self._file.write(data)
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        if self.max_file <= 1:
            self.path.unlink(missing_ok=True)
        else:
            for n in range(self.max_file - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                newer = self.path if n == 1 else self.path.with_name(f"{self.path.name}.{n - 1}")
                if newer.exists():
                    os.replace(newer, older)
        self._file = open(self.path, "ab", buffering=0)
        self._size = 0

    def close(self) -> None:
        self.flush_partial()
        self._file.close()


def log_files(path: Path) -> list[Path]:
    """Rotated files oldest first, then the current one."""
    rotated = sorted(
        (p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    return [*rotated, path] if path.exists() else rotated


def read_entries(
    path: Path, *, since_ns: int = 0, until_ns: int = 0, tail: int = -1
) -> tuple[list[LogEntry], int]:
    """Entries in the time window (the last `tail` of them if tail >= 0) and the offset
    in the current file where following should continue."""
    kept: deque[LogEntry] | list[LogEntry] = deque(maxlen=tail) if tail >= 0 else []
    offset = 0
    for file in log_files(path):
        with open(file, "rb") as handle:
            data = handle.read()
        if file == path:
            offset = len(data)
        for entry in _parse(data):
            if _in_window(entry, since_ns, until_ns):
                kept.append(entry)
    return list(kept), offset


def _parse(data: bytes) -> Iterator[LogEntry]:
    for line in data.splitlines():
        if line:
            try:
                yield _decoder.decode(line)
            except msgspec.DecodeError:
                continue  # a torn last line after a crash


def _in_window(entry: LogEntry, since_ns: int, until_ns: int) -> bool:
    if not since_ns and not until_ns:
        return True
    ns = parse_time(entry.time) or 0
    return (not since_ns or ns >= since_ns) and (not until_ns or ns <= until_ns)


def read_from(path: Path, offset: int) -> tuple[list[LogEntry], int]:
    """Complete entries appended to the current file since `offset`, and the new offset.
    A rotation since then shows as a file shorter than `offset`: start over at 0."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < offset:
                offset = 0
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    return list(_parse(data[:end])), offset + end
