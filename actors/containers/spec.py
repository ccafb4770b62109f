"""The OCI runtime spec for a container, with dockerd's defaults (moby oci/defaults.go)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip

MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip

READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Every capability, in kernel number order (CAP_CHOWN is 0).
CAPABILITIES_BY_NUMBER = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip


@cache
def all_capabilities() -> tuple[str, ...]:
    """What `ALL` and --privileged grant: every capability the daemon itself holds.

    runc cannot grant a capability outside its own bounding set (a daemon that runs in a
    container often lacks some), so asking for it would fail every privileged start.
    """
    try:
        status = Path("/proc/self/status").read_text()
        bounding = int(next(ln for ln in status.splitlines() if ln.startswith("CapBnd:"))[7:], 16)
    except (OSError, StopIteration, ValueError):
        return CAPABILITIES_BY_NUMBER
    return tuple(c for i, c in enumerate(CAPABILITIES_BY_NUMBER) if bounding >> i & 1)


def _mount(dest: str, kind: str, source: str, options: Sequence[str]) -> dict[str, Any]:
    return {"destination": dest, "type": kind, "source": source, "options": list(options)}


def default_mounts(
    *, shm_size: int = 64 * 1024 * 1024, read_only_sys: bool = True
) -> list[dict[str, Any]]:
    return [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount(
            "/dev/pts",
            "devpts",
            "devpts",
            ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        _mount(
            "/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro" if read_only_sys else "rw"]
        ),
        _mount("/sys/fs/cgroup", "cgroup", "cgroup", ["ro", "nosuid", "noexec", "nodev"]),
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            ["nosuid", "noexec", "nodev", "mode=1777", f"size={shm_size // 1024}k"],
        ),
    ]


def capabilities(cap_add: Sequence[str], cap_drop: Sequence[str], privileged: bool) -> list[str]:
    """dockerd's TweakCapabilities: ALL and names with or without the CAP_ prefix."""

    def norm(name: str) -> str:
        upper = name.upper()
        return upper if upper.startswith("CAP_") or upper == "ALL" else f"CAP_{upper}"

    if privileged:
        return list(all_capabilities())
    adds = [norm(c) for c in cap_add]
    drops = [norm(c) for c in cap_drop]
    base = list(all_capabilities()) if "ALL" in adds else list(DEFAULT_CAPABILITIES)
    if "ALL" in drops:
        base = []
    result = [c for c in base if c not in drops]
    for cap in adds:
        if cap != "ALL" and cap not in result:
            result.append(cap)
    return result


def build_spec(
    *,
    args: Sequence[str],
    env: Sequence[str],
    cwd: str,
    uid: int,
    gid: int,
    additional_gids: Sequence[int],
    hostname: str,
    terminal: bool,
    read_only: bool,
    privileged: bool,
    cap_add: Sequence[str],
    cap_drop: Sequence[str],
    extra_mounts: Sequence[Mapping[str, Any]],
    namespaces: Sequence[Mapping[str, str]],
    resources: Mapping[str, Any],
    rlimits: Sequence[Mapping[str, Any]],
    cgroups_path: str,
    shm_size: int = 64 * 1024 * 1024,
    sysctl: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    caps = capabilities(cap_add, cap_drop, privileged)
    mounts = default_mounts(shm_size=shm_size, read_only_sys=not privileged)
    # A user mount replaces a default one at the same destination, as in dockerd.
    taken = {m["destination"] for m in extra_mounts}
    mounts = [m for m in mounts if m["destination"] not in taken] + [dict(m) for m in extra_mounts]
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": terminal,
            "user": {"uid": uid, "gid": gid, "additionalGids": list(additional_gids)},
            "args": list(args),
            "env": list(env),
            "cwd": cwd or "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "inheritable": [],
            },
            "rlimits": [dict(r) for r in rlimits],
            "noNewPrivileges": False,
            "oomScoreAdj": 0,
        },
        "root": {"path": "rootfs", "readonly": read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "resources": {
                "devices": [{"allow": privileged, "access": "rwm"}],
                **resources,
            },
            "cgroupsPath": cgroups_path,
            "namespaces": [dict(n) for n in namespaces],
            "sysctl": dict(sysctl or {}),
        },
    }
    linux = spec["linux"]
    if not privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
        # The devices every container may use (moby oci.DefaultLinuxSpec).
        linux["resources"]["devices"] += [
            {"allow": True, "type": "c", "access": "m"},
            {"allow": True, "type": "b", "access": "m"},
            {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
            {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
            {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
            {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
            {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
            {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
            {"allow": True, "type": "c", "major": 136, "access": "rwm"},
            {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
        ]
    return spec
