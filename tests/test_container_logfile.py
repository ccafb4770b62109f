"""The file log drivers: entries, partial lines, rotation, compression, tail, time windows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from actors.containers.logfile import (
    LogWriter,
    check_log_config,
    codec_for,
    log_files,
    open_writer,
    parse_size,
    read_entries,
    read_from,
)
from kernel.clock import parse_time, rfc3339
from kernel.errors import InvalidParameter


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


def test_local_driver_compresses_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "container.log"
    writer = open_writer("local", path, {"max-size": "1k", "max-file": "3"})
    assert writer is not None and writer.compress
    for i in range(100):
        writer.write("stdout" if i % 2 else "stderr", f"line {i}\n".encode())
    writer.close()
    if writer._compressing is not None:
        writer._compressing.join()
    assert [p.name for p in log_files(path)] == [
        "container.log.2.gz",
        "container.log.1.gz",
        "container.log",
    ]
    codec = codec_for("local")
    entries, offset = read_entries(path, codec=codec)
    numbers = [int(e.log.split()[1]) for e in entries]
    assert numbers == list(range(numbers[0], 100)) and numbers[0] > 0
    assert {e.stream for e in entries} == {"stdout", "stderr"}
    # A record torn by a crash is not read, and following resumes before it.
    with open(path, "ab") as handle:
        handle.write(b"\x00\x00\x00\x40partial")
    more, end = read_from(path, offset, codec=codec)
    assert more == [] and end == offset


def test_log_config_checks() -> None:
    check_log_config("json-file", {"max-size": "10m", "max-file": "3"})
    check_log_config("none", {})
    with pytest.raises(InvalidParameter, match="no log driver named 'syslogx'"):
        check_log_config("syslogx", {})
    with pytest.raises(InvalidParameter, match="unknown log opt 'tag' for local log driver"):
        check_log_config("local", {"tag": "x"})
    with pytest.raises(InvalidParameter, match="max-file cannot be less than 1"):
        check_log_config("json-file", {"max-file": "0"})
    assert open_writer("none", Path("/nonexistent"), {}) is None
