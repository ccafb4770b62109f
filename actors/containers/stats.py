"""Container resource usage for `docker stats`, read from the container's cgroup.

Samples come straight from cgroupfs (v1 controllers or the v2 unified tree) at the
container's cgroupsPath, in the Docker stats JSON shape (moby daemon/stats_unix.go).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from kernel.clock import rfc3339

CGROUP_ROOT = Path("/sys/fs/cgroup")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_V2 = (CGROUP_ROOT / "cgroup.controllers").exists()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _number(path: Path) -> int:
    text = _read(path).strip()
    return int(text) if text.isdigit() else 0


def _flat(path: Path) -> dict[str, int]:
    pairs = (line.split() for line in _read(path).splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


def system_cpu_usage() -> int:
    """Host CPU time in nanoseconds from /proc/stat, as dockerd computes it."""
    fields = _read(Path("/proc/stat")).splitlines()[0].split()[1:8]
    return sum(int(f) for f in fields) * 1_000_000_000 // _CLOCK_TICKS


def sample(cgroups_path: str) -> dict[str, Any]:
    """One reading: cpu_stats, memory_stats, pids_stats (blkio left empty)."""
    relative = cgroups_path.lstrip("/")
    online = os.cpu_count() or 1
    cpu_usage: dict[str, Any]
    if _V2:
        base = CGROUP_ROOT / relative
        cpu = _flat(base / "cpu.stat")
        memory_stats = _flat(base / "memory.stat")
        limit_text = _read(base / "memory.max").strip()
        cpu_usage = {
            "total_usage": cpu.get("usage_usec", 0) * 1000,
            "usage_in_kernelmode": cpu.get("system_usec", 0) * 1000,
            "usage_in_usermode": cpu.get("user_usec", 0) * 1000,
        }
        memory = {
            "usage": _number(base / "memory.current"),
            "limit": int(limit_text) if limit_text.isdigit() else _host_memory(),
            "stats": memory_stats,
        }
        pids = {"current": _number(base / "pids.current")}
    else:
        cpuacct = CGROUP_ROOT / "cpuacct" / relative
        mem = CGROUP_ROOT / "memory" / relative
        percpu = [int(v) for v in _read(cpuacct / "cpuacct.usage_percpu").split()]
        ticks = _flat(cpuacct / "cpuacct.stat")
        cpu_usage = {
            "total_usage": _number(cpuacct / "cpuacct.usage"),
            "percpu_usage": percpu,
            "usage_in_kernelmode": ticks.get("system", 0) * 1_000_000_000 // _CLOCK_TICKS,
            "usage_in_usermode": ticks.get("user", 0) * 1_000_000_000 // _CLOCK_TICKS,
        }
        limit = _number(mem / "memory.limit_in_bytes")
        memory = {
            "usage": _number(mem / "memory.usage_in_bytes"),
            "max_usage": _number(mem / "memory.max_usage_in_bytes"),
            "limit": min(limit, _host_memory()) if limit else _host_memory(),
            "stats": _flat(mem / "memory.stat"),
        }
        pids = {"current": _number(CGROUP_ROOT / "pids" / relative / "pids.current")}
    max_pids = _read(
        (CGROUP_ROOT / relative if _V2 else CGROUP_ROOT / "pids" / relative) / "pids.max"
    ).strip()
    if max_pids.isdigit():
        pids["limit"] = int(max_pids)
    return {
        "read": rfc3339(time.time_ns()),
        "cpu_stats": {
            "cpu_usage": cpu_usage,
            "system_cpu_usage": system_cpu_usage(),
            "online_cpus": online,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        },
        "memory_stats": memory,
        "pids_stats": pids,
        "blkio_stats": {
            "io_service_bytes_recursive": None,
            "io_serviced_recursive": None,
            "io_queue_recursive": None,
            "io_service_time_recursive": None,
            "io_wait_time_recursive": None,
            "io_merged_recursive": None,
            "io_time_recursive": None,
            "sectors_recursive": None,
        },
        "num_procs": 0,
        "storage_stats": {},
    }


_LAST: dict[str, tuple[float, dict[str, Any]]] = {}
RECENT = 5.0  # seconds a sample may serve as the previous one for `stream=0`


def remember(container_id: str, reading: dict[str, Any]) -> None:
    _LAST[container_id] = (time.monotonic(), reading)


def recent(container_id: str) -> dict[str, Any] | None:
    """The last sample taken for the container, if it is fresh enough to be `precpu`."""
    taken = _LAST.get(container_id)
    if taken is None or time.monotonic() - taken[0] > RECENT:
        _LAST.pop(container_id, None)
        return None
    return taken[1]


def _host_memory() -> int:
    for line in _read(Path("/proc/meminfo")).splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def empty_sample() -> dict[str, Any]:
    """What dockerd sends for a container that is not running (all zeros)."""
    return {
        "read": "0001-01-01T00:00:00Z",
        "cpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
        "memory_stats": {},
        "pids_stats": {},
        "blkio_stats": {},
        "num_procs": 0,
        "storage_stats": {},
    }
