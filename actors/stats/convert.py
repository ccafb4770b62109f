"""containerd's task metrics (cgroup v1 or v2) and a network namespace's counters, in the
Docker stats JSON shape (moby daemon/stats_unix.go and daemon_unix.go statsV1/statsV2)."""

from __future__ import annotations

import os
import time
from typing import Any

from google.protobuf.message import Message

from actors.containerd.model import RawAny
from actors.containerd.proto import cgroups_v1_pb2, cgroups_v2_pb2
from kernel.clock import rfc3339

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
V1_METRICS = "io.containerd.cgroups.v1.Metrics"
V2_METRICS = "io.containerd.cgroups.v2.Metrics"
ZERO_TIME = "0001-01-01T00:00:00Z"
_BLKIO_KEYS = (
    "io_service_bytes_recursive", "io_serviced_recursive", "io_queue_recursive",
    "io_service_time_recursive", "io_wait_time_recursive", "io_merged_recursive",
    "io_time_recursive", "sectors_recursive",
)  # fmt: skip


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def system_cpu_usage() -> int:
    """Host CPU time in nanoseconds from /proc/stat, as dockerd computes it."""
    fields = _read("/proc/stat").splitlines()[0].split()[1:8]
    return sum(int(f) for f in fields) * 1_000_000_000 // _CLOCK_TICKS


def host_memory() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def network_counters(pid: int) -> dict[str, dict[str, int]]:
    """Per-interface counters of the network namespace `pid` lives in (its /proc/net/dev),
    loopback left out as dockerd does; empty when it has nothing else (`--network none`)."""
    names = (
        "rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
        "tx_bytes", "tx_packets", "tx_errors", "tx_dropped",
    )  # fmt: skip
    networks: dict[str, dict[str, int]] = {}
    for line in _read(f"/proc/{pid}/net/dev").splitlines()[2:]:
        interface, _, numbers = line.partition(":")
        values = numbers.split()
        if interface.strip() == "lo" or len(values) < 16:
            continue
        rx, tx = values[0:4], values[8:12]
        networks[interface.strip()] = dict(zip(names, map(int, rx + tx), strict=True))
    return networks


def _scalars(message: Message) -> dict[str, int]:
    """Every number of a stats message by its field name (the keys `docker stats` reads)."""
    return {
        f.name: getattr(message, f.name)
        for f in message.DESCRIPTOR.fields
        if f.type != f.TYPE_MESSAGE  # (the memory messages repeat nothing)
    }


def _capped(limit: int, machine: int) -> int:
    """No limit set shows as the machine's memory (dockerd)."""
    return machine if machine and (not limit or limit > machine) else limit


def from_metrics(raw: RawAny) -> dict[str, Any]:
    """cpu_stats, memory_stats, blkio_stats and pids_stats of one Metrics reply."""
    machine = host_memory()
    if raw.type_url.endswith(V2_METRICS):
        v2 = cgroups_v2_pb2.Metrics.FromString(raw.value)
        io = [
            {"major": e.major, "minor": e.minor, "op": op, "value": value}
            for e in v2.io.usage
            for op, value in (("read", e.rbytes), ("write", e.wbytes))
        ]
        return {
            "cpu_stats": {
                "cpu_usage": {
                    "total_usage": v2.cpu.usage_usec * 1000,
                    "usage_in_kernelmode": v2.cpu.system_usec * 1000,
                    "usage_in_usermode": v2.cpu.user_usec * 1000,
                },
                "throttling_data": {
                    "periods": v2.cpu.nr_periods,
                    "throttled_periods": v2.cpu.nr_throttled,
                    "throttled_time": v2.cpu.throttled_usec * 1000,
                },
            },
            "memory_stats": {
                "usage": v2.memory.usage,
                "limit": _capped(v2.memory.usage_limit, machine),
                "stats": _scalars(v2.memory),
            },
            "blkio_stats": {key: io if key == _BLKIO_KEYS[0] else None for key in _BLKIO_KEYS},
            "pids_stats": {"current": v2.pids.current, "limit": v2.pids.limit},
        }
    if not raw.type_url.endswith(V1_METRICS):
        raise ValueError(f"unknown metrics type {raw.type_url!r}")
    v1 = cgroups_v1_pb2.Metrics.FromString(raw.value)
    blkio = v1.blkio
    return {
        "cpu_stats": {
            "cpu_usage": {
                "total_usage": v1.cpu.usage.total,
                "percpu_usage": list(v1.cpu.usage.per_cpu),
                "usage_in_kernelmode": v1.cpu.usage.kernel,
                "usage_in_usermode": v1.cpu.usage.user,
            },
            "throttling_data": {
                "periods": v1.cpu.throttling.periods,
                "throttled_periods": v1.cpu.throttling.throttled_periods,
                "throttled_time": v1.cpu.throttling.throttled_time,
            },
        },
        "memory_stats": {
            "usage": v1.memory.usage.usage,
            "max_usage": v1.memory.usage.max,
            "failcnt": v1.memory.usage.failcnt,
            "limit": _capped(v1.memory.usage.limit, machine),
            "stats": _scalars(v1.memory),
        },
        "blkio_stats": {
            key: [
                {"major": e.major, "minor": e.minor, "op": e.op, "value": e.value}
                for e in getattr(blkio, key.replace("io_queue_", "io_queued_"))
            ]
            or None
            for key in _BLKIO_KEYS
        },
        "pids_stats": {"current": v1.pids.current, "limit": v1.pids.limit},
    }


def sample(raw: RawAny, pid: int) -> dict[str, Any]:
    """One full reading of a running container (without name, id and the pre* fields)."""
    reading = from_metrics(raw)
    reading["read"] = rfc3339(time.time_ns())
    reading["cpu_stats"]["system_cpu_usage"] = system_cpu_usage()
    reading["cpu_stats"]["online_cpus"] = os.cpu_count() or 1
    reading["num_procs"] = 0
    reading["storage_stats"] = {}
    if networks := network_counters(pid):
        reading["networks"] = networks
    return reading


def empty_sample() -> dict[str, Any]:
    """What dockerd sends for a container that is not running (all zeros)."""
    return {
        "read": ZERO_TIME,
        "cpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
        "memory_stats": {},
        "pids_stats": {},
        "blkio_stats": {},
        "num_procs": 0,
        "storage_stats": {},
    }
