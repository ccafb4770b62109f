"""dockerd's flags merged with daemon.json: defaults, conflicts, types, hosts, TLS, reload diffs."""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path

import msgspec
import pytest

import config

CONFIG_DIR = Path(config.__file__).parent


def write(path: Path, file: dict[str, object] | str) -> None:
    path.write_text(file if isinstance(file, str) else json.dumps(file))


def load(tmp_path: Path, file: dict[str, object] | str | None, *argv: str) -> config.DaemonConfig:
    """Flags `argv` with `file` as daemon.json; None: no file, as a missing default one."""
    if file is None:
        absent = str(tmp_path / "absent.json")
        options = msgspec.structs.replace(config.parse_args(list(argv)), config_file=absent)
        return config.load(options)
    path = tmp_path / "daemon.json"
    write(path, file)
    return config.load(config.parse_args(["--config-file", str(path), *argv]))


def error(tmp_path: Path, file: dict[str, object] | str | None, *argv: str) -> str:
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, file, *argv)
    return str(info.value)


def test_defaults(tmp_path: Path) -> None:
    options = config.parse_args([])
    assert options.config_file == "/etc/pydockerd/daemon.json"
    assert not options.config_file_given and options.flags == {}
    # The default file may be absent.
    absent = config.Options(config_file=str(tmp_path / "absent.json"))
    cfg = config.load(absent)
    assert cfg == config.DaemonConfig() == config.load(config.parse_args(["--config-file="]))
    assert cfg.hosts == ("unix:///var/run/pydockerd.sock",)
    assert (cfg.data_root, cfg.exec_root) == ("/var/lib/pydockerd", "/var/run/pydockerd")
    assert cfg.pidfile == "/var/run/pydockerd.pid" and cfg.group == "docker"
    assert cfg.containerd_namespace == "pydockerd" and cfg.managed_containerd
    assert (cfg.max_concurrent_downloads, cfg.max_concurrent_uploads) == (3, 5)
    assert cfg.shutdown_timeout == 15 and cfg.log_level == "info" and cfg.log_format == "text"
    assert cfg.iptables and cfg.ip_masq and cfg.userland_proxy and not cfg.tls


def test_flags_only(tmp_path: Path) -> None:
    cfg = load(
        tmp_path, None, "-D", "-l", "warn", "--data-root", "/d", "--exec-root", "/e", "-p", "/p",
        "-G", "wheel", "-s", "vfs", "--containerd", "/run/c.sock", "--containerd-namespace", "t",
        "--max-concurrent-downloads", "7", "--shutdown-timeout", "0", "-b", "none", "--mtu", "9000",
        "--log-format", "json", "--api-cors-header", "*", "--cluster-store", "etcd://127.0.0.1:2379",
    )  # fmt: skip
    assert cfg.debug and cfg.log_level == "warn" and cfg.log_format == "json"
    assert (cfg.data_root, cfg.exec_root, cfg.pidfile) == ("/d", "/e", "/p")
    assert cfg.group == "wheel" and cfg.storage_driver == "vfs" and cfg.bridge == "none"
    assert cfg.containerd == "/run/c.sock" and not cfg.managed_containerd
    assert cfg.containerd_namespace == "t" and cfg.max_concurrent_downloads == 7
    assert cfg.shutdown_timeout == 0 and cfg.mtu == 9000 and cfg.api_cors_header == "*"
    assert cfg.cluster_store == "etcd://127.0.0.1:2379"


def test_file_only(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        {
            "debug": True, "labels": ["a=b"], "max-concurrent-uploads": 2, "iptables": False,
            "default-ulimits": {"nofile": {"Name": "nofile", "Soft": 1024, "Hard": 2048}},
            "registry-mirrors": ["https://mirror.example"], "insecure-registries": ["r:5000"],
            "features": {"buildkit": False}, "authorization-plugins": ["authz"],
            "live-restore": True, "bip": "10.99.0.1/24",
        },
    )  # fmt: skip
    assert cfg.debug and cfg.labels == ("a=b",) and cfg.max_concurrent_uploads == 2
    assert cfg.default_ulimits == {"nofile": config.Ulimit(name="nofile", soft=1024, hard=2048)}
    assert cfg.registry_mirrors == ("https://mirror.example",)
    assert cfg.insecure_registries == ("r:5000",) and cfg.features == {"buildkit": False}
    assert cfg.authorization_plugins == ("authz",) and cfg.live_restore
    assert cfg.bip == "10.99.0.1/24"
    assert not cfg.iptables and not cfg.ip_masq  # masquerading needs iptables, as in dockerd
    # A ulimit's Name may be left to its key; null leaves a key at its default, as Go's json.
    cfg = load(tmp_path, {"default-ulimits": {"nproc": {"Soft": 5, "Hard": 6}}, "debug": None})
    assert cfg.default_ulimits["nproc"] == config.Ulimit(name="nproc", soft=5, hard=6)
    assert not cfg.debug
    # Empty or whitespace files are no configuration; a UTF-8 or UTF-16 BOM is accepted.
    assert load(tmp_path, " \n") == config.DaemonConfig()
    path = tmp_path / "daemon.json"
    path.write_bytes(codecs.BOM_UTF8 + b'{"debug": true}')
    assert config.load(config.parse_args(["--config-file", str(path)])).debug
    path.write_bytes('{"debug": true}'.encode("utf-16"))
    assert config.load(config.parse_args(["--config-file", str(path)])).debug


def test_flags_and_file_merge(tmp_path: Path) -> None:
    cfg = load(tmp_path, {"labels": ["a=b"]}, "-D", "--default-ulimit", "nproc=10:20")
    assert cfg.debug and cfg.labels == ("a=b",)
    assert cfg.default_ulimits == {"nproc": config.Ulimit(name="nproc", soft=10, hard=20)}


def test_conflicts_name_every_key(tmp_path: Path) -> None:
    message = error(
        tmp_path,
        {
            "debug": False, "labels": ["a=b", "x=y"], "max-concurrent-downloads": 1000000,
            "default-ulimits": {"nofile": {"Name": "nofile", "Soft": 1, "Hard": 2}},
            "hosts": ["unix:///a.sock"],
        },
        "--debug", "--label", "c=d", "--max-concurrent-downloads", "4",
        "--default-ulimit", "nproc=10", "-H", "fd://",
    )  # fmt: skip
    assert message == (
        f"unable to configure the Docker daemon with file {tmp_path / 'daemon.json'}: "
        "the following directives are specified both as a flag and in the configuration file: "
        "debug: (from flag: true, from file: false), "
        "default-ulimits: (from flag: [nproc=10:10], "
        "from file: map[nofile:map[Hard:2 Name:nofile Soft:1]]), "
        "hosts: (from flag: [fd://], from file: [unix:///a.sock]), "
        "labels: (from flag: [c=d], from file: [a=b x=y]), "
        "max-concurrent-downloads: (from flag: 4, from file: 1e+06)"
    )


def test_unknown_keys_and_types(tmp_path: Path) -> None:
    assert error(tmp_path, {"foo": 1, "bar": 2, "debug": True}).endswith(
        "the following directives don't match any configuration option: bar, foo"
    )
    # Flag names are not keys: the file says "labels", not "label".
    assert "don't match any configuration option: label" in error(tmp_path, {"label": ["a=b"]})
    for key, value in [
        ("max-concurrent-downloads", "three"), ("debug", "yes"), ("labels", "a=b"),
        ("hosts", [1]), ("mtu", 1.5), ("default-ulimits", {"nofile": {"Soft": "x"}}),
    ]:  # fmt: skip
        assert f"invalid value for {key}:" in error(tmp_path, {key: value})


def test_missing_and_broken_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(config.ConfigError) as info:
        config.load(config.parse_args(["--config-file", str(missing)]))
    assert str(info.value) == (
        f"unable to configure the Docker daemon with file {missing}: "
        f"open {missing}: no such file or directory"
    )
    assert "invalid JSON:" in error(tmp_path, '{"debug": ')
    assert "invalid JSON:" in error(tmp_path, '["debug"]')
    path = tmp_path / "daemon.json"
    path.write_bytes(b'{"labels": ["\xff"]}')
    with pytest.raises(
        config.ConfigError, match="failed to decode configuration JSON at offset 13"
    ):
        config.load(config.parse_args(["--config-file", str(path)]))


def test_bool_flag_forms() -> None:
    flags = config.parse_args(
        ["--iptables=false", "--ip-masq=0", "-D=true", "--tls", "--live-restore=T"]
    )
    assert flags.flags == {
        "iptables": False, "ip-masq": False, "debug": True, "tls": True, "live-restore": True,
    }  # fmt: skip
    assert config.parse_args(["--userland-proxy=False"]).flags == {"userland-proxy": False}
    assert config.parse_args(["--version"]).version and config.parse_args(["--validate"]).validate
    # As with Go's flag package, a bool flag never takes the next word as its value.
    with pytest.raises(config.ConfigError, match="unrecognized arguments: false"):
        config.parse_args(["--debug", "false"])
    with pytest.raises(config.ConfigError, match='parsing "maybe": invalid syntax'):
        config.parse_args(["--iptables=maybe"])
    with pytest.raises(config.ConfigError, match='parsing "tRuE"'):
        config.parse_args(["--debug=tRuE"])
    with pytest.raises(config.ConfigError):
        config.parse_args(["--data", "/x"])  # no abbreviations, as pflag
    with pytest.raises(config.ConfigError, match='parsing "x": invalid syntax'):
        config.parse_args(["--mtu", "x"])


def test_repeatable_flags(tmp_path: Path) -> None:
    options = config.parse_args(
        ["-H", "unix:///a.sock", "--host", "tcp://127.0.0.1:2375", "--label", "a=b",
         "--label=c=d", "--insecure-registry", "r1:5000", "--insecure-registry", "r2",
         "--registry-mirror", "http://m1", "--authorization-plugin", "p1",
         "--authorization-plugin", "p2", "--default-ulimit", "nofile=1:2",
         "--default-ulimit", "nproc=3", "--default-ulimit", "nofile=5:6"]
    )  # fmt: skip
    cfg = config.load(options)
    assert cfg.hosts == ("tcp://127.0.0.1:2375", "unix:///a.sock")
    assert cfg.labels == ("a=b", "c=d") and cfg.insecure_registries == ("r1:5000", "r2")
    assert cfg.registry_mirrors == ("http://m1",) and cfg.authorization_plugins == ("p1", "p2")
    assert cfg.default_ulimits == {
        "nofile": config.Ulimit(name="nofile", soft=5, hard=6),
        "nproc": config.Ulimit(name="nproc", soft=3, hard=3),
    }


def test_hosts(tmp_path: Path) -> None:
    parse = config.parse_host
    assert parse("tcp://") == "tcp://localhost:2375"
    assert parse("tcp://0.0.0.0") == "tcp://0.0.0.0:2375"
    assert parse("tcp://:2376") == "tcp://localhost:2376"
    assert parse("127.0.0.1:8080") == "tcp://127.0.0.1:8080"
    assert parse("tcp://[::1]:2375") == "tcp://[::1]:2375"
    assert parse("unix://") == "unix:///var/run/pydockerd.sock"
    assert parse("unix:///tmp/d.sock") == "unix:///tmp/d.sock"
    assert parse("fd://") == "fd://" and parse("fd://3") == "fd://3"
    for bad, reason in [
        ("bogus://x", "unsupported proto 'bogus'"), ("tcp://h:port", "invalid port: port"),
        ("tcp://h:0", "invalid port: 0"), ("/a/path", "should not contain a path element"),
        ("tcp://h:1/p", "should not contain a path element"),
        ("unix://tcp://x", "invalid unix address: tcp://x"),
    ]:  # fmt: skip
        with pytest.raises(config.ConfigError, match=f"invalid bind address .*{reason}"):
            parse(bad)
    # Empty hosts fall back to the default; the list is sorted and deduplicated (dockerd).
    assert load(tmp_path, None, "-H", "").hosts == ("unix:///var/run/pydockerd.sock",)
    hosts = load(tmp_path, {"hosts": ["unix://", "unix:///var/run/pydockerd.sock", "fd://"]}).hosts
    assert hosts == ("fd://", "unix:///var/run/pydockerd.sock")
    with pytest.raises(config.ConfigError, match="unsupported proto"):
        load(tmp_path, None, "-H", "bogus://x")


def test_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CERT_PATH", "/certs")
    # --tlsverify implies --tls; with no host, TLS listens on tcp://localhost:2376.
    cfg = load(tmp_path, {"tlsverify": True})
    assert cfg.tls and cfg.tlsverify and cfg.hosts == ("tcp://localhost:2376",)
    assert (cfg.tlscacert, cfg.tlscert, cfg.tlskey) == (
        "/certs/ca.pem", "/certs/cert.pem", "/certs/key.pem",
    )  # fmt: skip
    # --tls implies verification unless --tlsverify=false was given; set at all, it means TLS.
    assert load(tmp_path, None, "--tls", "-H", "unix://").tlsverify
    cfg = load(tmp_path, None, "--tlsverify=false", "-H", "unix://", "--tlscert", "/c.pem")
    assert cfg.tls and not cfg.tlsverify and cfg.tlscert == "/c.pem"
    assert cfg.tlskey == "/certs/key.pem"
    # Without TLS no certificate paths are made up.
    plain = load(tmp_path, None)
    assert not plain.tls and not plain.tlsverify and plain.tlscert == ""
    monkeypatch.delenv("DOCKER_CERT_PATH")
    monkeypatch.setenv("DOCKER_CONFIG", "/conf")
    assert load(tmp_path, None, "--tls").tlscacert == "/conf/ca.pem"


def test_validation(tmp_path: Path) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"log-level": "loud"}, "invalid logging level: loud"),
        ({"log-format": "xml"}, "invalid log format: xml"),
        ({"max-concurrent-downloads": -1}, "invalid max concurrent downloads: -1"),
        ({"max-concurrent-uploads": -2}, "invalid max concurrent uploads: -2"),
        ({"mtu": -1}, "invalid default MTU: -1"),
        ({"shutdown-timeout": -1}, "invalid shutdown timeout: -1"),
        ({"labels": ["nolabel"]}, "bad attribute format: nolabel"),
        ({"labels": ["com.docker.x=1"]}, "label com.docker.x=1 is not allowed"),
        ({"labels": ["a=1", "a=2"]}, "conflict labels for a=2 and a=1"),
        ({"registry-mirrors": ["mirror:5000"]}, "invalid mirror: no scheme specified"),
        ({"registry-mirrors": ["ftp://m"]}, "invalid mirror: unsupported scheme 'ftp'"),
        ({"insecure-registries": ["-r"]}, "invalid index name (-r)"),
        ({"bip": "10.0.0.1"}, "parse bip failed"),
        ({"bip": "10.0.0.300/24"}, "parse bip failed"),
        ({"default-ulimits": {"bogus": {"Soft": 1, "Hard": 1}}}, "invalid ulimit type: bogus"),
        ({"default-ulimits": {"nofile": {"Soft": 2, "Hard": 1}}}, "soft limit must be less"),
    ]
    for file, reason in cases:
        message = error(tmp_path, file)
        assert "merged configuration validation from file and command line flags failed" in message
        assert reason in message, (file, message)
    # With no file, dockerd's bare text.
    with pytest.raises(config.ConfigError) as info:
        config.load(config.Options(flags={"log-level": "loud"}, config_file=str(tmp_path / "none")))
    assert str(info.value) == "invalid logging level: loud"
    assert load(tmp_path, {"log-level": "DEBUG"}).log_level == "debug"
    assert load(tmp_path, {"labels": ["a=1", "a=1", "=x"]}).labels == ("a=1", "=x")
    for flag, reason in [
        ("nofile", "invalid ulimit argument: nofile"), ("nofile=1:2:3", "too many limit value"),
        ("nofile=-1:5", "soft: -1 (unlimited), hard: 5"), ("nofile=x", 'parsing "x"'),
    ]:  # fmt: skip
        with pytest.raises(config.ConfigError, match=re.escape(reason)):
            config.parse_args(["--default-ulimit", flag])
    assert load(tmp_path, None, "--default-ulimit", "core=-1").default_ulimits["core"].hard == -1


def test_reload_diff_keeps_flags(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    write(path, {"labels": ["a=b"], "mtu": 1400, "max-concurrent-uploads": 2})
    options = config.parse_args(["--config-file", str(path), "--debug", "-H", "unix:///a.sock"])
    current = config.load(options)
    write(path, {"labels": ["a=c"], "mtu": 1500, "bip": "10.99.0.1/24", "live-restore": True})
    new, diff = config.reload(current, options)
    assert diff.changed == {"labels", "mtu", "bip", "live-restore", "max-concurrent-uploads"}
    assert diff.live == {"labels", "live-restore", "max-concurrent-uploads"}
    assert diff.restart == {"mtu", "bip"}
    # Flags hold; reloadable keys follow the file; the rest keep their running value.
    assert new.debug and new.hosts == ("unix:///a.sock",)
    assert new.labels == ("a=c",) and new.live_restore and new.max_concurrent_uploads == 5
    assert new.mtu == 1400 and new.bip == ""
    # Nothing changed: an empty diff.
    again, diff = config.reload(new, options)
    assert diff.live == set() and diff.restart == {"mtu", "bip"} and again == new
    # A broken file, or one that now repeats a flag, is refused: the caller keeps `current`.
    write(path, '{"labels": [')
    with pytest.raises(config.ConfigError, match="invalid JSON"):
        config.reload(current, options)
    write(path, {"debug": False})
    with pytest.raises(config.ConfigError, match="specified both as a flag"):
        config.reload(current, options)
    write(path, {"max-concurrent-downloads": -1})
    with pytest.raises(config.ConfigError, match="invalid max concurrent downloads"):
        config.reload(current, options)


def test_reload_tls_is_live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CERT_PATH", "/certs")
    path = tmp_path / "daemon.json"
    write(path, {"iptables": False})
    options = config.parse_args(["--config-file", str(path)])
    current = config.load(options)
    # TLS and hosts are listener settings: they change live, the default host with them.
    write(path, {"tlsverify": True, "iptables": True})
    new, diff = config.reload(current, options)
    assert {"tls", "tlsverify", "hosts", "tlscacert", "tlscert", "tlskey"} <= diff.live
    assert diff.restart == {"iptables", "ip-masq"}
    assert new.tls and new.tlsverify and new.hosts == ("tcp://localhost:2376",)
    assert new.tlscert == "/certs/cert.pem" and not new.iptables and not new.ip_masq


def test_shipped_files() -> None:
    example = CONFIG_DIR / "daemon.json.example"
    cfg = config.load(config.parse_args(["--config-file", str(example)]))
    assert cfg.live_restore
    service = (CONFIG_DIR / "pydockerd.service").read_text()
    for line in (
        "Type=notify", "ExecStart=/usr/local/bin/pydockerd -H fd://",
        "ExecReload=/bin/kill -s HUP $MAINPID",
    ):  # fmt: skip
        assert line in service.splitlines()
    socket = (CONFIG_DIR / "pydockerd.socket").read_text().splitlines()
    for line in ("ListenStream=/run/pydockerd.sock", "SocketMode=0660", "SocketGroup=docker"):
        assert line in socket


def test_reload_table_in_docs_matches_the_code() -> None:
    """docs/config.md lists every key once, marked live exactly when it reloads live."""
    from config.load import RELOADABLE
    from config.model import ATTRS

    table = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text()
    documented: dict[str, str] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[2] in ("live", "restart"):
            for key in re.findall(r"`([a-z-]+)`", cells[0]):
                documented[key] = cells[2]
    assert sorted(documented) == sorted(ATTRS)
    assert {k for k, how in documented.items() if how == "live"} == set(RELOADABLE)


def test_log_opts_and_journal_size_flags(tmp_path: Path) -> None:
    (tmp_path / "none.json").write_text("{}")
    options = config.parse_args(
        ["--log-driver", "local", "--log-opt", "max-size=1m", "--log-opt", "max-file=2",
         "--events-journal-size", "50", "--config-file", str(tmp_path / "none.json")]
    )  # fmt: skip
    cfg = config.load(options)
    assert (cfg.log_driver, cfg.log_opts, cfg.events_journal_size) == (
        "local",
        {"max-size": "1m", "max-file": "2"},
        50,
    )
    with pytest.raises(config.ConfigError, match="invalid key value pair"):
        config.parse_args(["--log-opt", "nokey"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"events-journal-size": 0}')
    with pytest.raises(config.ConfigError, match="invalid events journal size: 0"):
        config.load(config.parse_args(["--config-file", str(bad)]))
