"""Dockerfile instructions applied to an image config: `docker import --change` and
`docker commit --change` (dockerd's BuildFromConfig, limited to what commit allows)."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import signal
from collections.abc import Iterable
from typing import Any

from kernel.errors import InvalidParameter

ALLOWED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "HEALTHCHECK", "LABEL", "ONBUILD",
           "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")  # fmt: skip
_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9,
                   "m": 60 * 10**9, "h": 3600 * 10**9}  # fmt: skip


def _json_list(rest: str) -> list[str] | None:
    """The exec (JSON) form, or None for the shell form (as the Dockerfile parser)."""
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _command(rest: str) -> list[str]:
    exec_form = _json_list(rest)
    return exec_form if exec_form is not None else ["/bin/sh", "-c", rest]


def _words(rest: str) -> list[str]:
    try:
        return shlex.split(rest, posix=True)
    except ValueError as exc:
        raise InvalidParameter(f"invalid change: {rest!r}: {exc}") from None


def _pairs(command: str, rest: str) -> list[tuple[str, str]]:
    """`KEY=value ...`, or the legacy `KEY value with spaces`."""
    words = _words(rest)
    if not words:
        raise InvalidParameter(f"{command} requires at least one argument")
    if "=" not in words[0]:
        if len(words) < 2:
            raise InvalidParameter(f"{command} must have two arguments")
        key, _, value = rest.strip().partition(" ")
        return [(key, " ".join(_words(value)))]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise InvalidParameter(f"{command} names can not be blank")
        pairs.append((key, value))
    return pairs


def _ports(rest: str) -> list[str]:
    ports = []
    for spec in rest.split():
        port, _, proto = spec.partition("/")
        proto = proto.lower() or "tcp"
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", port)
        if match is None or proto not in ("tcp", "udp", "sctp"):
            raise InvalidParameter(f"Invalid containerPort: {spec}")
        first = int(match[1])
        last = int(match[2] or first)
        if not 0 < first <= last <= 65535:
            raise InvalidParameter(f"Invalid containerPort: {spec}")
        ports += [f"{p}/{proto}" for p in range(first, last + 1)]
    return ports


def _signal(text: str) -> str:
    name = "SIG" + text.upper().removeprefix("SIG")
    if (text.isdigit() and int(text) > 0) or name in signal.Signals.__members__:
        return text
    if re.fullmatch(r"(SIG)?RTM(IN|AX)([+-]\d+)?", name):
        return text
    raise InvalidParameter(f"Invalid signal: {text}")


def _duration(text: str) -> int:
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise InvalidParameter(f"time: invalid duration {text!r}")
    return int(sum(float(n) * _DURATION_UNITS[u] for n, u in parts))


def _healthcheck(rest: str) -> dict[str, Any]:
    words = rest.split()
    options: dict[str, Any] = {}
    while words and words[0].startswith("--"):
        flag, _, value = words.pop(0)[2:].partition("=")
        if flag == "retries":
            options["Retries"] = int(value)
        elif flag in ("interval", "timeout", "start-period", "start-interval"):
            key = "".join(part.capitalize() for part in flag.split("-"))
            options[key] = _duration(value)
        else:
            raise InvalidParameter(f"Unknown flag: {flag}")
    if not words:
        raise InvalidParameter("Missing command after HEALTHCHECK CMD")
    kind, _, command = " ".join(words).partition(" ")
    if kind.upper() == "NONE":
        if command or options:
            raise InvalidParameter("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if kind.upper() != "CMD":
        raise InvalidParameter(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
    exec_form = _json_list(command)
    test = ["CMD", *exec_form] if exec_form is not None else ["CMD-SHELL", command]
    return {"Test": test, **options}


def apply_changes(config: dict[str, Any], changes: Iterable[str]) -> dict[str, Any]:
    """Apply the instructions to a container config (`Cmd`, `Env`, ...) in place."""
    cmd_set = False
    for change in changes:
        word, _, rest = change.strip().partition(" ")
        command, rest = word.upper(), rest.strip()
        if not command:
            continue
        if command not in ALLOWED:
            raise InvalidParameter(f"{word} is not a valid change command")
        if command == "CMD":
            config["Cmd"] = _command(rest)
            cmd_set = True
        elif command == "ENTRYPOINT":
            config["Entrypoint"] = _command(rest) if rest else None
            if not cmd_set:
                config["Cmd"] = None  # as a Dockerfile: ENTRYPOINT resets an inherited CMD
        elif command == "ENV":
            env = list(config.get("Env") or [])
            for key, value in _pairs("ENV", rest):
                env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]
            config["Env"] = env
        elif command == "LABEL":
            config["Labels"] = {**(config.get("Labels") or {}), **dict(_pairs("LABEL", rest))}
        elif command == "EXPOSE":
            exposed = dict(config.get("ExposedPorts") or {})
            exposed.update({port: {} for port in _ports(rest)})
            config["ExposedPorts"] = exposed
        elif command == "VOLUME":
            paths = _json_list(rest)
            paths = paths if paths is not None else rest.split()
            if not paths or any(not p.strip() for p in paths):
                raise InvalidParameter("VOLUME specified can not be an empty string")
            config["Volumes"] = {**(config.get("Volumes") or {}), **{p: {} for p in paths}}
        elif command == "WORKDIR":
            if not rest:
                raise InvalidParameter("WORKDIR requires exactly one argument")
            current = config.get("WorkingDir") or "/"
            config["WorkingDir"] = posixpath.normpath(posixpath.join("/", current, rest))
        elif command == "USER":
            if not rest:
                raise InvalidParameter("USER requires exactly one argument")
            config["User"] = rest
        elif command == "STOPSIGNAL":
            config["StopSignal"] = _signal(rest)
        elif command == "ONBUILD":
            config["OnBuild"] = [*(config.get("OnBuild") or []), rest]
        elif command == "HEALTHCHECK":
            config["Healthcheck"] = _healthcheck(rest)
    return config
