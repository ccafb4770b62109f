"""dockerd's command-line flags; only the ones the user set count in the merge."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from config.model import DEFAULT_CONFIG_FILE


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Options:
    """What the command line said: the set flags by daemon.json key, and the file to read."""

    flags: dict[str, Any] = field(default_factory=dict)
    config_file: str = DEFAULT_CONFIG_FILE
    config_file_given: bool = False
    version: bool = False
    validate: bool = False


def _go_bool(text: str) -> bool:
    """Go's strconv.ParseBool, as `--iptables=false` needs."""
    lowered = text.lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def _ulimit(text: str) -> tuple[str, dict[str, Any]]:
    name, sep, values = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"invalid ulimit argument: {text}")
    soft, _, hard = values.partition(":")
    try:
        limits = (int(soft), int(hard or soft))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid ulimit argument: {text}") from None
    return name, {"Name": name, "Soft": limits[0], "Hard": limits[1]}


# flag (without dashes) -> (daemon.json key, short form, kind)
_FLAGS: list[tuple[str, str, str | None, str]] = [
    ("host", "hosts", "-H", "list"),
    ("debug", "debug", "-D", "bool"),
    ("log-level", "log-level", "-l", "str"),
    ("log-format", "log-format", None, "str"),
    ("data-root", "data-root", None, "str"),
    ("exec-root", "exec-root", None, "str"),
    ("pidfile", "pidfile", "-p", "str"),
    ("group", "group", "-G", "str"),
    ("tls", "tls", None, "bool"),
    ("tlsverify", "tlsverify", None, "bool"),
    ("tlscacert", "tlscacert", None, "str"),
    ("tlscert", "tlscert", None, "str"),
    ("tlskey", "tlskey", None, "str"),
    ("live-restore", "live-restore", None, "bool"),
    ("storage-driver", "storage-driver", "-s", "str"),
    ("label", "labels", None, "list"),
    ("api-cors-header", "api-cors-header", None, "str"),
    ("authorization-plugin", "authorization-plugins", None, "list"),
    ("max-concurrent-downloads", "max-concurrent-downloads", None, "int"),
    ("max-concurrent-uploads", "max-concurrent-uploads", None, "int"),
    ("insecure-registry", "insecure-registries", None, "list"),
    ("registry-mirror", "registry-mirrors", None, "list"),
    ("cluster-store", "cluster-store", None, "str"),
    ("cluster-advertise", "cluster-advertise", None, "str"),
    ("shutdown-timeout", "shutdown-timeout", None, "int"),
    ("bridge", "bridge", "-b", "str"),
    ("bip", "bip", None, "str"),
    ("iptables", "iptables", None, "bool"),
    ("ip-masq", "ip-masq", None, "bool"),
    ("userland-proxy", "userland-proxy", None, "bool"),
    ("default-ulimit", "default-ulimits", None, "ulimit"),
    ("mtu", "mtu", None, "int"),
    ("containerd", "containerd", None, "str"),
    ("containerd-namespace", "containerd-namespace", None, "str"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit 2
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pydockerd", add_help=True, argument_default=argparse.SUPPRESS)
    for flag, key, short, kind in _FLAGS:
        names = [f"--{flag}"] + ([short] if short else [])
        dest = key.replace("-", "_")
        if kind == "bool":
            parser.add_argument(*names, dest=dest, nargs="?", const=True, type=_go_bool)
        elif kind == "list":
            parser.add_argument(*names, dest=dest, action="append")
        elif kind == "int":
            parser.add_argument(*names, dest=dest, type=int)
        elif kind == "ulimit":
            parser.add_argument(*names, dest=dest, action="append", type=_ulimit)
        else:
            parser.add_argument(*names, dest=dest)
    parser.add_argument("--config-file", dest="config_file")
    parser.add_argument("-v", "--version", dest="version", action="store_true")
    parser.add_argument("--validate", dest="validate", action="store_true")
    return parser


def parse_args(argv: list[str]) -> Options:
    namespace = vars(_parser().parse_args(argv))
    config_file = namespace.pop("config_file", None)
    version = bool(namespace.pop("version", False))
    validate = bool(namespace.pop("validate", False))
    flags: dict[str, Any] = {}
    for _flag, key, _short, kind in _FLAGS:
        dest = key.replace("-", "_")
        if dest in namespace:
            value = namespace[dest]
            flags[key] = dict(value) if kind == "ulimit" else value
    return Options(
        flags=flags,
        config_file=config_file or DEFAULT_CONFIG_FILE,
        config_file_given=config_file is not None,
        version=version,
        validate=validate,
    )
