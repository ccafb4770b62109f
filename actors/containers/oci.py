"""From a container's Config and HostConfig to the pieces of its OCI spec."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from actors.containers.model import Container
from actors.containers.spec import DEFAULT_PATH
from actors.images.tarstream import LayerError, scoped_path
from kernel.errors import InvalidParameter

DEFAULT_SHM_SIZE = 64 * 1024 * 1024
CPU_PERIOD = 100_000


def merge_env(image_env: list[str], user_env: list[str]) -> list[str]:
    """Image variables first, overridden by name with the user's (ReplaceOrAppendEnvValues)."""
    order: list[str] = []
    values: dict[str, str] = {}
    for entry in [*image_env, *user_env]:
        key = entry.split("=", 1)[0]
        if key not in values:
            order.append(key)
        values[key] = entry
    return [values[k] for k in order]


def process_env(container: Container, hostname: str) -> list[str]:
    """The environment dockerd gives a process: PATH (unless set), HOSTNAME, TERM with a TTY."""
    env = list(container.Config.get("Env") or [])
    keys = {e.split("=", 1)[0] for e in env}
    head = [] if "PATH" in keys else [f"PATH={DEFAULT_PATH}"]
    head.append(f"HOSTNAME={hostname}")
    if container.tty and "TERM" not in keys:
        head.append("TERM=xterm")
    return head + env


def _read_lines(rootfs: Path, path: str) -> list[list[str]]:
    """A colon-separated file of the image, resolved in scope (it may be a link to the
    host's own /etc/passwd)."""
    try:
        text = scoped_path(rootfs, path).read_text()
    except (OSError, LayerError):
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(rootfs: Path, user: str, group_add: list[str]) -> tuple[int, int, list[int]]:
    """`-u` as dockerd resolves it against the image's /etc/passwd and /etc/group."""
    name, _, group = (user or "0").partition(":")
    passwd = _read_lines(rootfs, "/etc/passwd")
    groups = _read_lines(rootfs, "/etc/group")
    uid: int | None = None
    gid = 0
    user_name = ""
    for entry in passwd:
        if len(entry) >= 4 and (entry[0] == name or entry[2] == name):
            uid, gid, user_name = int(entry[2]), int(entry[3]), entry[0]
            break
    if uid is None:
        if not name.isdigit():
            raise InvalidParameter(
                f"unable to find user {name}: no matching entries in passwd file"
            )
        uid = int(name)
    if group:
        found = next((g for g in groups if len(g) >= 3 and (g[0] == group or g[2] == group)), None)
        if found is not None:
            gid = int(found[2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise InvalidParameter(
                f"unable to find group {group}: no matching entries in group file"
            )
    extra: list[int] = []
    for g in groups:
        if len(g) >= 4 and user_name and user_name in g[3].split(",") and int(g[2]) != gid:
            extra.append(int(g[2]))
    for wanted in group_add:
        found = next(
            (g for g in groups if len(g) >= 3 and (g[0] == wanted or g[2] == wanted)), None
        )
        if found is not None:
            extra.append(int(found[2]))
        elif wanted.isdigit():
            extra.append(int(wanted))
        else:
            raise InvalidParameter(
                f"unable to find group {wanted}: no matching entries in group file"
            )
    return uid, gid, extra


def resources(host_config: dict[str, Any]) -> dict[str, Any]:
    """linux.resources from HostConfig's limits."""
    out: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    if host_config.get("Memory"):
        memory["limit"] = host_config["Memory"]
        swap = host_config.get("MemorySwap") or 0
        # dockerd: unset swap = twice the memory; -1 = unlimited.
        memory["swap"] = swap if swap else host_config["Memory"] * 2
    if host_config.get("MemoryReservation"):
        memory["reservation"] = host_config["MemoryReservation"]
    if memory:
        out["memory"] = memory
    cpu: dict[str, Any] = {}
    if host_config.get("NanoCpus"):
        cpu["period"] = CPU_PERIOD
        cpu["quota"] = host_config["NanoCpus"] * CPU_PERIOD // 1_000_000_000
    if host_config.get("CpuQuota"):
        cpu["quota"] = host_config["CpuQuota"]
    if host_config.get("CpuPeriod"):
        cpu["period"] = host_config["CpuPeriod"]
    if host_config.get("CpuShares"):
        cpu["shares"] = host_config["CpuShares"]
    if host_config.get("CpusetCpus"):
        cpu["cpus"] = host_config["CpusetCpus"]
    if host_config.get("CpusetMems"):
        cpu["mems"] = host_config["CpusetMems"]
    if cpu:
        out["cpu"] = cpu
    pids = host_config.get("PidsLimit")
    if pids:
        out["pids"] = {"limit": pids}
    if host_config.get("BlkioWeight"):
        out["blockIO"] = {"weight": host_config["BlkioWeight"]}
    return out


def rlimits(host_config: dict[str, Any], defaults: list[dict[str, Any]]) -> list[dict[str, Any]]:
    limits = {u["Name"]: u for u in defaults}
    for ulimit in host_config.get("Ulimits") or []:
        limits[ulimit["Name"]] = ulimit
    return [
        {"type": f"RLIMIT_{name.upper()}", "soft": u["Soft"], "hard": u["Hard"]}
        for name, u in limits.items()
    ]


def host_hostname() -> str:
    return socket.gethostname()
