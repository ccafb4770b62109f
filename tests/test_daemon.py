"""The daemon process end to end: docker CLI and docker-py against a real pydockerd."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, free_port, run_pydockerd, running_daemon, short_tempdir


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    with running_daemon(config={"labels": ["stage=one"]}) as d:
        yield d


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_docker_version_and_info(daemon: Daemon) -> None:
    version = daemon.docker("version")
    assert "Server: pydockerd" in version.stdout
    assert "API version:      1.47" in version.stdout
    server = json.loads(daemon.docker("version", "--format", "{{json .Server}}").stdout)
    assert server["ApiVersion"] == "1.47"
    assert server["Os"] == "linux"

    info = daemon.docker("info")
    assert "Server Version: 0.1.0" in info.stdout
    assert "stage=one" in info.stdout
    assert "ERROR" not in info.stderr and "errors pretty printing" not in info.stdout
    assert json.loads(daemon.docker("info", "--format", "{{json .Labels}}").stdout) == ["stage=one"]


def test_docker_py_ping_version_info(daemon: Daemon) -> None:
    client = daemon.client()
    try:
        assert client.ping() is True
        assert client.version()["ApiVersion"] == "1.47"
        info = client.info()
        assert info["Labels"] == ["stage=one"]
        assert info["DockerRootDir"] == str(daemon.data_root)
    finally:
        client.close()


def test_ping_headers_and_versions(daemon: Daemon) -> None:
    from tests.daemon import unix_request

    head = unix_request(str(daemon.sock), b"HEAD /_ping HTTP/1.0\r\n\r\n").decode()
    assert head.startswith("HTTP/1.1 200")
    for header in ("Api-Version: 1.47", "Ostype: linux", "Docker-Experimental: false"):
        assert header.lower() in head.lower()
    assert "cache-control: no-cache, no-store, must-revalidate" in head.lower()

    old = unix_request(str(daemon.sock), b"GET /v1.12/version HTTP/1.0\r\n\r\n").decode()
    assert old.startswith("HTTP/1.1 400")
    assert (
        "client version 1.12 is too old. Minimum supported API version is 1.24, "
        "please upgrade your client to a newer version" in old
    )
    new = unix_request(str(daemon.sock), b"GET /v1.99/version HTTP/1.0\r\n\r\n").decode()
    assert new.startswith("HTTP/1.1 400")
    too_new = "client version 1.99 is too new. Maximum supported API version is 1.47"
    assert json.loads(new.split("\r\n\r\n", 1)[1]) == {"message": too_new}

    missing = unix_request(str(daemon.sock), b"GET /v1.40/nothing/here HTTP/1.0\r\n\r\n").decode()
    assert missing.startswith("HTTP/1.1 404")
    assert '"message":"page not found"' in missing
    assert "api-version: 1.47" in missing.lower()  # common headers on errors too


def test_sighup_reload_keeps_event_stream(daemon: Daemon) -> None:
    client = daemon.client()
    events = client.events(decode=True, filters={"type": "daemon"})
    try:
        daemon.write_config(
            {"labels": ["stage=two"], "debug": True, "api-cors-header": "https://example.test"}
        )
        daemon.signal(signal.SIGHUP)
        event = next(events)
        assert event["Type"] == "daemon" and event["Action"] == "reload"
        assert "debug" in event["Actor"]["Attributes"]["applied"]
        info = client.info()
        assert info["Labels"] == ["stage=two"]
        assert info["Debug"] is True
        response = client.api.get(client.api._url("/info"))
        assert response.headers["Access-Control-Allow-Origin"] == "https://example.test"
        # The same stream still delivers: a second reload arrives on it.
        daemon.write_config({"labels": ["stage=three"]})
        daemon.signal(signal.SIGHUP)
        assert next(events)["Action"] == "reload"
        assert client.info()["Labels"] == ["stage=three"]
        assert "Access-Control-Allow-Origin" not in client.api.get(client.api._url("/info")).headers
    finally:
        events.close()
        client.close()


def test_sighup_with_broken_config_changes_nothing(daemon: Daemon) -> None:
    daemon.write_config('{"labels": ["stage=broken"], ')
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "Error reloading configuration" in daemon.log())
    assert daemon.docker("info", "--format", "{{json .Labels}}").stdout.strip() == '["stage=one"]'
    daemon.write_config({"no-such-key": 1})
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.log().count("Error reloading configuration") == 2)
    assert daemon.docker("version", "--format", "{{.Server.APIVersion}}").stdout.strip() == "1.47"


def test_events_since_until_and_filters(daemon: Daemon) -> None:
    wait_for(lambda: "Daemon has completed initialization" in daemon.log())  # its start event
    start = time.time()
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "Reloaded configuration" in daemon.log())
    until = str(int(time.time()) + 1)  # whole seconds: round up past the reload
    out = daemon.docker(
        "events",
        "--since",
        f"{start:.6f}",
        "--until",
        until,
        "--format",
        "{{.Type}} {{.Action}}",
    ).stdout.splitlines()
    assert out == ["daemon reload"]
    none = daemon.docker(
        "events", "--since", f"{start:.6f}", "--until", until, "--filter", "type=container"
    )
    assert none.stdout == ""
    bad = daemon.docker("events", "--filter", "bogus=1", "--until", until, check=False)
    assert bad.returncode != 0 and "invalid filter 'bogus'" in bad.stderr


def test_events_journal_size_is_reloadable_and_durable() -> None:
    with running_daemon(config={"events-journal-size": 5}) as d:

        def journal() -> list[str]:
            until = str(int(time.time()) + 1)
            out = d.docker("events", "--since", "0", "--until", until, "--format", "{{.Action}}")
            return out.stdout.split()

        for n in range(1, 7):
            d.signal(signal.SIGHUP)
            wait_for(lambda n=n: d.log().count("Reloaded configuration") == n)  # type: ignore[misc]
        assert journal() == ["reload"] * 5  # the start event fell out
        d.write_config({"events-journal-size": 2})
        d.signal(signal.SIGHUP)
        wait_for(lambda: "applied live: events-journal-size" in d.log())
        assert journal() == ["reload", "reload"]
        d.stop()
        d.start()
        assert journal() == ["shutdown", "start"]


def test_sigusr1_dumps_actor_tree(daemon: Daemon) -> None:
    daemon.signal(signal.SIGUSR1)
    wait_for(lambda: list(daemon.exec_root.glob("pydockerd-dump-*.log")))
    dump = next(daemon.exec_root.glob("pydockerd-dump-*.log")).read_text()
    assert "actor api: state=running restarts=0" in dump
    assert "actor signals: state=running" in dump
    assert "task " in dump


def test_graceful_stop_removes_pidfile_and_socket(daemon: Daemon) -> None:
    assert daemon.pidfile.read_text().strip() == str(daemon.proc.pid if daemon.proc else "")
    assert oct(daemon.sock.stat().st_mode & 0o777) == "0o660"
    assert daemon.stop() == 0
    assert not daemon.pidfile.exists()
    assert not daemon.sock.exists()
    assert "Daemon shutdown complete" in daemon.log()


def test_sd_notify_protocol() -> None:
    root = short_tempdir()
    notify_path = root / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(20)
        d = Daemon(root, [], {})
        try:
            d.start(env={"NOTIFY_SOCKET": str(notify_path)})
            assert notify.recv(100) == b"READY=1"
            d.signal(signal.SIGHUP)
            assert notify.recv(100) == b"RELOADING=1"
            assert notify.recv(100) == b"READY=1"
            d.signal(signal.SIGTERM)
            assert notify.recv(100) == b"STOPPING=1"
            assert d.stop() == 0
        finally:
            d.stop()


def test_conflicting_flag_and_file_key() -> None:
    root = short_tempdir()
    (root / "daemon.json").write_text(json.dumps({"debug": False, "labels": ["a=b"]}))
    result = run_pydockerd(
        "--config-file", str(root / "daemon.json"), "--debug", "--label", "c=d", "--validate"
    )
    assert result.returncode == 1
    assert (
        "the following directives are specified both as a flag and in the configuration file"
        in (result.stderr)
    )
    assert "debug" in result.stderr and "labels" in result.stderr


def test_validate_and_version_flags() -> None:
    root = short_tempdir()
    (root / "daemon.json").write_text(json.dumps({"debug": True}))
    ok = run_pydockerd("--config-file", str(root / "daemon.json"), "--validate")
    assert ok.returncode == 0 and "configuration OK" in ok.stdout
    (root / "daemon.json").write_text(json.dumps({"max-concurrent-downloads": -1}))
    bad = run_pydockerd("--config-file", str(root / "daemon.json"), "--validate")
    assert bad.returncode == 1 and "max concurrent downloads" in bad.stderr
    assert run_pydockerd("--version").stdout.startswith("pydockerd version ")
    example = Path(__file__).parent.parent / "config" / "daemon.json.example"
    assert run_pydockerd("--config-file", str(example), "--validate").returncode == 0


def test_event_stream_ends_at_shutdown(daemon: Daemon) -> None:
    client = daemon.client()
    try:
        events = client.events(decode=True)
        daemon.signal(signal.SIGTERM)
        assert next(events)["Action"] == "shutdown"
        assert daemon.proc is not None and daemon.proc.wait(10) == 0
    finally:
        client.close()


def test_systemd_socket_activation() -> None:
    """fd:// serves a socket passed as fd 3 with LISTEN_FDS/LISTEN_PID, as systemd does."""
    root = short_tempdir()
    d = Daemon(root, ["-H", "fd://"], {})
    d.write_config({})
    launcher = (
        "import os, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"s.bind({str(d.sock)!r}); s.listen(8)\n"
        "os.dup2(s.fileno(), 3); os.set_inheritable(3, True)\n"
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
        "os.execv(sys.executable, [sys.executable] + sys.argv[1:])\n"
    )
    d.command_prefix = ["-c", launcher]
    try:
        d.start()
        assert d.docker("version", "--format", "{{.Server.APIVersion}}").stdout.strip() == "1.47"
    finally:
        d.stop()


def test_second_daemon_refused(daemon: Daemon) -> None:
    other = Daemon(short_tempdir(), [], {})
    other.pidfile = daemon.pidfile
    same_pidfile = other.run_to_exit()
    assert same_pidfile.returncode == 1
    assert "pid file found" in same_pidfile.stderr

    other = Daemon(short_tempdir(), ["-H", daemon.host], {})
    same_socket = other.run_to_exit()
    assert same_socket.returncode == 1
    assert "another daemon is serving on it" in same_socket.stderr
    # The first daemon never noticed.
    assert daemon.docker("version", "--format", "{{.Server.Version}}").stdout.strip() == "0.1.0"


def test_stale_socket_is_replaced() -> None:
    root = short_tempdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(root / "d.sock"))
    stale.close()  # a socket file nobody listens on, as a killed daemon leaves
    with running_daemon(root=root) as d:
        assert d.docker("version", "--format", "{{.Server.APIVersion}}").stdout.strip() == "1.47"


def test_tls_verify(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("client")
    files = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "cert.pem",
        "key": tmp_path / "key.pem",
        "scert": tmp_path / "server-cert.pem",
        "skey": tmp_path / "server-key.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    client_cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client_cert.private_key_pem.write_to_path(str(files["key"]))
    server_cert.cert_chain_pems[0].write_to_path(str(files["scert"]))
    server_cert.private_key_pem.write_to_path(str(files["skey"]))
    port = free_port()
    root = short_tempdir()
    tcp = f"tcp://127.0.0.1:{port}"
    args = [
        "-H", f"unix://{root}/d.sock", "-H", tcp, "--tlsverify",
        "--tlscacert", str(files["ca"]), "--tlscert", str(files["scert"]),
        "--tlskey", str(files["skey"]),
    ]  # fmt: skip
    with running_daemon(*args, root=root) as d:
        ok = d.docker(
            "-H", tcp, "--tlsverify", "--tlscacert", str(files["ca"]),
            "--tlscert", str(files["cert"]), "--tlskey", str(files["key"]),
            "version", "--format", "{{.Server.APIVersion}}",
        )  # fmt: skip
        assert ok.stdout.strip() == "1.47"
        # No client certificate: the handshake is refused.
        context = ssl.create_default_context(cafile=str(files["ca"]))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                    if not tls.recv(100):
                        raise ConnectionResetError("closed without answer")
        refused = d.docker(
            "-H", tcp, "--tls", "--tlscacert", str(files["ca"]), "version", check=False
        )  # fmt: skip
        assert refused.returncode != 0


def test_unknown_flag_and_bad_host() -> None:
    result = run_pydockerd("--no-such-flag")
    assert result.returncode != 0
    result = run_pydockerd("-H", "bogus://x", "--validate")
    assert result.returncode == 1


def test_debug_actors_follows_reload(daemon: Daemon) -> None:
    from tests.daemon import unix_request

    def debug_actors() -> str:
        return unix_request(str(daemon.sock), b"GET /debug/actors HTTP/1.0\r\n\r\n").decode()

    assert debug_actors().startswith("HTTP/1.1 404")
    daemon.write_config({"labels": ["stage=one"], "debug": True})
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: debug_actors().startswith("HTTP/1.1 200"))
    tree = json.loads(debug_actors().split("\r\n\r\n", 1)[1])
    api = next(a for a in tree if a["id"] == "api")
    assert (api["state"], api["restarts"], api["last_error"]) == ("running", 0, None)
    assert [child["id"] for child in tree][:3] == ["signals", "events", "api"]


def test_reload_adds_a_tcp_host_and_refuses_bad_tls() -> None:
    root = short_tempdir()
    unix = f"unix://{root}/d.sock"
    port = free_port()
    tcp = f"tcp://127.0.0.1:{port}"
    with running_daemon(config={"hosts": [unix]}, root=root) as d:
        client = d.client()
        events = client.events(decode=True, filters={"type": "daemon"})
        try:
            d.write_config({"hosts": [unix, tcp]})
            d.signal(signal.SIGHUP)
            assert next(events)["Action"] == "reload"  # the unix stream stayed open
            over_tcp = d.docker("-H", tcp, "version", "--format", "{{.Server.APIVersion}}")
            assert over_tcp.stdout.strip() == "1.47"
            d.write_config({"hosts": [unix, tcp], "tlsverify": True, "tlscacert": "/nonexistent",
                            "tlscert": "/nonexistent", "tlskey": "/nonexistent"})  # fmt: skip
            d.signal(signal.SIGHUP)
            wait_for(lambda: "could not load TLS certificates" in d.log())
            assert d.docker("-H", tcp, "version").returncode == 0  # still plain TCP
            d.write_config({"hosts": [unix]})
            d.signal(signal.SIGHUP)
            assert next(events)["Action"] == "reload"
            assert d.docker("-H", tcp, "version", check=False, timeout=10).returncode != 0
        finally:
            events.close()
            client.close()


def test_events_survive_a_restart() -> None:
    with running_daemon() as d:
        since = str(int(time.time()) - 1)
        d.signal(signal.SIGHUP)
        wait_for(lambda: "Reloaded configuration" in d.log())
        assert d.stop() == 0
        d.start()
        wait_for(lambda: d.log().count("Daemon has completed initialization") == 2)
        until = str(int(time.time()) + 1)
        listing = ["events", "--since", since, "--until", until, "--filter", "type=daemon"]
        actions = d.docker(*listing, "--format", "{{.Action}}").stdout.split()
        assert actions == ["start", "reload", "shutdown", "start"]
