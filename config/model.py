"""The daemon configuration: one frozen struct whose field names are daemon.json's keys."""

from __future__ import annotations

import msgspec

DEFAULT_UNIX_SOCKET = "unix:///var/run/pydockerd.sock"
DEFAULT_CONFIG_FILE = "/etc/pydockerd/daemon.json"


class Ulimit(msgspec.Struct, frozen=True, rename="pascal"):
    name: str
    soft: int
    hard: int


class DaemonConfig(
    msgspec.Struct, frozen=True, kw_only=True, rename="kebab", forbid_unknown_fields=True
):
    hosts: tuple[str, ...] = ()
    debug: bool = False
    log_level: str = "info"
    log_format: str = "text"
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
    mtu: int = 0
    containerd: str = ""
    containerd_namespace: str = "pydockerd"
    features: dict[str, bool] = {}


# daemon.json key -> attribute name
KEYS: dict[str, str] = {f.encode_name: f.name for f in msgspec.structs.fields(DaemonConfig)}
