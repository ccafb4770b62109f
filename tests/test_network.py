"""Container networking end to end: bridge networks, names, published ports, modes,
restarts, and what is left behind (nothing). Real docker CLI, real kernel objects."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, free_port, free_subnet, running_daemon
from tests.fixtures.busybox import busybox_archive

HTTPD = "mkdir -p /www && echo hello-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"
# A UDP echo server: the host's python, bind-mounted read-only (busybox has no UDP server).
HOST_PYTHON = ["-v", "/usr:/usr:ro", "-v", "/lib:/lib:ro", "-v", "/lib64:/lib64:ro"]
UDP_ECHO = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('0.0.0.0', 9999))\n"
    "while True:\n"
    "    data, peer = s.recvfrom(65535)\n"
    "    s.sendto(b'echo:' + data, peer)\n"
)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_archive(tmp_path_factory.mktemp("fixtures") / "busybox.tar")


@pytest.fixture(scope="module")
def daemon(archive: Path) -> Iterator[Daemon]:
    with running_daemon() as d:
        d.docker("load", "-i", str(archive))
        yield d


def inspect(d: Daemon, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(d.docker("inspect", name).stdout)[0]
    return data


def fetch(url: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def cleanup(d: Daemon, containers: list[str], networks: list[str] = []) -> None:  # noqa: B006
    if containers:
        d.docker("rm", "-f", *containers, check=False)
    for network in networks:
        d.docker("network", "rm", network, check=False)


def test_user_network_names_aliases_and_http(daemon: Daemon) -> None:
    subnet = str(free_subnet())
    try:
        daemon.docker("network", "create", "--subnet", subnet, "--label", "t=1", "appnet")
        daemon.docker("run", "-d", "--name", "srv", "--network", "appnet",
                      "--network-alias", "web", "busybox", "sh", "-c", HTTPD)  # fmt: skip
        daemon.docker("run", "-d", "--name", "cli", "--network", "appnet",
                      "busybox", "sleep", "300")  # fmt: skip
        assert daemon.docker("exec", "cli", "ping", "-c1", "-W2", "srv").returncode == 0
        for name in ("srv", "web"):
            page = daemon.docker("exec", "cli", "timeout", "10", "wget", "-qO-",
                                 f"http://{name}:8080/")  # fmt: skip
            assert page.stdout.startswith("hello-")
        srv = inspect(daemon, "srv")
        endpoint = srv["NetworkSettings"]["Networks"]["appnet"]
        assert endpoint["IPAddress"].rsplit(".", 1)[0] == subnet.rsplit(".", 1)[0]
        assert endpoint["Aliases"] == ["web"]
        assert {"srv", "web", srv["Id"][:12]} <= set(endpoint["DNSNames"])
        daemon.docker("rename", "srv", "server")  # DNS follows a rename
        assert daemon.docker("exec", "cli", "ping", "-c1", "-W2", "server").returncode == 0
        daemon.docker("rename", "server", "srv")
        short_id = daemon.docker("exec", "cli", "nslookup", srv["Id"][:12])
        assert endpoint["IPAddress"] in short_id.stdout
        resolv = daemon.docker("exec", "cli", "cat", "/etc/resolv.conf").stdout
        assert resolv.startswith("nameserver 127.0.0.11\n")
        network = json.loads(daemon.docker("network", "inspect", "appnet").stdout)[0]
        assert network["IPAM"]["Config"][0]["Subnet"] == subnet
        assert network["Labels"] == {"t": "1"}
        assert {c["Name"] for c in network["Containers"].values()} == {"srv", "cli"}
        # A name that is not ours is forwarded (here to --dns, a silent address): a failed
        # forward answers SERVFAIL quickly, never hangs.
        daemon.docker("run", "-d", "--name", "lost", "--network", "appnet",
                      "--dns", "192.0.2.254", "busybox", "sleep", "300")  # fmt: skip
        assert (
            "ExtServers: [host(192.0.2.254)]"
            in daemon.docker("exec", "lost", "cat", "/etc/resolv.conf").stdout
        )
        key = inspect(daemon, "lost")["NetworkSettings"]["SandboxKey"]
        start = time.monotonic()
        reply = bytes.fromhex(dns_in(key, "UDP", "example.com"))
        assert time.monotonic() - start < 5
        assert reply[3] & 0x0F == 2  # SERVFAIL
        answer = bytes.fromhex(dns_in(key, "UDP", "srv"))
        assert socket.inet_ntoa(answer[-4:]) == endpoint["IPAddress"]
    finally:
        cleanup(daemon, ["srv", "cli", "lost"], ["appnet"])


def test_published_tcp_and_udp_ports(daemon: Daemon) -> None:
    try:
        daemon.docker("run", "-d", "--name", "pub", "-p", "127.0.0.1:0:8080",
                      "busybox", "sh", "-c", HTTPD)  # fmt: skip
        port = daemon.docker("port", "pub", "8080").stdout.strip()
        assert port.startswith("127.0.0.1:")
        assert fetch(f"http://{port}/").startswith("hello-")
        ports = inspect(daemon, "pub")["NetworkSettings"]["Ports"]
        assert ports["8080/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": port.split(":")[1]}]
        assert "->8080/tcp" in daemon.docker("ps", "--format", "{{.Ports}}").stdout
        host_port = port.split(":")[1]

        def ps_names(*filters: str) -> list[str]:
            return daemon.docker("ps", "--format", "{{.Names}}", *filters).stdout.split()

        assert ps_names("--filter", f"publish={host_port}") == ["pub"]
        assert ps_names("--filter", "expose=8000-8090/tcp") == ["pub"]
        assert ps_names("--filter", "publish=8080") == []
        assert ps_names("--filter", "expose=8080/udp") == []
        daemon.docker("run", "-d", "--name", "udp", "-p", "127.0.0.1:0:9999/udp", *HOST_PYTHON,
                      "busybox", "/usr/bin/python3", "-c", UDP_ECHO)  # fmt: skip
        udp_port = int(daemon.docker("port", "udp", "9999/udp").stdout.strip().split(":")[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.5)
            reply = b""
            deadline = time.monotonic() + 15
            while not reply and time.monotonic() < deadline:
                sock.sendto(b"ping", ("127.0.0.1", udp_port))
                try:
                    reply = sock.recv(100)
                except TimeoutError:
                    continue
        assert reply == b"echo:ping"
        daemon.docker("stop", "-t", "1", "pub")
        with pytest.raises(OSError):  # the proxy closes with the container
            urllib.request.urlopen(f"http://{port}/", timeout=2)
        fixed = free_port()  # a fixed host port is free again at once for a restart
        daemon.docker("run", "-d", "--name", "fixed", "-p", f"127.0.0.1:{fixed}:8080",
                      "busybox", "sh", "-c", HTTPD)  # fmt: skip
        for _ in range(3):
            daemon.docker("restart", "-t", "0", "fixed")
            assert fetch(f"http://127.0.0.1:{fixed}/").startswith("hello-")
    finally:
        cleanup(daemon, ["pub", "udp", "fixed"])


def test_publish_all_and_port_conflict(daemon: Daemon) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        daemon.docker("run", "-d", "--name", "all", "--expose", "8080", "-P",
                      "busybox", "sh", "-c", HTTPD)  # fmt: skip
        bound = daemon.docker("port", "all").stdout.strip()
        assert bound.startswith("8080/tcp -> 0.0.0.0:")
        assert fetch(f"http://127.0.0.1:{bound.rsplit(':', 1)[1]}/").startswith("hello-")
        busy = taken.getsockname()[1]
        clash = daemon.docker("run", "-d", "--name", "clash", "-p", f"127.0.0.1:{busy}:80",
                              "busybox", "sleep", "300", check=False)  # fmt: skip
        assert clash.returncode == 125
        assert "driver failed programming external connectivity on endpoint clash" in clash.stderr
        assert f"listen tcp4 127.0.0.1:{busy}: bind: address already in use" in clash.stderr
        assert not inspect(daemon, "clash")["State"]["Running"]
        daemon.docker("run", "-d", "--name", "ranged", "-p", f"127.0.0.1:{busy}-{busy + 20}:8080",
                      "busybox", "sh", "-c", HTTPD)  # fmt: skip
        host_port = int(daemon.docker("port", "ranged", "8080").stdout.strip().split(":")[1])
        assert busy < host_port <= busy + 20  # the taken one is skipped
        assert fetch(f"http://127.0.0.1:{host_port}/").startswith("hello-")
        assert not list((daemon.exec_root / "netns").glob(inspect(daemon, "clash")["Id"]))
    finally:
        taken.close()
        cleanup(daemon, ["all", "clash", "ranged"])


def test_network_modes(daemon: Daemon) -> None:
    try:
        none = daemon.docker("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link")
        assert [line.split(": ")[1] for line in none.stdout.splitlines()] == ["lo"]
        host = daemon.docker("run", "--rm", "--network", "host", "busybox", "ip", "-o", "link")
        names = {line.split(": ")[1].split("@")[0] for line in host.stdout.splitlines()}
        assert daemon.bridge in names and "eth0" in names
        hosts = daemon.docker("run", "--rm", "--network", "host", "busybox", "cat", "/etc/hosts")
        assert hosts.stdout == Path("/etc/hosts").read_text()
        daemon.docker("run", "-d", "--name", "owner", "busybox", "sleep", "300")
        address = inspect(daemon, "owner")["NetworkSettings"]["IPAddress"]
        shared = daemon.docker("run", "--rm", "--network", "container:owner",
                               "busybox", "ip", "-4", "-o", "addr")  # fmt: skip
        assert f"inet {address}/24" in shared.stdout
        shared_hosts = daemon.docker("run", "--rm", "--network", "container:owner",
                                     "busybox", "cat", "/etc/hosts").stdout  # fmt: skip
        assert f"{address}\t" in shared_hosts
    finally:
        cleanup(daemon, ["owner"])


def test_default_bridge_inspect_etc_files_and_links(daemon: Daemon) -> None:
    try:
        daemon.docker("run", "-d", "--name", "first", "--expose", "80", "-e", "COLOR=blue",
                      "busybox", "sleep", "300")  # fmt: skip
        settings = inspect(daemon, "first")["NetworkSettings"]
        gateway = daemon.bip.split("/")[0]
        assert settings["Gateway"] == gateway and settings["IPPrefixLen"] == 24
        assert settings["IPAddress"].rsplit(".", 1)[0] == gateway.rsplit(".", 1)[0]
        assert settings["MacAddress"].startswith("02:42:")
        assert settings["Networks"]["bridge"]["IPAddress"] == settings["IPAddress"]
        assert settings["SandboxKey"].startswith(str(daemon.exec_root / "netns"))
        out = daemon.docker(
            "run", "--rm", "--hostname", "box", "--add-host", "db.example:10.1.2.3",
            "--dns", "10.9.9.9", "--dns-search", "corp.example", "--dns-option", "ndots:2",
            "--link", "first:buddy",
            "busybox", "sh", "-c", "cat /etc/hosts /etc/resolv.conf; hostname; ip -4 -o addr; env",
        ).stdout  # fmt: skip
        assert "10.1.2.3\tdb.example" in out
        assert f"{settings['IPAddress']}\tbuddy first" in out
        assert "nameserver 10.9.9.9" in out and "search corp.example" in out
        assert "options ndots:2" in out
        ip = settings["IPAddress"]
        for variable in (
            "BUDDY_NAME=/",
            "BUDDY_ENV_COLOR=blue",
            f"BUDDY_PORT=tcp://{ip}:80",
            f"BUDDY_PORT_80_TCP_ADDR={ip}",
            "BUDDY_PORT_80_TCP_PROTO=tcp",
        ):
            assert variable in out  # fmt: skip
        own = next(line.split()[3] for line in out.splitlines() if " eth0 " in line)
        assert f"{own.split('/')[0]}\tbox" in out and "\nbox\n" in out
        # Two containers on the bridge reach each other (FORWARD DROP: tests/test_iptables.py).
        ping = daemon.docker("run", "--rm", "busybox", "ping", "-c1", "-W2", settings["IPAddress"])
        assert ping.returncode == 0
    finally:
        cleanup(daemon, ["first"])


def test_connect_disconnect_and_events(daemon: Daemon) -> None:
    since = str(time.time() - 1)
    subnet = free_subnet()
    try:
        daemon.docker("network", "create", "--subnet", str(subnet), "--ip-range",
                      str(subnet).replace(".0/24", ".128/25"), "side")  # fmt: skip
        daemon.docker("run", "-d", "--name", "roamer", "busybox", "sleep", "300")
        daemon.docker("run", "-d", "--name", "peer", "--network", "side", "busybox", "sleep", "300")
        wanted = str(subnet[200])
        daemon.docker("network", "connect", "--alias", "rover", "--ip", wanted, "side", "roamer")
        settings = inspect(daemon, "roamer")["NetworkSettings"]["Networks"]
        assert settings["side"]["IPAddress"] == wanted and "bridge" in settings
        assert (
            inspect(daemon, "peer")["NetworkSettings"]["Networks"]["side"]["IPAddress"].split(".")[
                -1
            ]
            == "129"
        )  # the first address of --ip-range
        assert daemon.docker("exec", "peer", "ping", "-c1", "-W2", "rover").returncode == 0
        eth1 = daemon.docker("exec", "roamer", "ip", "-4", "-o", "addr", "show", "eth1").stdout
        assert f"{wanted}\t" in daemon.docker("exec", "roamer", "cat", "/etc/hosts").stdout
        assert f"inet {wanted}/24" in eth1
        daemon.docker("network", "disconnect", "bridge", "roamer")  # eth0 goes: a gap
        daemon.docker("network", "connect", "bridge", "roamer")  # the default one, too
        again = daemon.docker("exec", "roamer", "ip", "-o", "link").stdout
        assert " eth0@" in again and " eth1@" in again
        daemon.docker("network", "disconnect", "side", "roamer")
        assert "side" not in inspect(daemon, "roamer")["NetworkSettings"]["Networks"]
        gone = daemon.docker("exec", "roamer", "ip", "link", "show", "eth1", check=False)
        assert gone.returncode != 0
        none = daemon.docker("network", "connect", "none", "roamer", check=False)
        assert "one of the networks in private (none) mode" in none.stderr
        cleanup(daemon, ["roamer", "peer"], ["side"])
        events = daemon.docker("events", "--since", since, "--until", str(time.time()),
                               "--filter", "type=network",
                               "--format", "{{.Action}} {{.Actor.Attributes.name}}")  # fmt: skip
        actions = [line for line in events.stdout.splitlines() if line.endswith(" side")]
        assert actions[0] == "create side" and actions[-1] == "destroy side"
        assert "connect side" in actions and "disconnect side" in actions
    finally:
        cleanup(daemon, ["roamer", "peer"], ["side"])


def test_bad_input(daemon: Daemon) -> None:
    subnet = free_subnet()
    outside = str(free_subnet()[5])
    try:
        daemon.docker("network", "create", "--subnet", str(subnet), "bad1")
        overlap = daemon.docker("network", "create", "--subnet", str(subnet), "bad2", check=False)
        assert "Pool overlaps with other one on this address space" in overlap.stderr
        twice = daemon.docker("network", "create", "bad1", check=False)
        assert "network with name bad1 already exists" in twice.stderr
        stray = daemon.docker("run", "--rm", "--network", "bad1", "--ip", outside,
                              "busybox", "true", check=False)  # fmt: skip
        assert stray.returncode == 125
        assert f"no configured subnet or ip-range contain the IP address {outside}" in stray.stderr
        default_ip = daemon.docker("run", "--rm", "--ip", str(subnet[9]), "busybox", "true",
                                   check=False)  # fmt: skip
        assert "user specified IP address is supported on user defined networks only" in (
            default_ip.stderr
        )
        daemon.docker("network", "create", "auto")  # a subnet we did not choose: no --ip
        auto = daemon.docker("run", "--rm", "--network", "auto", "--ip", "172.30.0.9",
                             "busybox", "true", check=False)  # fmt: skip
        assert "user specified IP address is supported only when connecting to networks with "\
            "user configured subnets" in auto.stderr  # fmt: skip
        missing = daemon.docker("run", "--rm", "--network", "nope", "busybox", "true", check=False)
        assert "network nope not found" in missing.stderr
        daemon.docker("run", "-d", "--name", "user", "--network", "bad1", "busybox", "sleep", "300")
        busy = daemon.docker("network", "rm", "bad1", check=False)
        assert busy.returncode != 0 and "has active endpoints" in busy.stderr
        again = daemon.docker("network", "connect", "bad1", "user", check=False)
        assert "endpoint with name user already exists in network bad1" in again.stderr
        option = "com.docker.network.bridge.name=lo"  # the host's device: never touched
        host_dev = daemon.docker("network", "create", "-o", option, "bad4", check=False)
        assert "bridge name lo is not available" in host_dev.stderr
        builtin = daemon.docker("network", "rm", "bridge", check=False)
        assert "bridge is a pre-defined network and cannot be removed" in builtin.stderr
        client = daemon.client()
        try:
            response = client.api.post(
                client.api._url("/networks/create"),
                json={"Name": "bad3", "IPAM": {"Config": [{"Subnet": str(subnet)}]}},
            )
            assert response.status_code == 403
            assert response.json()["message"] == (
                "invalid pool request: Pool overlaps with other one on this address space"
            )
            assert client.api.delete(client.api._url("/networks/nope")).status_code == 404
        finally:
            client.close()
    finally:
        cleanup(daemon, ["user"], ["bad1", "bad2", "bad3", "auto"])


def test_ls_filters_prune_and_docker_py(daemon: Daemon) -> None:
    client = daemon.client()
    try:
        created = client.networks.create("pynet", labels={"keep": "no"})
        assert created.attrs["IPAM"]["Config"][0]["Subnet"]
        listed = daemon.docker("network", "ls", "--filter", "type=custom",
                               "--format", "{{.Name}}").stdout.split()  # fmt: skip
        assert "pynet" in listed and "bridge" not in listed
        by_label = daemon.docker("network", "ls", "-q", "--filter", "label=keep=no").stdout
        assert by_label.strip() == created.id[:12]
        container = client.containers.run("busybox", "sleep 300", detach=True, network="pynet")
        container.reload()
        assert container.attrs["NetworkSettings"]["Networks"]["pynet"]["IPAddress"]
        container.remove(force=True)
        pruned = daemon.docker("network", "prune", "-f").stdout
        assert "pynet" in pruned
        assert "pynet" not in daemon.docker("network", "ls").stdout
    finally:
        client.close()
        cleanup(daemon, [], ["pynet"])


def test_stats_have_network_counters(daemon: Daemon) -> None:
    try:
        daemon.docker("run", "-d", "--name", "counted", "busybox", "sleep", "300")
        gateway = daemon.bip.split("/")[0]
        daemon.docker("exec", "counted", "ping", "-c2", "-W1", gateway, check=False)
        client = daemon.client()
        try:
            stats = client.api.stats("counted", stream=False)
        finally:
            client.close()
        assert stats["networks"]["eth0"]["tx_packets"] >= 2
        assert stats["networks"]["eth0"]["rx_bytes"] > 0
    finally:
        cleanup(daemon, ["counted"])


def _our_leftovers(d: Daemon) -> tuple[list[str], list[str]]:
    """(netns files, sandbox records) the daemon still has."""
    netns = sorted(p.name for p in (d.exec_root / "netns").glob("*"))
    records = sorted(p.name for p in (d.data_root / "network" / "sandboxes").glob("*.json"))
    return netns, records


def test_removing_everything_leaves_nothing(daemon: Daemon) -> None:
    subnet = str(free_subnet())
    daemon.docker("network", "create", "--subnet", subnet, "-o",
                  "com.docker.network.bridge.name=pydtmpbr0", "tidy")  # fmt: skip
    daemon.docker("run", "-d", "--name", "t1", "--network", "tidy", "busybox", "sleep", "300")
    daemon.docker("run", "-d", "--name", "t2", "-p", "127.0.0.1:0:80", "busybox", "sleep", "300")
    veths = {
        endpoint["host_if"]
        for path in (daemon.data_root / "network" / "sandboxes").glob("*.json")
        for endpoint in json.loads(path.read_text())["endpoints"]
    }
    assert len(veths) >= 2 and veths <= links() and "pydtmpbr0" in links()
    daemon.docker("rm", "-f", "t1", "t2")
    daemon.docker("network", "rm", "tidy")
    deadline = time.monotonic() + 5  # the kernel frees veths with their namespace, async
    while (veths | {"pydtmpbr0"}) & links() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (veths | {"pydtmpbr0"}) & links()
    assert _our_leftovers(daemon) == ([], [])


def test_live_restore_keeps_address_port_and_names(archive: Path) -> None:
    with running_daemon("--live-restore") as d:
        subnet = str(free_subnet())
        d.docker("load", "-i", str(archive))
        d.docker("network", "create", "--subnet", subnet, "lr")
        d.docker("run", "-d", "--name", "kept", "--network", "lr", "-p", "127.0.0.1:0:8080",
                 "busybox", "sh", "-c", HTTPD)  # fmt: skip
        before = inspect(d, "kept")["NetworkSettings"]
        port = d.docker("port", "kept", "8080").stdout.strip()
        assert fetch(f"http://{port}/").startswith("hello-")
        assert d.proc is not None
        d.proc.kill()  # kill -9
        d.proc.wait()
        d.start()
        after = inspect(d, "kept")["NetworkSettings"]
        assert after["Networks"]["lr"]["IPAddress"] == before["Networks"]["lr"]["IPAddress"]
        assert after["Ports"] == before["Ports"]
        assert fetch(f"http://{port}/").startswith("hello-")
        page = d.docker("run", "--rm", "--network", "lr", "busybox",
                        "timeout", "10", "wget", "-qO-", "http://kept:8080/")  # fmt: skip
        assert page.stdout.startswith("hello-")
        d.docker("rm", "-f", "kept")
        d.docker("network", "rm", "lr")
        assert _our_leftovers(d) == ([], [])


def test_stale_sandbox_removed_at_daemon_start(archive: Path) -> None:
    """A container that died while no daemon ran leaves no veth or namespace behind."""
    with running_daemon() as d:
        d.docker("load", "-i", str(archive))
        d.docker("run", "-d", "--name", "doomed", "busybox", "sleep", "300")
        info = inspect(d, "doomed")
        record = d.data_root / "network" / "sandboxes" / f"{info['Id']}.json"
        veth = json.loads(record.read_text())["endpoints"][0]["host_if"]
        assert veth in links()
        assert d.proc is not None
        d.proc.kill()
        d.proc.wait()
        os.kill(info["State"]["Pid"], signal.SIGKILL)
        d.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (veth in links() or record.exists()):
            time.sleep(0.1)
        assert veth not in links() and not record.exists()
        assert not Path(info["NetworkSettings"]["SandboxKey"]).exists()
        assert inspect(d, "doomed")["State"]["Status"] == "exited"
        d.docker("rm", "doomed")


def _dns_query(name: str) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return bytes.fromhex("123401000001000000000000") + labels + b"\x00\x00\x01\x00\x01"


DNS_CLIENT = (
    "import socket, struct, sys\n"
    "q = bytes.fromhex(sys.argv[2])\n"
    "if sys.argv[1] == 'UDP':\n"
    "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "    s.settimeout(10)\n"
    "    s.sendto(q, ('127.0.0.11', 53))\n"
    "    print(s.recv(65535).hex())\n"
    "    sys.exit()\n"
    "s = socket.create_connection(('127.0.0.11', 53), 5)\n"
    "s.sendall(struct.pack('!H', len(q)) + q)\n"
    "n = struct.unpack('!H', s.recv(2))[0]\n"
    "data = b''\n"
    "while len(data) < n:\n"
    "    data += s.recv(n - len(data))\n"
    "print(data.hex())\n"
)


def dns_in(netns: str, proto: str, name: str) -> str:
    """Ask the embedded server from inside a container's namespace (host python)."""
    query = subprocess.run(
        ["nsenter", f"--net={netns}", sys.executable, "-c", DNS_CLIENT, proto,
         _dns_query(name).hex()],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert query.returncode == 0, query.stderr
    return query.stdout.strip()


def test_internal_mtu_restart_and_tcp_dns(daemon: Daemon) -> None:
    try:
        daemon.docker("network", "create", "--internal", "--subnet", str(free_subnet()),
                      "-o", "com.docker.network.driver.mtu=1400", "inner")  # fmt: skip
        daemon.docker("run", "-d", "--name", "in1", "--network", "inner", "busybox", "sleep", "300")
        daemon.docker("run", "-d", "--name", "in2", "--network", "inner", "busybox", "sleep", "300")
        routes = daemon.docker("exec", "in1", "ip", "route").stdout
        assert "default" not in routes  # an internal network never routes off the bridge
        assert "mtu 1400" in daemon.docker("exec", "in1", "ip", "link", "show", "eth0").stdout
        key = inspect(daemon, "in1")["NetworkSettings"]["SandboxKey"]
        reply = dns_in(key, "TCP", "in2")
        in2 = inspect(daemon, "in2")["NetworkSettings"]["Networks"]["inner"]["IPAddress"]
        assert socket.inet_ntoa(bytes.fromhex(reply)[-4:]) == in2
        daemon.docker("restart", "-t", "0", "in2")
        assert daemon.docker("exec", "in1", "ping", "-c1", "-W2", "in2").returncode == 0
    finally:
        cleanup(daemon, ["in1", "in2"], ["inner"])


def test_connect_while_stopped_and_shutdown_releases(archive: Path) -> None:
    """A network connected to a stopped container is there at its start; a daemon stop
    (without live-restore) leaves no namespace or sandbox behind."""
    with running_daemon() as d:
        d.docker("load", "-i", str(archive))
        d.docker("network", "create", "--subnet", str(free_subnet()), "later")
        d.docker("create", "--name", "sleeper", "busybox", "sleep", "300")
        d.docker("network", "connect", "--alias", "dozy", "later", "sleeper")
        d.docker("start", "sleeper")
        networks = inspect(d, "sleeper")["NetworkSettings"]["Networks"]
        assert networks["bridge"]["IPAddress"] and networks["later"]["IPAddress"]
        page = d.docker(
            "run", "--rm", "--network", "later", "busybox", "ping", "-c1", "-W2", "dozy"
        )
        assert page.returncode == 0
        assert d.stop() == 0
        assert _our_leftovers(d) == ([], [])
        d.start()
        stopped = inspect(d, "sleeper")["NetworkSettings"]
        assert stopped["IPAddress"] == "" and stopped["Networks"]["later"]["IPAddress"] == ""
        assert stopped["Networks"]["later"]["Aliases"] == ["dozy"]
        d.docker("rm", "sleeper")
        d.docker("network", "rm", "later")


def test_bridge_none_disables_the_default_network(archive: Path) -> None:
    with running_daemon("--bridge", "none") as d:
        d.docker("load", "-i", str(archive))
        assert "bridge" not in d.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        out = d.docker("run", "--rm", "busybox", "ip", "-o", "link").stdout
        assert [line.split(": ")[1] for line in out.splitlines()] == ["lo"]
        assert "none" not in links()


def test_docker_py_ipam_links_and_scope(daemon: Daemon) -> None:
    import docker.errors
    from docker.types import IPAMConfig, IPAMPool

    subnet = free_subnet()
    client = daemon.client()
    api = client.api
    try:
        pool = IPAMPool(subnet=str(subnet), gateway=str(subnet[254]),
                        iprange=str(subnet).replace(".0/24", ".0/25"),
                        aux_addresses={"reserved": str(subnet[1])})  # fmt: skip
        v6 = IPAMPool(subnet="fd00:dead:beef::/64")
        net = api.create_network("pyipam", ipam=IPAMConfig(pool_configs=[pool, v6]),
                                 enable_ipv6=True)["Id"]  # fmt: skip
        config = api.inspect_network(net)["IPAM"]["Config"]
        assert config[0] == {
            "Subnet": str(subnet), "Gateway": str(subnet[254]),
            "IPRange": str(subnet).replace(".0/24", ".0/25"),
            "AuxiliaryAddresses": {"reserved": str(subnet[1])},
        }  # fmt: skip
        assert config[1]["Subnet"] == "fd00:dead:beef::/64"
        with pytest.raises(docker.errors.NotFound):
            api.inspect_network(net, scope="global")
        target = api.create_container(
            "busybox", "sleep 300", name="pytarget",
            host_config=api.create_host_config(network_mode="pyipam"),
        )["Id"]  # fmt: skip
        api.start(target)
        # The first address is an aux address, so the target gets the next one.
        address = api.inspect_container(target)["NetworkSettings"]["Networks"]["pyipam"]
        assert address["IPAddress"] == str(subnet[2])
        linker = api.create_container("busybox", "sleep 300", name="pylinker")["Id"]
        api.connect_container_to_network(linker, net, ipv4_address=str(subnet[100]),
                                         aliases=["l1"], links=[("pytarget", "tgt")])  # fmt: skip
        api.start(linker)
        settings = api.inspect_container(linker)["NetworkSettings"]["Networks"]["pyipam"]
        assert settings["IPAddress"] == str(subnet[100])
        assert settings["IPAMConfig"]["IPv4Address"] == str(subnet[100])
        assert settings["Aliases"] == ["l1"]
        found = daemon.docker("exec", "pylinker", "nslookup", "tgt").stdout
        assert str(subnet[2]) in found
        others = daemon.docker("exec", "pytarget", "nslookup", "tgt", check=False)
        assert str(subnet[2]) not in others.stdout  # a link's alias is the linker's alone
        with pytest.raises(docker.errors.APIError):
            api.create_network("pyhost", driver="host")
    finally:
        client.close()
        cleanup(daemon, ["pytarget", "pylinker"], ["pyipam"])


def test_bridge_deleted_behind_our_back_comes_back(daemon: Daemon) -> None:
    subprocess.run(["ip", "link", "del", daemon.bridge], check=True)
    gateway = daemon.bip.split("/")[0]
    ping = daemon.docker("run", "--rm", "busybox", "ping", "-c1", "-W2", gateway)
    assert ping.returncode == 0 and daemon.bridge in links()
