"""dockerd's flags merged with daemon.json: defaults, conflicts, types, hosts, reload diffs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import config


def load(tmp_path: Path, file: dict[str, object] | str | None, *argv: str) -> config.DaemonConfig:
    path = tmp_path / "daemon.json"
    if file is not None:
        path.write_text(file if isinstance(file, str) else json.dumps(file))
    return config.load(config.parse_args(["--config-file", str(path), *argv]))


def test_defaults() -> None:
    options = config.parse_args([])
    assert options.config_file == "/etc/pydockerd/daemon.json" and not options.config_file_given
    defaults = config.DaemonConfig()
    assert defaults.data_root == "/var/lib/pydockerd"
    assert defaults.exec_root == "/var/run/pydockerd"
    assert defaults.containerd_namespace == "pydockerd"
    assert defaults.max_concurrent_downloads == 3 and defaults.shutdown_timeout == 15


def test_flags_and_file_merge(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        {"labels": ["a=b"], "max-concurrent-uploads": 2, "default-ulimits": {
            "nofile": {"Name": "nofile", "Soft": 1024, "Hard": 2048}}},
        "-D", "-H", "unix:///tmp/a.sock", "-H", "tcp://127.0.0.1:2375", "--iptables=false",
    )  # fmt: skip
    assert cfg.default_ulimits["nofile"] == config.Ulimit(name="nofile", soft=1024, hard=2048)
    assert cfg.debug is True and cfg.iptables is False and cfg.ip_masq is True
    assert cfg.labels == ("a=b",) and cfg.max_concurrent_uploads == 2
    assert cfg.hosts == ("unix:///tmp/a.sock", "tcp://127.0.0.1:2375")
    flagged = load(tmp_path, {}, "--default-ulimit", "nproc=10:20")
    assert flagged.default_ulimits["nproc"] == config.Ulimit(name="nproc", soft=10, hard=20)
    with pytest.raises(config.ConfigError, match="default-ulimits"):
        load(tmp_path, {"default-ulimits": {"nofile": {"Name": "nofile", "Soft": 1, "Hard": 2}}},
             "--default-ulimit", "nproc=10:20")  # fmt: skip


def test_conflicts_name_every_key(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, {"debug": False, "labels": ["a=b"]}, "--debug", "--label", "c=d")
    message = str(info.value)
    assert (
        "the following directives are specified both as a flag and in the configuration file"
        in message
    )
    assert "debug: (from flag: true, from file: false)" in message
    assert "labels: (from flag: [c=d], from file: [a=b])" in message


def test_unknown_keys_and_types(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="don't match any configuration option: bar, foo"):
        load(tmp_path, {"foo": 1, "bar": 2})
    with pytest.raises(config.ConfigError, match="invalid value for max-concurrent-downloads"):
        load(tmp_path, {"max-concurrent-downloads": "three"})
    with pytest.raises(config.ConfigError, match="invalid max concurrent downloads: -1"):
        load(tmp_path, {"max-concurrent-downloads": -1})
    with pytest.raises(config.ConfigError, match="bad attribute format: nolabel"):
        load(tmp_path, {"labels": ["nolabel"]})
    with pytest.raises(config.ConfigError, match="invalid containerd namespace"):
        load(tmp_path, {}, "--containerd-namespace", "bad_")
    with pytest.raises(config.ConfigError, match="invalid log level"):
        load(tmp_path, None, "--log-level", "loud")
    with pytest.raises(config.ConfigError):
        load(tmp_path, '{"debug": ')
    with pytest.raises(config.ConfigError):
        config.parse_args(["--iptables=maybe"])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="no such file or directory"):
        config.load(config.parse_args(["--config-file", str(tmp_path / "missing.json")]))


def test_hosts(tmp_path: Path) -> None:
    assert load(tmp_path, {}).hosts == ("unix:///var/run/pydockerd.sock",)
    assert config.parse_host("tcp://", tls=False) == "tcp://127.0.0.1:2375"
    assert config.parse_host("tcp://0.0.0.0", tls=True) == "tcp://0.0.0.0:2376"
    assert config.parse_host("unix://", tls=False) == "unix:///var/run/pydockerd.sock"
    assert config.parse_host("fd://", tls=False) == "fd://"
    for bad in ("bogus://x", "tcp://host:notaport", "/just/a/path"):
        with pytest.raises(config.ConfigError, match="Invalid bind address format"):
            config.parse_host(bad, tls=False)


def test_tls_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CERT_PATH", "/certs")
    cfg = load(tmp_path, {"tlsverify": True})
    assert cfg.tls is True and cfg.tlscacert == "/certs/ca.pem" and cfg.tlskey == "/certs/key.pem"


def test_reload_diff_keeps_flags(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"labels": ["a=b"], "mtu": 1400}))
    options = config.parse_args(["--config-file", str(path), "--debug"])
    current = config.load(options)
    path.write_text(json.dumps({"labels": ["a=c"], "mtu": 1500, "bip": "10.99.0.1/24"}))
    new, diff = config.reload(current, options)
    assert new.debug is True  # the flag still holds
    assert diff.changed == {"labels", "mtu", "bip"}
    assert diff.live == {"labels"} and diff.restart == {"mtu", "bip"}
    path.write_text('{"labels": [')
    with pytest.raises(config.ConfigError):
        config.reload(current, options)
