"""`--iptables` and `--ip-masq`: DNAT of published ports, forwarding with a FORWARD policy
of DROP, isolation, masquerading, and rules rebuilt at a restart.

The daemon under test runs inside a private network namespace made (and deleted) by each
test (`ip netns add`, the daemon started under `nsenter --net`), so the host's netfilter
state is never touched: its bridges, iptables rules and sysctls are private to the
namespace. The docker CLI reaches the
daemon over its unix socket from the host.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import (
    REPO,
    Daemon,
    free_subnet,
    remove_cgroups,
    remove_network_leftovers,
    short_tempdir,
)
from tests.fixtures.busybox import busybox_archive

HTTPD = "mkdir -p /www && echo hello-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"
IPTABLES = ("--iptables=true", "--ip-masq=true")

pytestmark = pytest.mark.skipif(shutil.which("iptables") is None, reason="needs iptables")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_archive(tmp_path_factory.mktemp("fixtures") / "busybox.tar")


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"{argv} in {ns}: {done.returncode}\n{done.stdout}{done.stderr}")
    return done


def rules(ns: str, table: str = "filter") -> list[str]:
    return in_ns(ns, "iptables", "-t", table, "-S").stdout.splitlines()


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pydipt-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        in_ns(name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextmanager
def ns_daemon(netns: str, archive: Path, *args: str, iptables: bool = True) -> Iterator[Daemon]:
    """A daemon with --iptables and --ip-masq on (unless `iptables` is false), inside
    `netns`; everything it made is removed (its bridges and rules go with the namespace)."""
    root = short_tempdir()
    d = Daemon(root, [*(IPTABLES if iptables else ()), *args], None)
    d.wrapper = enter(netns)
    try:
        d.start()
        d.docker("load", "-i", str(archive))
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            ids = d.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                d.docker("rm", "-f", *ids, check=False)
            d.docker("network", "prune", "-f", check=False)
        d.stop()
        remove_network_leftovers(d)  # the namespace files (mounted in the host's namespace)
        remove_cgroups(d.namespace)
        shutil.rmtree(root, ignore_errors=True)


def enter(netns: str) -> list[str]:
    """Only the network namespace: `ip netns exec` would also remount /sys, hiding the
    cgroup mounts runc needs."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--"]


def inspect(d: Daemon, *args: str) -> Any:
    return json.loads(d.docker(*args).stdout)[0]


FETCH = (
    "import sys, urllib.request\n"
    "print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode(), end='')\n"
)


def fetch(ns: str, url: str, timeout: float = 10) -> str:
    """GET from inside the namespace; "" when it keeps failing until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        done = in_ns(ns, sys.executable, "-c", FETCH, url, check=False)
        if done.returncode == 0 or time.monotonic() > deadline:
            return done.stdout
        time.sleep(0.2)


def test_published_port_served_by_dnat(netns: str, archive: Path) -> None:
    """--userland-proxy=false: nothing listens on the host port; the DNAT rule serves it,
    from the bridge address and from 127.0.0.1, and goes with the container."""
    with ns_daemon(netns, archive, "--userland-proxy=false") as d:
        nat = rules(netns, "nat")
        for jump in ("-A PREROUTING -m addrtype --dst-type LOCAL -j PYDOCKER",
                     "-A OUTPUT -m addrtype --dst-type LOCAL -j PYDOCKER",
                     "-A POSTROUTING -j PYDOCKER-POSTROUTING",
                     f"-A PYDOCKER-POSTROUTING -s {d.bip.split('.')[0]}"):  # fmt: skip
            assert any(r.startswith(jump) for r in nat), (jump, nat)
        subnet = inspect(d, "network", "inspect", "bridge")["IPAM"]["Config"][0]["Subnet"]
        assert f"-A PYDOCKER-POSTROUTING -s {subnet} ! -o {d.bridge} -j MASQUERADE" in nat
        assert "-A FORWARD -j PYDOCKER-FORWARD" in rules(netns)

        d.docker("run", "-d", "--name", "web", "-p", "8080:80", "-p", "127.0.0.1:5300:53/udp",
                 "busybox", "sh", "-c", HTTPD)  # fmt: skip
        ip = inspect(d, "inspect", "web")["NetworkSettings"]["IPAddress"]
        dnat = f"-A PYDOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination {ip}:80"
        udp = (f"-A PYDOCKER -d 127.0.0.1/32 -p udp -m udp --dport 5300 "
               f"-j DNAT --to-destination {ip}:53")  # fmt: skip
        assert udp in rules(netns, "nat")
        accept = (f"-A PYDOCKER-FORWARD -d {ip}/32 ! -i {d.bridge} -o {d.bridge} "
                  "-p tcp -m tcp --dport 80 -j ACCEPT")  # fmt: skip
        assert dnat in rules(netns, "nat") and accept in rules(netns)
        listening = in_ns(netns, "ss", "-Hltn").stdout
        assert ":8080" not in listening  # not the proxy: the port is only held
        gateway = d.bip.split("/")[0]
        assert fetch(netns, f"http://{gateway}:8080/").startswith("hello-")
        assert fetch(netns, "http://127.0.0.1:8080/").startswith("hello-")
        # hairpin: from a neighbour on the bridge and from the container itself
        probe = f"timeout 5 wget -qO- http://{gateway}:8080/ || exit 1"
        page = d.docker("run", "--rm", "busybox", "sh", "-c", probe, timeout=20)
        assert page.stdout.startswith("hello-")
        assert d.docker("exec", "web", "sh", "-c", probe, timeout=20).stdout.startswith("hello-")

        d.docker("rm", "-f", "web")
        assert dnat not in rules(netns, "nat") and accept not in rules(netns)
        assert udp not in rules(netns, "nat")
        assert not any(ip in r for r in rules(netns, "nat") + rules(netns))


def test_forward_drop_bridges_and_internal_networks(netns: str, archive: Path) -> None:
    """A FORWARD policy of DROP with br_netfilter on: containers on one bridge still talk;
    other bridges and internal networks are kept apart; the rules go with the network."""
    in_ns(netns, "iptables", "-P", "FORWARD", "DROP")
    nf = in_ns(netns, "sysctl", "-w", "net.bridge.bridge-nf-call-iptables=1", check=False)
    with ns_daemon(netns, archive) as d:
        s1, s2, s3 = (str(free_subnet()) for _ in range(3))
        d.docker("network", "create", "--subnet", s1, "n1")
        d.docker("network", "create", "--subnet", s2, "--internal", "n2")
        d.docker("network", "create", "--subnet", s3, "n3")
        s4 = str(free_subnet())
        d.docker("network", "create", "--subnet", s4,
                 "-o", "com.docker.network.bridge.enable_icc=false",
                 "-o", "com.docker.network.bridge.enable_ip_masquerade=false", "n4")  # fmt: skip
        bridges = {
            n: f"br-{inspect(d, 'network', 'inspect', n)['Id'][:12]}"
            for n in ("n1", "n2", "n3", "n4")
        }
        filt = rules(netns)
        assert f"-A PYDOCKER-FORWARD -i {bridges['n1']} -o {bridges['n1']} -j ACCEPT" in filt
        assert f"-A PYDOCKER-ISOLATION ! -i {bridges['n2']} -o {bridges['n2']} -j DROP" in filt
        assert f"-A PYDOCKER-ISOLATION-2 -o {bridges['n3']} -j DROP" in filt
        assert f"-A PYDOCKER-ISOLATION -i {bridges['n4']} -o {bridges['n4']} -j DROP" in filt
        nat = rules(netns, "nat")
        assert f"-A PYDOCKER-POSTROUTING -s {s1} ! -o {bridges['n1']} -j MASQUERADE" in nat
        assert not any(f"-s {s4} " in r for r in nat)  # enable_ip_masquerade=false
        if nf.returncode == 0:
            assert (
                in_ns(netns, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables").stdout.strip()
                == "1"
            )

        for name, net in (("web1", "n1"), ("web2", "n2"), ("web3", "n3"), ("web4", "n4")):
            d.docker("run", "-d", "--name", name, "--network", net, "busybox", "sh", "-c", HTTPD)
        for server, net in (("web1", "n1"), ("web2", "n2")):  # on one bridge, policy DROP or not
            page = d.docker("run", "--rm", "--network", net, "busybox",
                            "timeout", "10", "wget", "-qO-", f"http://{server}/")  # fmt: skip
            assert page.stdout.startswith("hello-")
        # Policy ACCEPT: only our isolation rules keep n1 from n3 (and from internal n2).
        in_ns(netns, "iptables", "-P", "FORWARD", "ACCEPT")
        for target in ("web3", "web2"):
            ip = inspect(d, "inspect", target)["NetworkSettings"]["Networks"]
            address = next(iter(ip.values()))["IPAddress"]
            # sh stays PID 1: a SIGTERM from `timeout` would not end a PID 1 wget
            probe = f"timeout 3 wget -qO- http://{address}/ || exit 1"
            gone = d.docker("run", "--rm", "--network", "n1", "busybox", "sh", "-c", probe,
                            check=False, timeout=20)  # fmt: skip
            assert gone.returncode != 0 and "hello" not in gone.stdout
        if nf.returncode == 0:  # enable_icc=false: bridged traffic is filtered, and dropped
            probe = "timeout 3 wget -qO- http://web4/ || exit 1"
            cut = d.docker("run", "--rm", "--network", "n4", "busybox", "sh", "-c", probe,
                           check=False, timeout=20)  # fmt: skip
            assert cut.returncode != 0 and "hello" not in cut.stdout

        d.docker("rm", "-f", "web1", "web2", "web3", "web4")
        d.docker("network", "rm", "n1", "n2", "n3", "n4")
        left = rules(netns) + rules(netns, "nat")
        assert not any(b in r for b in bridges.values() for r in left), left


def test_restart_rebuilds_rules(netns: str, archive: Path) -> None:
    """Our chains are flushed and rebuilt from the records at daemon start: lost rules come
    back, stale ones go, the jumps from the built-in chains appear once."""
    with ns_daemon(netns, archive, "--live-restore") as d:
        d.docker("run", "-d", "--name", "kept", "-p", "8080:80", "busybox", "sh", "-c", HTTPD)
        ip = inspect(d, "inspect", "kept")["NetworkSettings"]["IPAddress"]
        dnat = (f"-A PYDOCKER ! -i {d.bridge} -p tcp -m tcp --dport 8080 "
                f"-j DNAT --to-destination {ip}:80")  # fmt: skip
        assert dnat in rules(netns, "nat")
        assert d.proc is not None
        d.proc.kill()  # kill -9: nothing is undone on the way out
        d.proc.wait()
        in_ns(netns, "iptables", "-t", "nat", "-F", "PYDOCKER")
        in_ns(netns, "iptables", "-t", "nat", "-A", "PYDOCKER", "-p", "tcp", "--dport", "1",
              "-j", "RETURN")  # fmt: skip
        d.start()
        nat = rules(netns, "nat")
        assert dnat in nat
        assert not any("--dport 1 " in r for r in nat)
        assert nat.count("-A PREROUTING -m addrtype --dst-type LOCAL -j PYDOCKER") == 1
        assert rules(netns).count("-A FORWARD -j PYDOCKER-FORWARD") == 1
        gateway = d.bip.split("/")[0]
        assert fetch(netns, f"http://{gateway}:8080/").startswith("hello-")
        d.docker("rm", "-f", "kept")
        assert dnat not in rules(netns, "nat")


def test_missing_iptables_fails_the_start(netns: str) -> None:
    """As dockerd: with --iptables on and no iptables binary the daemon does not start."""
    bindir = short_tempdir()
    for directory in (
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ):
        for entry in Path(directory).glob("*"):
            target = bindir / entry.name
            if not entry.name.startswith(("iptables", "xtables")) and not target.exists():
                target.symlink_to(entry)
    root = short_tempdir()
    d = Daemon(root, list(IPTABLES), {})
    d.wrapper = enter(netns)
    try:
        env = {**os.environ, "PATH": str(bindir)}
        done = subprocess.run(
            d.command(), cwd=REPO, capture_output=True, text=True, timeout=30, env=env
        )
        assert done.returncode == 1, done
        assert "failed to start daemon" in done.stderr + done.stdout
        assert "iptables not found" in done.stderr + done.stdout
    finally:
        remove_cgroups(d.namespace)
        shutil.rmtree(root, ignore_errors=True)


PEER_SERVER = (
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('192.0.2.2', 8000))\n"
    "s.listen(8)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    c, peer = s.accept()\n"
    "    c.recv(4096)\n"
    "    c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\nfrom ' + peer[0].encode())\n"
    "    c.close()\n"
)


@pytest.fixture
def outside(netns: str) -> Iterator[str]:
    """A second namespace standing for the world beyond the host: 192.0.2.2, reached
    from `netns` (192.0.2.1) over a veth pair, answering HTTP with the caller's address."""
    name = f"pydout-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    server: subprocess.Popen[str] | None = None
    try:
        in_ns(netns, "ip", "link", "add", "ext0", "type", "veth", "peer", "name", "ext1",
              "netns", name)  # fmt: skip
        in_ns(netns, "ip", "addr", "add", "192.0.2.1/24", "dev", "ext0")
        in_ns(netns, "ip", "link", "set", "ext0", "up")
        in_ns(name, "ip", "addr", "add", "192.0.2.2/24", "dev", "ext1")
        in_ns(name, "ip", "link", "set", "ext1", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c", PEER_SERVER],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield name
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_masquerade_and_forwarding_to_the_outside(netns: str, outside: str, archive: Path) -> None:
    """--ip-masq: a container reaches an address beyond the host with the host's address as
    its source, even with a FORWARD policy of DROP; an internal network reaches nothing."""
    in_ns(netns, "iptables", "-P", "FORWARD", "DROP")
    in_ns(netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    with ns_daemon(netns, archive) as d:
        probe = "timeout 5 wget -qO- http://192.0.2.2:8000/ || exit 1"
        page = d.docker("run", "--rm", "busybox", "sh", "-c", probe, timeout=20)
        assert page.stdout == "from 192.0.2.1"  # masqueraded, not the container's address
        d.docker("network", "create", "--internal", "--subnet", str(free_subnet()), "inside")
        cut = d.docker("run", "--rm", "--network", "inside", "busybox", "sh", "-c", probe,
                       check=False, timeout=20)  # fmt: skip
        assert cut.returncode != 0 and "from" not in cut.stdout
        d.docker("network", "rm", "inside")


def test_iptables_off_writes_no_rules(netns: str, archive: Path) -> None:
    """--iptables=false (what every other test daemon runs with): no rule, no chain; the
    userland proxy alone serves published ports."""
    with ns_daemon(netns, archive, iptables=False) as d:
        d.docker("run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c", HTTPD)
        assert fetch(netns, "http://127.0.0.1:8080/").startswith("hello-")
        assert "PYDOCKER" not in in_ns(netns, "iptables-save").stdout
