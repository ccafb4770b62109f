"""The daemon configuration: dockerd's flags, daemon.json, validation and reload diffs."""

from config.flags import ConfigError, Options, parse_args
from config.load import RELOADABLE, ReloadDiff, load, parse_host, reload
from config.model import DaemonConfig, Ulimit

__all__ = [
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
