"""Facts about this host that `/info` and `/version` report, read once."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import msgspec

_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


class HostFacts(msgspec.Struct, frozen=True, kw_only=True):
    kernel_version: str
    operating_system: str
    os_version: str
    architecture: str  # uname's name, as `docker info` prints it
    goarch: str  # Go's name, as `/version` reports it
    ncpu: int
    mem_total: int
    cgroup_version: str
    memory_limit: bool
    swap_limit: bool
    cpu_cfs_period: bool
    cpu_cfs_quota: bool
    cpu_shares: bool
    cpuset: bool
    pids_limit: bool
    oom_kill_disable: bool
    ipv4_forwarding: bool
    bridge_nf_iptables: bool
    bridge_nf_ip6tables: bool


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _os_release() -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in _read("/etc/os-release").splitlines():
        key, _, value = line.partition("=")
        fields[key] = value.strip('"')
    return fields


def _mem_total() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


@functools.cache
def host_facts() -> HostFacts:
    release = _os_release()
    machine = platform.machine()
    v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    if v2:
        controllers = set(_read("/sys/fs/cgroup/cgroup.controllers").split())
        memory = "memory" in controllers
        swap = memory  # swap accounting is always on with cgroup v2 memory
        cfs = "cpu" in controllers
        shares = cfs
        cpuset = "cpuset" in controllers
        pids = "pids" in controllers
        oom_disable = False
    else:
        memory = os.path.exists("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        swap = os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
        cfs = os.path.exists("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        shares = os.path.exists("/sys/fs/cgroup/cpu/cpu.shares")
        cpuset = os.path.exists("/sys/fs/cgroup/cpuset/cpuset.cpus")
        pids = os.path.exists("/sys/fs/cgroup/pids")
        oom_disable = os.path.exists("/sys/fs/cgroup/memory/memory.oom_control")
    return HostFacts(
        kernel_version=platform.release(),
        operating_system=release.get("PRETTY_NAME", "Linux"),
        os_version=release.get("VERSION_ID", ""),
        architecture=machine,
        goarch=_GOARCH.get(machine, machine),
        ncpu=os.cpu_count() or 1,
        mem_total=_mem_total(),
        cgroup_version="2" if v2 else "1",
        memory_limit=memory,
        swap_limit=swap,
        cpu_cfs_period=cfs,
        cpu_cfs_quota=cfs,
        cpu_shares=shares,
        cpuset=cpuset,
        pids_limit=pids,
        oom_kill_disable=oom_disable,
        ipv4_forwarding=_read("/proc/sys/net/ipv4/ip_forward") == "1",
        bridge_nf_iptables=_read("/proc/sys/net/bridge/bridge-nf-call-iptables") == "1",
        bridge_nf_ip6tables=_read("/proc/sys/net/bridge/bridge-nf-call-ip6tables") == "1",
    )
