"""The json-file log driver: entries, partial lines, rotation, tail and time windows."""

from __future__ import annotations

import json
import time
from pathlib import Path

from actors.containers.logfile import (
    LogWriter,
    log_files,
    parse_size,
    read_entries,
    read_from,
)
from kernel.clock import parse_time, rfc3339


def test_lines_and_partials(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path)
    writer.write("stdout", b"hel")
    writer.write("stdout", b"lo\nwor")
    writer.write("stderr", b"oops\n")
    writer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["stream"], e["log"]) for e in lines] == [
        ("stdout", "hello\n"),
        ("stderr", "oops\n"),
        ("stdout", "wor"),
    ]
    assert lines[0]["time"].endswith("Z") and len(lines[0]["time"].split(".")[1]) == 10


def test_rotation_tail_and_follow_offset(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path, max_size=parse_size("1k"), max_file=3)
    for i in range(100):
        writer.write("stdout", f"line {i}\n".encode())
    assert [p.name for p in log_files(path)] == ["c-json.log.2", "c-json.log.1", "c-json.log"]
    entries, offset = read_entries(path)
    numbers = [int(e.log.split()[1]) for e in entries]
    assert numbers == list(range(numbers[0], 100))  # oldest rotated away, order kept
    tail, _ = read_entries(path, tail=3)
    assert [e.log for e in tail] == ["line 97\n", "line 98\n", "line 99\n"]
    writer.write("stdout", b"line 100\n")
    more, _ = read_from(path, offset)
    assert [e.log for e in more] == ["line 100\n"]
    writer.close()


def test_time_window(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path)
    writer.write("stdout", b"early\n")
    time.sleep(0.01)
    middle = time.time_ns()
    time.sleep(0.01)
    writer.write("stdout", b"late\n")
    writer.close()
    assert [e.log for e in read_entries(path, since_ns=middle)[0]] == ["late\n"]
    assert [e.log for e in read_entries(path, until_ns=middle)[0]] == ["early\n"]


def test_timestamp_round_trip() -> None:
    now = time.time_ns()
    assert parse_time(rfc3339(now)) == now
    assert parse_size("10m") == 10 * 1024 * 1024
