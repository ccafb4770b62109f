"""dockerd's checks and derived defaults, turning merged values into a DaemonConfig.

Error texts are dockerd's (daemon/config/config.go Validate, daemon/pkg/opts, go-units).
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from config.model import (
    ATTRS,
    DEFAULT_TLS_HOST,
    DEFAULT_UNIX_SOCKET,
    ConfigError,
    DaemonConfig,
    Ulimit,
)

# dockerd accepts containerd's log levels, in any case.
LOG_LEVELS = ("panic", "fatal", "error", "warn", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")
# go-units ulimitNameMapping ("as" is left out there too).
ULIMIT_NAMES = frozenset(
    {
        "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
        "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
    }
)  # fmt: skip
_RESERVED_LABELS = ("com.docker.", "io.docker.", "org.dockerproject.")


def parse_ulimit(text: str) -> Ulimit:
    """go-units ParseUlimit: `name=soft[:hard]`, hard defaults to soft."""
    name, sep, values = text.partition("=")
    if not sep:
        raise ConfigError(f"invalid ulimit argument: {text}")
    if name not in ULIMIT_NAMES:
        raise ConfigError(f"invalid ulimit type: {name}")
    parts = values.split(":")
    if len(parts) > 2:
        raise ConfigError(
            f"too many limit value arguments - {values}, can only have up to two, `soft[:hard]`"
        )
    soft, hard = (go_int(p) for p in (parts[0], parts[-1]))
    return check_ulimit(Ulimit(name=name, soft=soft, hard=hard))


def go_int(text: str) -> int:
    """Go's strconv.ParseInt(text, 10, 64): an optional sign and ASCII digits, nothing else."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise ConfigError(f'strconv.ParseInt: parsing "{text}": invalid syntax')
    return int(text)


def check_ulimit(ulimit: Ulimit) -> Ulimit:
    if ulimit.name not in ULIMIT_NAMES:
        raise ConfigError(f"invalid ulimit type: {ulimit.name}")
    if ulimit.hard != -1:  # -1 is unlimited
        if ulimit.soft == -1:
            raise ConfigError(
                "ulimit soft limit must be less than or equal to hard limit: "
                f"soft: -1 (unlimited), hard: {ulimit.hard}"
            )
        if ulimit.soft > ulimit.hard:
            raise ConfigError(
                "ulimit soft limit must be less than or equal to hard limit: "
                f"{ulimit.soft} > {ulimit.hard}"
            )
    return ulimit


def parse_host(address: str) -> str:
    """dockerd's ParseDaemonHost: a normalised unix://, tcp:// or fd:// address."""
    proto, sep, addr = address.partition("://")
    if not sep and proto:
        proto, addr = "tcp", proto  # a bare host:port is TCP
    if proto == "tcp":
        return _parse_tcp(address)
    if proto == "unix":
        if "://" in addr:
            raise ConfigError(f"invalid bind address ({address}): invalid unix address: {addr}")
        return f"unix://{addr or DEFAULT_UNIX_SOCKET.removeprefix('unix://')}"
    if proto == "fd":
        return address  # checked when the listeners are opened, as dockerd does
    raise ConfigError(f"invalid bind address ({address}): unsupported proto '{proto}'")


def _parse_tcp(address: str) -> str:
    """ParseTCPAddr against DefaultTCPHost: a missing host is localhost, a missing port 2375."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address

    def bad(reason: str) -> ConfigError:
        return ConfigError(f"invalid bind address ({address}): {reason}")

    if scheme != "tcp":
        raise bad(f"unsupported proto '{scheme}'")
    netloc = rest.partition("#")[0].partition("?")[0]  # url.Parse sets these apart; unused
    if "/" in netloc:
        raise bad("should not contain a path element")
    netloc = netloc.rpartition("@")[2]  # and userinfo too
    if netloc.startswith("["):  # [ipv6]:port
        host, _, port = netloc[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
    if port and (not port.isdigit() or int(port) == 0):
        raise bad(f"invalid port: {port}")
    host = host or "localhost"
    host = f"[{host}]" if ":" in host else host
    return f"tcp://{host}:{port or 2375}"


def check_label(label: str) -> None:
    """opts.ValidateLabel."""
    if "=" not in label:
        raise ConfigError(f"bad attribute format: {label}")
    if label.lower().startswith(_RESERVED_LABELS):
        raise ConfigError(
            f"label {label} is not allowed: the namespaces com.docker.*, io.docker.*, "
            "and org.dockerproject.* are reserved for internal use"
        )


def conflict_free_labels(labels: tuple[str, ...]) -> tuple[str, ...]:
    """config.GetConflictFreeLabels: duplicates collapse, one key with two values is an error."""
    seen: dict[str, str] = {}
    for label in labels:
        key, _, value = label.partition("=")
        if key in seen and seen[key] != value:
            raise ConfigError(f"conflict labels for {key}={value} and {key}={seen[key]}")
        seen[key] = value
    return tuple(f"{k}={v}" for k, v in seen.items())


def check_mirror(mirror: str) -> None:
    """registry.ValidateMirror."""
    scheme, sep, _ = mirror.partition("://")
    if not sep or not scheme:
        raise ConfigError(
            f"invalid mirror: no scheme specified for {mirror!r}: "
            "must use either 'https://' or 'http://'"
        )
    from urllib.parse import urlsplit  # only when mirrors are configured

    uri = urlsplit(mirror)
    if uri.scheme not in ("http", "https"):
        raise ConfigError(
            f"invalid mirror: unsupported scheme {uri.scheme!r} in {mirror!r}: "
            "must use either 'https://' or 'http://'"
        )
    if uri.query or uri.fragment:
        raise ConfigError(f"invalid mirror: query or fragment at end of the URI {mirror!r}")
    if uri.username is not None:
        raise ConfigError(f"invalid mirror: username/password not allowed in URI {mirror!r}")


def check_index_name(name: str) -> None:
    """registry.ValidateIndexName."""
    if name.startswith("-") or name.endswith("-"):
        raise ConfigError(f"invalid index name ({name}). Cannot begin or end with a hyphen")


def check_bip(bip: str) -> None:
    import ipaddress  # only when --bip is set: importing config must stay cheap

    if "/" not in bip:  # dockerd wants a CIDR: the bridge address and its subnet
        raise ConfigError(f"parse bip failed: netip.ParsePrefix(\"{bip}\"): no '/'")
    try:
        ipaddress.IPv4Interface(bip)
    except ValueError as exc:
        raise ConfigError(f"parse bip failed: {exc}") from None


def cert_dir() -> str:
    """Where dockerd looks for ca.pem, cert.pem and key.pem when TLS is on."""
    return (
        os.environ.get("DOCKER_CERT_PATH")
        or os.environ.get("DOCKER_CONFIG")
        or os.path.join(os.path.expanduser("~"), ".docker")
    )


def resolve(values: dict[str, Any]) -> DaemonConfig:
    """Typed values by daemon.json key (only those set) -> a validated DaemonConfig.

    Key presence matters: a `tlsverify` that is set at all turns TLS on, as in dockerd.
    """
    v = dict(values)
    if "log-level" in v:
        v["log-level"] = v["log-level"].lower()
    # --tlsverify (even =false) implies --tls; --tls implies --tlsverify unless it was given.
    tls = bool(v.get("tls")) or "tlsverify" in v
    v["tls"], v["tlsverify"] = tls, v.get("tlsverify", tls)
    if tls:
        certs = cert_dir()
        for key, name in (("tlscacert", "ca.pem"), ("tlscert", "cert.pem"), ("tlskey", "key.pem")):
            v[key] = v.get(key) or os.path.join(certs, name)
    # Empty hosts are dropped; none left means the default socket (a TCP port with TLS).
    hosts = [h.strip() for h in v.get("hosts", ()) if h.strip()]
    hosts = hosts or [DEFAULT_TLS_HOST if tls else DEFAULT_UNIX_SOCKET]
    v["hosts"] = tuple(sorted({parse_host(h) for h in hosts}))
    # A file's ulimit may leave out its Name: the map key names it.
    ulimits: dict[str, Ulimit] = v.get("default-ulimits", {})
    v["default-ulimits"] = {
        k: u if u.name else msgspec.structs.replace(u, name=k) for k, u in ulimits.items()
    }
    if not v.get("iptables", True):
        v["ip-masq"] = False  # masquerading needs iptables (dockerd verifyDaemonSettings)
    cfg = DaemonConfig(**{ATTRS[k]: value for k, value in v.items()})
    _validate(cfg)
    return msgspec.structs.replace(cfg, labels=conflict_free_labels(cfg.labels))


def _validate(cfg: DaemonConfig) -> None:
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"invalid logging level: {cfg.log_level}")
    if cfg.log_format not in LOG_FORMATS:
        raise ConfigError(f"invalid log format: {cfg.log_format}")
    for label in cfg.labels:
        check_label(label)
    if cfg.mtu < 0:
        raise ConfigError(f"invalid default MTU: {cfg.mtu}")
    if cfg.events_journal_size < 1:
        raise ConfigError(f"invalid events journal size: {cfg.events_journal_size}")
    if cfg.max_concurrent_downloads < 0:
        raise ConfigError(f"invalid max concurrent downloads: {cfg.max_concurrent_downloads}")
    if cfg.max_concurrent_uploads < 0:
        raise ConfigError(f"invalid max concurrent uploads: {cfg.max_concurrent_uploads}")
    # dockerd reads a negative timeout as "wait forever"; our shutdown needs a bound.
    if cfg.shutdown_timeout < 0:
        raise ConfigError(f"invalid shutdown timeout: {cfg.shutdown_timeout}")
    for mirror in cfg.registry_mirrors:
        check_mirror(mirror)
    for name in cfg.insecure_registries:
        check_index_name(name)
    for ulimit in cfg.default_ulimits.values():
        check_ulimit(ulimit)
    # dockerd refuses -b with --bip; we create the named bridge with that address
    # (test daemons run side by side this way), see docs/compat.md.
    if cfg.bip:
        check_bip(cfg.bip)
