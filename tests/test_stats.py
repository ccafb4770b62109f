"""The stats collector actor: figures that match the cgroup, one sampler shared by streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon

CGROUP = Path("/sys/fs/cgroup")


@pytest.fixture
def burner(daemon: Daemon) -> Iterator[str]:
    cid = daemon.docker(
        "run", "-d", "--name", "burner", "--cpus", "0.5", "--network", "none",
        "busybox", "sh", "-c", "head -c 20000000 /dev/zero > /dev/shm/fill; while true; do :; done",
    ).stdout.strip()  # fmt: skip
    try:
        yield cid
    finally:
        daemon.docker("rm", "-f", "burner")


def memory_usage_from_cgroup(daemon: Daemon, cid: str) -> int:
    """What `docker stats` shows: usage minus inactive file pages (v1 and v2)."""
    if (CGROUP / "cgroup.controllers").exists():
        base = CGROUP / daemon.namespace / cid
        usage = int((base / "memory.current").read_text())
        inactive_key = "inactive_file"
    else:
        base = CGROUP / "memory" / daemon.namespace / cid
        usage = int((base / "memory.usage_in_bytes").read_text())
        inactive_key = "total_inactive_file"
    stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
    return usage - int(stat.get(inactive_key, 0))


def to_bytes(text: str) -> float:
    units = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    raise ValueError(text)


def test_cpu_and_memory_figures_match_the_cgroup(daemon: Daemon, burner: str) -> None:
    time.sleep(1.5)  # the 20 MB tmpfs file is written, the loop is burning
    row = daemon.docker(
        "stats", "--no-stream", "--format", "{{.CPUPerc}} {{.MemUsage}}", "burner"
    ).stdout.split()
    cpu, usage = float(row[0].rstrip("%")), to_bytes(row[1])
    assert 35 <= cpu <= 65, row  # --cpus 0.5: half a CPU
    expected = memory_usage_from_cgroup(daemon, burner)
    assert abs(usage - expected) < 0.1 * expected, (usage, expected)
    assert usage > 20_000_000  # the tmpfs file counts as the container's memory
    client = daemon.client()
    try:
        streamed = client.api.stats("burner", stream=False)
    finally:
        client.close()
    assert streamed["pids_stats"]["current"] == 1  # sh runs the loop itself
    assert "networks" not in streamed  # --network none: only lo


def test_one_sampler_is_shared_by_every_stream(daemon: Daemon, burner: str) -> None:
    reads: dict[int, list[str]] = {0: [], 1: []}

    def follow(index: int) -> None:
        client = daemon.client()
        try:
            for sample in client.api.stats("burner", stream=True, decode=True):
                reads[index].append(sample["read"])
                if len(reads[index]) == 3:
                    return
        finally:
            client.close()

    threads = [threading.Thread(target=follow, args=(i,)) for i in reads]
    for thread in threads:
        thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join(timeout=20)
    # Both streams saw the same readings (one sampler), not two interleaved samplers.
    assert len(set(reads[0]) & set(reads[1])) >= 2, reads
