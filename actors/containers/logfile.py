"""File log drivers, rotated by size and read back with tail/since/until filters.

`json-file` writes one JSON object per line (moby daemon/logger/jsonfilelog); `local` writes
length-prefixed msgpack records, 20 MB x 5 files by default, rotated files gzip-compressed
(dockerd's `local` is protobuf records: the format is internal to each daemon).
"""

from __future__ import annotations

import gzip
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from kernel.clock import parse_time, rfc3339
from kernel.errors import InvalidParameter

MAX_PARTIAL = 16 * 1024  # dockerd splits lines longer than its 16 KiB buffer


class LogEntry(msgspec.Struct, frozen=True):
    log: str
    stream: str
    time: str


class JsonLines:
    """json-file: one object per line; a torn last line (crash) is skipped."""

    _encoder = msgspec.json.Encoder()
    _decoder = msgspec.json.Decoder(LogEntry)

    def encode(self, entry: LogEntry) -> bytes:
        return self._encoder.encode(entry) + b"\n"

    def decode(self, data: bytes) -> tuple[list[LogEntry], int]:
        """The complete entries in `data` and how many bytes they span."""
        end = data.rfind(b"\n") + 1
        entries = []
        for line in data[:end].splitlines():
            if line:
                try:
                    entries.append(self._decoder.decode(line))
                except msgspec.DecodeError:
                    continue
        return entries, end


class LengthPrefixed:
    """local: a 4-byte big-endian length, then a msgpack record."""

    _encoder = msgspec.msgpack.Encoder()
    _decoder = msgspec.msgpack.Decoder(LogEntry)

    def encode(self, entry: LogEntry) -> bytes:
        record = self._encoder.encode(entry)
        return struct.pack(">I", len(record)) + record

    def decode(self, data: bytes) -> tuple[list[LogEntry], int]:
        entries, pos = [], 0
        while pos + 4 <= len(data):
            (size,) = struct.unpack_from(">I", data, pos)
            if pos + 4 + size > len(data):
                break  # a record still being written
            try:
                entries.append(self._decoder.decode(data[pos + 4 : pos + 4 + size]))
            except msgspec.DecodeError:
                pass
            pos += 4 + size
        return entries, pos


Codec = JsonLines | LengthPrefixed
JSON_LINES = JsonLines()


@dataclass(frozen=True)
class Driver:
    codec: Codec
    options: frozenset[str]
    defaults: Mapping[str, str]


DRIVERS: dict[str, Driver | None] = {
    "json-file": Driver(
        JSON_LINES,
        frozenset({"max-size", "max-file", "compress", "labels", "env", "env-regex", "tag"}),
        {},
    ),
    "local": Driver(
        LengthPrefixed(),
        frozenset({"max-size", "max-file", "compress"}),
        {"max-size": "20m", "max-file": "5", "compress": "true"},
    ),
    "none": None,  # nothing is written; `docker logs` refuses to read
}


def check_log_config(kind: str, options: Mapping[str, str]) -> None:
    """dockerd's messages for an unknown driver or option, and bad sizes and counts."""
    if kind not in DRIVERS:
        raise InvalidParameter(f"logger: no log driver named '{kind}' is registered")
    driver = DRIVERS[kind]
    if driver is None:
        return
    for key in options:
        if key not in driver.options:
            raise InvalidParameter(f"unknown log opt '{key}' for {kind} log driver")
    try:
        if options.get("max-size"):
            parse_size(options["max-size"])
        max_file = int(options.get("max-file", "1"))
    except ValueError as exc:
        raise InvalidParameter(str(exc)) from None
    if max_file < 1:
        raise InvalidParameter("max-file cannot be less than 1")
    if options.get("compress", "false") not in ("true", "false"):
        raise InvalidParameter(f"error reading compress log option: {options['compress']!r}")


def open_writer(kind: str, path: Path, options: Mapping[str, str]) -> LogWriter | None:
    driver = DRIVERS.get(kind)
    if driver is None:
        return None
    merged = {**driver.defaults, **options}
    return LogWriter(
        path,
        codec=driver.codec,
        max_size=parse_size(merged["max-size"]) if merged.get("max-size") else 0,
        max_file=int(merged.get("max-file", "1")),
        compress=merged.get("compress") == "true",
    )


def log_path(directory: Path, kind: str) -> str:
    """dockerd's places: `<id>-json.log`; `local-logs/container.log`; none for `none`."""
    if kind == "local":
        return str(directory / "local-logs" / "container.log")
    if kind == "none":
        return ""
    return str(directory / f"{directory.name}-json.log")


def codec_for(kind: str) -> Codec:
    driver = DRIVERS.get(kind)
    return driver.codec if driver is not None else JSON_LINES


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
    codec: Codec = JSON_LINES
    max_size: int = 0  # 0: never rotate
    max_file: int = 1
    compress: bool = False  # gzip rotated files, in a thread: the copy loop never waits on it
    _compressing: threading.Thread | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.path.parent.mkdir(exist_ok=True)  # (`local` keeps its files in a directory)
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
        return self.codec.encode(entry)

    def _append(self, data: bytes) -> None:
        if self.max_size and self._size + len(data) > self.max_size and self._size > 0:
            self._rotate()
        self._file.write(data)
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        if self._compressing is not None:
            self._compressing.join()  # the previous file must be in place before shifting
        if self.max_file <= 1:
            self.path.unlink(missing_ok=True)
        else:
            for n in range(self.max_file - 1, 0, -1):
                for suffix in ("", ".gz"):
                    newer = self.path if n == 1 else _rotated(self.path, n - 1, suffix)
                    if newer.exists() and (n > 1 or not suffix):
                        os.replace(newer, _rotated(self.path, n, suffix))
            if self.compress:
                self._compressing = threading.Thread(
                    target=_gzip, args=(_rotated(self.path, 1, ""),), daemon=True
                )
                self._compressing.start()
        self._file = open(self.path, "ab", buffering=0)
        self._size = 0

    def close(self) -> None:
        self.flush_partial()
        self._file.close()


def _rotated(path: Path, n: int, suffix: str) -> Path:
    return path.with_name(f"{path.name}.{n}{suffix}")


def _gzip(path: Path) -> None:
    target = path.with_name(path.name + ".gz")
    partial = path.with_name(path.name + ".gz.tmp")
    with open(path, "rb") as src, gzip.open(partial, "wb", compresslevel=1) as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    os.replace(partial, target)
    path.unlink()


def log_files(path: Path) -> list[Path]:
    """Rotated files oldest first, then the current one (a file being compressed counts
    once, uncompressed)."""
    by_number: dict[int, Path] = {}
    for candidate in path.parent.glob(f"{path.name}.*"):
        number, _, suffix = candidate.name[len(path.name) + 1 :].partition(".")
        if number.isdigit() and suffix in ("", "gz"):
            if suffix == "" or int(number) not in by_number:
                by_number[int(number)] = candidate
    rotated = [by_number[n] for n in sorted(by_number, reverse=True)]
    return [*rotated, path] if path.exists() else rotated


def _read(file: Path) -> bytes:
    if file.suffix == ".gz":
        with gzip.open(file, "rb") as handle:
            return handle.read()
    with open(file, "rb") as handle:
        return handle.read()


def read_entries(
    path: Path, *, codec: Codec = JSON_LINES, since_ns: int = 0, until_ns: int = 0, tail: int = -1
) -> tuple[list[LogEntry], int]:
    """Entries in the time window (the last `tail` of them if tail >= 0) and the offset
    in the current file where following should continue."""
    kept: deque[LogEntry] | list[LogEntry] = deque(maxlen=tail) if tail >= 0 else []
    offset = 0
    for file in log_files(path):
        try:
            data = _read(file)
        except (OSError, EOFError):
            continue  # rotated away or compressed meanwhile
        entries, end = codec.decode(data)
        if file == path:
            offset = end
        for entry in entries:
            if _in_window(entry, since_ns, until_ns):
                kept.append(entry)
    return list(kept), offset


def _in_window(entry: LogEntry, since_ns: int, until_ns: int) -> bool:
    if not since_ns and not until_ns:
        return True
    ns = parse_time(entry.time) or 0
    return (not since_ns or ns >= since_ns) and (not until_ns or ns <= until_ns)


def read_from(path: Path, offset: int, *, codec: Codec = JSON_LINES) -> tuple[list[LogEntry], int]:
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
    entries, end = codec.decode(data)
    return entries, offset + end
