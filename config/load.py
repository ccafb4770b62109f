"""daemon.json merged with the flags exactly as dockerd does, validated, and diffed on reload."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from config.flags import ConfigError, Options
from config.model import DEFAULT_UNIX_SOCKET, KEYS, DaemonConfig

LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
_NAMESPACE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")  # containerd's identifier rule

# What a SIGHUP applies without a restart (the rest is reported as needing one).
RELOADABLE = frozenset(
    {
        "debug", "log-level", "labels", "live-restore", "max-concurrent-downloads",
        "max-concurrent-uploads", "insecure-registries", "registry-mirrors", "shutdown-timeout",
        "default-ulimits", "api-cors-header", "authorization-plugins", "cluster-store",
        "cluster-advertise", "tlscacert", "tlscert", "tlskey", "hosts", "features",
    }
)  # fmt: skip


@dataclass(frozen=True)
class ReloadDiff:
    changed: frozenset[str]
    live: frozenset[str]
    restart: frozenset[str]


def _read_file(options: Options) -> dict[str, Any]:
    path = Path(options.config_file)
    try:
        text = path.read_text()
    except FileNotFoundError:
        if options.config_file_given:
            raise ConfigError(f"open {path}: no such file or directory") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"unable to read {path}: {exc.strerror}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"unable to configure the daemon with file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"unable to configure the daemon with file {path}: not a JSON object")
    unknown = sorted(k for k in data if k not in KEYS)
    if unknown:
        raise ConfigError(
            f"unable to configure the daemon with file {path}: the following directives "
            f"don't match any configuration option: {', '.join(unknown)}"
        )
    return data


def _go_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + " ".join(_go_value(v) for v in value) + "]"
    return str(value)


def _merge(options: Options, file_values: dict[str, Any]) -> dict[str, Any]:
    conflicts = [
        f"{key}: (from flag: {_go_value(options.flags[key])}, from file: {_go_value(value)})"
        for key, value in file_values.items()
        if key in options.flags
    ]
    if conflicts:
        raise ConfigError(
            f"unable to configure the daemon with file {options.config_file}: the following "
            "directives are specified both as a flag and in the configuration file: "
            + ", ".join(conflicts)
        )
    return {**file_values, **options.flags}


def _build(merged: dict[str, Any]) -> DaemonConfig:
    try:
        cfg = msgspec.convert(merged, DaemonConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(_type_error(str(exc))) from None
    return _validate(cfg)


def _type_error(text: str) -> str:
    match = re.search(r"at `\$\.([^`\[]+)", text)
    reason = text.split(" - at ")[0]
    if match:
        return f"invalid value for {match.group(1)}: {reason}"
    return f"invalid configuration: {reason}"


def parse_host(host: str, *, tls: bool) -> str:
    """moby opts.ParseHost: normalised unix://, tcp:// or fd:// address."""
    host = host.strip()
    if not host:
        return DEFAULT_UNIX_SOCKET
    proto, sep, address = host.partition("://")
    if not sep:
        raise ConfigError(f"Invalid bind address format: {host}")
    if proto == "unix":
        return f"unix://{address or DEFAULT_UNIX_SOCKET[len('unix://') :]}"
    if proto == "fd":
        if address and not address.isdigit():
            raise ConfigError(f"Invalid bind address format: {host}")
        return host
    if proto == "tcp":
        address = address.split("/", 1)[0]
        hostpart, _, port = address.rpartition(":") if ":" in address else (address, "", "")
        if not port:
            port = "2376" if tls else "2375"
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"Invalid bind address format: {host}")
        return f"tcp://{hostpart or '127.0.0.1'}:{port}"
    raise ConfigError(f"Invalid bind address format: {host}")


def _validate(cfg: DaemonConfig) -> DaemonConfig:
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"invalid log level: {cfg.log_level}")
    if cfg.log_format not in ("text", "json"):
        raise ConfigError(f"unsupported log format: {cfg.log_format}")
    if cfg.max_concurrent_downloads < 0:
        raise ConfigError(f"invalid max concurrent downloads: {cfg.max_concurrent_downloads}")
    if cfg.max_concurrent_uploads < 0:
        raise ConfigError(f"invalid max concurrent uploads: {cfg.max_concurrent_uploads}")
    for label in cfg.labels:
        if "=" not in label or label.startswith("="):
            raise ConfigError(f"bad attribute format: {label}")
    if not _NAMESPACE.fullmatch(cfg.containerd_namespace):
        raise ConfigError(
            f"invalid containerd namespace {cfg.containerd_namespace!r}: it must match "
            f"{_NAMESPACE.pattern}"
        )
    if cfg.mtu < 0:
        raise ConfigError(f"invalid default MTU: {cfg.mtu}")
    if cfg.shutdown_timeout < 0:
        raise ConfigError(f"invalid shutdown timeout: {cfg.shutdown_timeout}")
    if cfg.bip:
        try:
            ipaddress.ip_interface(cfg.bip)
        except ValueError:
            raise ConfigError(f"invalid bip: {cfg.bip}") from None
    for name, ulimit in cfg.default_ulimits.items():
        if ulimit.soft > ulimit.hard:
            raise ConfigError(f"invalid ulimit {name}: soft limit above hard limit")
    tls = cfg.tls or cfg.tlsverify
    hosts = tuple(parse_host(h, tls=tls) for h in cfg.hosts) or (DEFAULT_UNIX_SOCKET,)
    certs = Path(os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
    return msgspec.structs.replace(
        cfg,
        hosts=hosts,
        tls=tls,
        tlscacert=cfg.tlscacert or (str(certs / "ca.pem") if tls else ""),
        tlscert=cfg.tlscert or (str(certs / "cert.pem") if tls else ""),
        tlskey=cfg.tlskey or (str(certs / "key.pem") if tls else ""),
    )


def load(options: Options) -> DaemonConfig:
    return _build(_merge(options, _read_file(options)))


def reload(current: DaemonConfig, options: Options) -> tuple[DaemonConfig, ReloadDiff]:
    """Re-read the file keeping the flags; ConfigError leaves the caller's config in force."""
    new = load(options)
    old_values = msgspec.to_builtins(current)
    new_values = msgspec.to_builtins(new)
    changed = frozenset(k for k in new_values if new_values[k] != old_values.get(k))
    return new, ReloadDiff(changed=changed, live=changed & RELOADABLE, restart=changed - RELOADABLE)
