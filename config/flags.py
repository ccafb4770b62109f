"""dockerd's command-line flags; only the ones the user set take part in the merge."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from config.model import DEFAULT_CONFIG_FILE, ConfigError
from config.validate import go_int, parse_ulimit


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """What the command line said: the set flags by daemon.json key, and the file to read."""

    flags: dict[str, Any] = {}
    config_file: str = DEFAULT_CONFIG_FILE
    config_file_given: bool = False
    version: bool = False
    validate: bool = False


class Flag(NamedTuple):
    name: str  # the long flag, without dashes
    key: str  # its daemon.json key
    short: str | None
    kind: str  # bool | str | int | list | map | ulimit


FLAGS: tuple[Flag, ...] = (
    Flag("host", "hosts", "-H", "list"),
    Flag("debug", "debug", "-D", "bool"),
    Flag("log-level", "log-level", "-l", "str"),
    Flag("log-format", "log-format", None, "str"),
    Flag("log-driver", "log-driver", None, "str"),
    Flag("log-opt", "log-opts", None, "map"),
    Flag("data-root", "data-root", None, "str"),
    Flag("exec-root", "exec-root", None, "str"),
    Flag("pidfile", "pidfile", "-p", "str"),
    Flag("group", "group", "-G", "str"),
    Flag("tls", "tls", None, "bool"),
    Flag("tlsverify", "tlsverify", None, "bool"),
    Flag("tlscacert", "tlscacert", None, "str"),
    Flag("tlscert", "tlscert", None, "str"),
    Flag("tlskey", "tlskey", None, "str"),
    Flag("live-restore", "live-restore", None, "bool"),
    Flag("storage-driver", "storage-driver", "-s", "str"),
    Flag("label", "labels", None, "list"),
    Flag("api-cors-header", "api-cors-header", None, "str"),
    Flag("authorization-plugin", "authorization-plugins", None, "list"),
    Flag("max-concurrent-downloads", "max-concurrent-downloads", None, "int"),
    Flag("max-concurrent-uploads", "max-concurrent-uploads", None, "int"),
    Flag("insecure-registry", "insecure-registries", None, "list"),
    Flag("registry-mirror", "registry-mirrors", None, "list"),
    Flag("cluster-store", "cluster-store", None, "str"),
    Flag("cluster-advertise", "cluster-advertise", None, "str"),
    Flag("shutdown-timeout", "shutdown-timeout", None, "int"),
    Flag("bridge", "bridge", "-b", "str"),
    Flag("bip", "bip", None, "str"),
    Flag("iptables", "iptables", None, "bool"),
    Flag("ip-masq", "ip-masq", None, "bool"),
    Flag("userland-proxy", "userland-proxy", None, "bool"),
    Flag("default-ulimit", "default-ulimits", None, "ulimit"),
    Flag("mtu", "mtu", None, "int"),
    Flag("containerd", "containerd", None, "str"),
    Flag("containerd-namespace", "containerd-namespace", None, "str"),
    Flag("events-journal-size", "events-journal-size", None, "int"),
)
FLAG_BY_KEY = {f.key: f for f in FLAGS}

# Go's bool flags never take the next word as their value; only `--flag=value` sets one.
_BOOL_TOKENS = frozenset(
    token for f in FLAGS if f.kind == "bool" for token in (f"--{f.name}", f.short) if token
) | {"--validate", "--version", "-v"}


def go_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ConfigError(f'strconv.ParseBool: parsing "{text}": invalid syntax')


def _arg(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that reports our error text (argparse shows only ArgumentTypeError's)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(f'invalid argument "{text}": {exc}') from None

    return convert


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"invalid key value pair: {text!r}")
    return key, value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit 2
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    # No abbreviations: pflag has none, and `--tls` must never be taken for `--tlsverify`.
    parser = _Parser(prog="pydockerd", allow_abbrev=False, argument_default=argparse.SUPPRESS)
    kinds: dict[str, dict[str, Any]] = {
        "bool": {"type": _arg(go_bool)},
        "str": {},
        "int": {"type": _arg(go_int)},
        "list": {"action": "append"},
        "map": {"action": "append", "type": _arg(_key_value)},
        "ulimit": {"action": "append", "type": _arg(parse_ulimit)},
    }
    for flag in FLAGS:
        names = [f"--{flag.name}"] + ([flag.short] if flag.short else [])
        parser.add_argument(*names, dest=flag.key, **kinds[flag.kind])
    parser.add_argument("--config-file", dest="config_file")
    parser.add_argument("-v", "--version", dest="version", type=_arg(go_bool))
    parser.add_argument("--validate", dest="validate", type=_arg(go_bool))
    return parser


def parse_args(argv: list[str]) -> Options:
    words = list(argv)
    end = words.index("--") if "--" in words else len(words)
    # A bare bool flag means true: give it its value so argparse never eats the next word.
    words[:end] = [w + "=true" if w in _BOOL_TOKENS else w for w in words[:end]]
    given = vars(_parser().parse_args(words))
    config_file = given.pop("config_file", None)
    version = given.pop("version", False)
    validate = given.pop("validate", False)
    flags = dict(given)
    for flag in FLAGS:  # repeated key=value flags become a map, the last value winning
        if flag.kind == "map" and flag.key in flags:
            flags[flag.key] = dict(flags[flag.key])
    if "default-ulimits" in flags:  # the last value per name wins, as in dockerd's map
        flags["default-ulimits"] = {u.name: u for u in flags["default-ulimits"]}
    return Options(
        flags=flags,
        config_file=config_file if config_file is not None else DEFAULT_CONFIG_FILE,
        config_file_given=config_file is not None,
        version=version,
        validate=validate,
    )
