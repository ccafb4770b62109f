"""Seccomp: dockerd's profile schema (config/seccomp.json, `--security-opt seccomp=...`) to OCI.

A profile lists rules that apply only with certain capabilities, architectures or kernels
(`includes`/`excludes`); the OCI spec wants the rules already chosen for this container.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from kernel.errors import InvalidParameter

# The profile's arch names are Go's GOARCH values.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "s390x": "s390x", "riscv64": "riscv64"}
_NATIVE_SCMP = {
    "amd64": "SCMP_ARCH_X86_64",
    "arm64": "SCMP_ARCH_AARCH64",
    "s390x": "SCMP_ARCH_S390X",
    "riscv64": "SCMP_ARCH_RISCV64",
}


@cache
def default_profile() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((resources.files("config") / "seccomp.json").read_text())
    return loaded


def parse_profile(text: str) -> dict[str, Any]:
    """A user's profile (the CLI sends the file's content): dockerd's messages on bad input."""
    try:
        profile = json.loads(text)
    except ValueError as exc:
        raise InvalidParameter(f"Decoding seccomp profile failed: {exc}") from None
    if not isinstance(profile, dict):
        raise InvalidParameter("Decoding seccomp profile failed: not a JSON object")
    if profile.get("architectures") and profile.get("archMap"):
        raise InvalidParameter(
            "'architectures' and 'archMap' were specified in the seccomp profile"
        )
    return profile


def _kernel() -> tuple[int, int]:
    release = os.uname().release
    parts = (release.split("-")[0].split(".") + ["0", "0"])[:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return (0, 0)


def _kernel_at_least(version: str) -> bool:
    major, _, minor = version.partition(".")
    return _kernel() >= (int(major), int(minor or 0))


def _applies(rule: dict[str, Any], caps: set[str], arch: str) -> bool:
    includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
    if includes.get("caps") and not set(includes["caps"]) <= caps:
        return False
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if includes.get("minKernel") and not _kernel_at_least(includes["minKernel"]):
        return False
    if excludes.get("caps") and set(excludes["caps"]) & caps:
        return False
    return not (excludes.get("arches") and arch in excludes["arches"])


def _architectures(profile: dict[str, Any], arch: str) -> list[str]:
    if profile.get("architectures"):
        return list(profile["architectures"])
    native = _NATIVE_SCMP.get(arch)
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == native:
            return [native, *(entry.get("subArchitectures") or [])]
    return []


def to_oci(profile: dict[str, Any], capabilities: Sequence[str]) -> dict[str, Any]:
    """The OCI `linux.seccomp` for a container holding `capabilities`."""
    arch = _GOARCH.get(platform.machine(), platform.machine())
    caps = set(capabilities)
    syscalls = []
    for rule in profile.get("syscalls") or []:
        if not _applies(rule, caps, arch):
            continue
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        call: dict[str, Any] = {"names": list(names), "action": rule["action"]}
        if rule.get("args"):
            call["args"] = [
                {
                    "index": a["index"],
                    "value": a.get("value", 0),
                    "valueTwo": a.get("valueTwo", 0),
                    "op": a["op"],
                }
                for a in rule["args"]
            ]
        if rule.get("errnoRet") is not None:
            call["errnoRet"] = rule["errnoRet"]
        syscalls.append(call)
    oci: dict[str, Any] = {
        "defaultAction": profile.get("defaultAction", "SCMP_ACT_ERRNO"),
        "architectures": _architectures(profile, arch),
        "syscalls": syscalls,
    }
    if profile.get("defaultErrnoRet") is not None:
        oci["defaultErrnoRet"] = profile["defaultErrnoRet"]
    return oci


def _split(opt: str) -> tuple[str, str] | None:
    """`key=value` (or the older `key:value`); None when it has neither."""
    for separator in "=:":
        key, sep, value = opt.partition(separator)
        if sep:
            return key, value
    return None


def validate_security_opts(security_opts: Sequence[str]) -> None:
    """dockerd's parseSecurityOpt texts; a seccomp profile must at least decode."""
    for opt in security_opts:
        if opt == "no-new-privileges":
            continue
        pair = _split(opt)
        if pair is None:
            raise InvalidParameter(f"invalid --security-opt 1: {opt!r}")
        key, value = pair
        if key not in ("label", "apparmor", "seccomp", "no-new-privileges"):
            raise InvalidParameter(f"invalid --security-opt 2: {opt!r}")
        if key == "seccomp" and value != "unconfined":
            parse_profile(value)


def no_new_privileges(security_opts: Sequence[str]) -> bool:
    return any(
        opt == "no-new-privileges" or _split(opt) == ("no-new-privileges", "true")
        for opt in security_opts
    )


def for_container(
    security_opts: Sequence[str], capabilities: Sequence[str], privileged: bool
) -> dict[str, Any] | None:
    """None means unconfined: `--privileged` or `seccomp=unconfined`, as dockerd."""
    chosen: dict[str, Any] | None = default_profile()
    for opt in security_opts:
        pair = _split(opt)
        if pair is not None and pair[0] == "seccomp":
            chosen = None if pair[1] == "unconfined" else parse_profile(pair[1])
    if privileged or chosen is None:
        return None
    return to_oci(chosen, capabilities)
