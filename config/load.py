"""daemon.json merged with the set flags as dockerd does, validated, and diffed on reload."""

from __future__ import annotations

import codecs
from typing import Any

import msgspec

from config.flags import FLAG_BY_KEY, Options
from config.model import ATTRS, TYPES, ConfigError, DaemonConfig, Ulimit
from config.validate import resolve

# What a SIGHUP applies without a restart; any other changed key waits for one. dockerd
# reloads neither hosts nor TLS; here they are one listener setting the API re-opens live.
RELOADABLE = frozenset(
    {
        "debug", "log-level", "labels", "live-restore", "max-concurrent-downloads",
        "max-concurrent-uploads", "insecure-registries", "registry-mirrors", "shutdown-timeout",
        "default-ulimits", "api-cors-header", "authorization-plugins", "cluster-store",
        "cluster-advertise", "hosts", "tls", "tlsverify", "tlscacert", "tlscert", "tlskey",
        "features", "events-journal-size",
    }
)  # fmt: skip
# Accepted in the file though no flag sets them (dockerd: skipValidateOptions).
_FILE_ONLY = frozenset({"features", "plugin-dirs"})


class ReloadDiff(msgspec.Struct, frozen=True):
    changed: frozenset[str]  # daemon.json keys whose value the file changed
    live: frozenset[str]  # of those, applied by the returned config
    restart: frozenset[str]  # of those, kept at the running value until a restart


def load(options: Options) -> DaemonConfig:
    """The effective configuration: set flags over daemon.json over defaults."""
    return _resolve(options, *_values(options))


def reload(current: DaemonConfig, options: Options) -> tuple[DaemonConfig, ReloadDiff]:
    """Re-read daemon.json, keeping the flags; a ConfigError leaves `current` in force.

    The returned config takes the reloadable keys from the file and keeps the running
    value of every other one, so it always describes what is actually in effect.
    """
    values, file_read = _values(options)
    wanted = _resolve(options, values, file_read)
    # Keys that need a restart keep their running value (resolving is idempotent on them).
    pinned = {key: current.get(key) for key in ATTRS if key not in RELOADABLE}
    applied = _resolve(options, values | pinned, file_read)
    changed = frozenset(k for k in ATTRS if wanted.get(k) != current.get(k))
    live = frozenset(k for k in ATTRS if applied.get(k) != current.get(k))
    return applied, ReloadDiff(changed=changed, live=live, restart=changed - live)


def _values(options: Options) -> tuple[dict[str, Any], bool]:
    """Typed values of every key the flags or the file set; and whether there was a file."""
    file_values = _read_file(options)
    try:
        _check_conflicts(options.flags, file_values or {})
    except ConfigError as exc:
        raise _file_error(options, str(exc)) from None
    merged: dict[str, Any] = {}
    for key, value in {**(file_values or {}), **options.flags}.items():
        if value is None:
            continue  # Go's json leaves a field at its default for null
        try:
            merged[key] = msgspec.convert(value, TYPES[key])
        except msgspec.ValidationError as exc:
            raise _file_error(options, f"invalid JSON: invalid value for {key}: {exc}") from None
    return merged, file_values is not None


def _resolve(options: Options, values: dict[str, Any], file_read: bool) -> DaemonConfig:
    try:
        return resolve(values)
    except ConfigError as exc:
        if not file_read:
            raise
        reason = f"merged configuration validation from file and command line flags failed: {exc}"
        raise _file_error(options, reason) from None


def _file_error(options: Options, reason: str) -> ConfigError:
    return ConfigError(
        f"unable to configure the Docker daemon with file {options.config_file}: {reason}"
    )


def _read_file(options: Options) -> dict[str, Any] | None:
    """The file's top-level values; None when there is none (`--config-file ""` or absent)."""
    if not options.config_file:
        return None
    try:
        with open(options.config_file, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if options.config_file_given:  # only the default file may be missing
            raise _file_error(
                options, f"open {options.config_file}: no such file or directory"
            ) from None
        return None
    except OSError as exc:
        raise _file_error(options, f"open {options.config_file}: {exc.strerror}") from None
    text = _decode(options, data).strip()
    if not text:
        return {}
    try:
        values = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise _file_error(options, f"invalid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise _file_error(options, "invalid JSON: the configuration must be a JSON object")
    unknown = [k for k in values if k not in FLAG_BY_KEY and k not in _FILE_ONLY]
    if unknown:
        raise _file_error(
            options,
            "the following directives don't match any configuration option: "
            + ", ".join(sorted(unknown)),
        )
    return values


def _decode(options: Options, data: bytes) -> str:
    """UTF-8, with or without a BOM, or UTF-16 with one (Notepad, PowerShell), as dockerd reads."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _file_error(
            options, f"failed to decode configuration JSON at offset {exc.start}"
        ) from None


def _check_conflicts(flags: dict[str, Any], file_values: dict[str, Any]) -> None:
    # Listed in flag-name order, as pflag's Visit walks them.
    conflicts = [
        f"{key}: (from flag: {_go_flag(key, flags[key])}, from file: {_go_value(file_values[key])})"
        for key in sorted(flags.keys() & file_values.keys(), key=lambda k: FLAG_BY_KEY[k].name)
    ]
    if conflicts:
        raise ConfigError(
            "the following directives are specified both as a flag and in the configuration "
            "file: " + ", ".join(conflicts)
        )


def _go_flag(key: str, value: Any) -> str:
    """A set flag as pflag's Value.String() shows it."""
    if key == "default-ulimits":
        ulimits: dict[str, Ulimit] = value
        return "[" + " ".join(f"{u.name}={u.soft}:{u.hard}" for u in ulimits.values()) + "]"
    if isinstance(value, list):
        return "[" + " ".join(value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{value[k]}" for k in sorted(value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _go_value(value: Any) -> str:
    """A decoded JSON value as Go's %v prints it."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _go_float(value)
    if isinstance(value, list | tuple):
        return "[" + " ".join(_go_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_value(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def _go_float(number: float) -> str:
    """A JSON number is a float64 in Go; %v prints its shortest digits, in e-form from 1e+06."""
    from decimal import Decimal  # only to word a conflict

    shortest = Decimal(repr(float(number))).normalize()
    _, digits, exponent = shortest.as_tuple()
    assert isinstance(exponent, int)
    point = len(digits) + exponent - 1  # the decimal exponent of the first digit
    if -4 <= point < 6:
        return format(shortest, "f")
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    sign = "-" if number < 0 else ""
    return f"{sign}{mantissa}e{'+' if point >= 0 else '-'}{abs(point):02d}"
