"""The daemon configuration: dockerd's flags, daemon.json, validation and reload diffs."""

from config.flags import Options, parse_args
from config.load import RELOADABLE, ReloadDiff, load, reload
from config.model import (
    DEFAULT_CONFIG_FILE,
    DEFAULT_UNIX_SOCKET,
    ConfigError,
    DaemonConfig,
    Ulimit,
)
from config.validate import parse_host

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_UNIX_SOCKET",
    "RELOADABLE",
    "ConfigError",
    "DaemonConfig",
    "Options",
    "ReloadDiff",
    "Ulimit",
    "load",
    "parse_args",
    "parse_host",
    "reload",
]
