"""The daemon configuration: one frozen struct whose encoded field names are daemon.json's keys."""

from __future__ import annotations

from typing import Any

import msgspec

DEFAULT_CONFIG_FILE = "/etc/pydockerd/daemon.json"
DEFAULT_UNIX_SOCKET = "unix:///var/run/pydockerd.sock"
# dockerd: opts.DefaultTLSHost, used when TLS is on and no host is given.
DEFAULT_TLS_HOST = "tcp://localhost:2376"


class ConfigError(Exception):
    """A flag, daemon.json or merged configuration that dockerd would refuse."""


class Ulimit(msgspec.Struct, frozen=True, rename="pascal"):
    name: str = ""
    soft: int = 0
    hard: int = 0


class DaemonConfig(
    msgspec.Struct, frozen=True, kw_only=True, rename="kebab", forbid_unknown_fields=True
):
    """The effective configuration: flags over daemon.json over defaults, resolved by `load`."""

    hosts: tuple[str, ...] = (DEFAULT_UNIX_SOCKET,)
    debug: bool = False
    log_level: str = "info"
    log_format: str = "text"
    log_driver: str = "json-file"
    log_opts: dict[str, str] = {}
    data_root: str = "/var/lib/pydockerd"
    exec_root: str = "/var/run/pydockerd"
    pidfile: str = "/var/run/pydockerd.pid"
    group: str = "docker"
    tls: bool = False
    tlsverify: bool = False
    tlscacert: str = ""
    tlscert: str = ""
    tlskey: str = ""
    live_restore: bool = False
    storage_driver: str = ""
    labels: tuple[str, ...] = ()
    api_cors_header: str = ""
    authorization_plugins: tuple[str, ...] = ()
    max_concurrent_downloads: int = 3
    max_concurrent_uploads: int = 5
    insecure_registries: tuple[str, ...] = ()
    registry_mirrors: tuple[str, ...] = ()
    cluster_store: str = ""
    cluster_advertise: str = ""
    shutdown_timeout: int = 15
    bridge: str = ""
    bip: str = ""
    iptables: bool = True
    ip_masq: bool = True
    userland_proxy: bool = True
    default_ulimits: dict[str, Ulimit] = {}
    mtu: int = 1500
    containerd: str = ""
    containerd_namespace: str = "pydockerd"
    features: dict[str, bool] = {}
    events_journal_size: int = 10_000  # events kept on disk for `docker events --since`
    # Where volume plugins are looked up (moby pkg/plugins' fixed paths, a setting here).
    plugin_dirs: tuple[str, ...] = (
        "/run/docker/plugins",
        "/etc/docker/plugins",
        "/usr/lib/docker/plugins",
    )

    @property
    def managed_containerd(self) -> bool:
        """No --containerd socket: the daemon runs and supervises its own containerd."""
        return not self.containerd

    def get(self, key: str) -> Any:
        """A value by its daemon.json key (`log-level`), as reload diffs name them."""
        return getattr(self, ATTRS[key])


_FIELDS = msgspec.structs.fields(DaemonConfig)
# daemon.json key -> attribute name, and -> the type a file value must convert to
ATTRS: dict[str, str] = {f.encode_name: f.name for f in _FIELDS}
TYPES: dict[str, Any] = {f.encode_name: f.type for f in _FIELDS}
