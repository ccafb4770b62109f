"""Start real pydockerd processes on temporary roots for integration tests."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import pty
import random
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kernel.fsutil import mount_points

REPO = Path(__file__).resolve().parent.parent
PYDOCKERD = [sys.executable, "-m", "kernel.main"]


CREATED_DIRS: list[Path] = []  # removed at the end of the test session (conftest)
CREATED_DAEMONS: list[Daemon] = []  # their bridges go at the end of the session (conftest)


def short_tempdir(prefix: str = "pyd") -> Path:
    """Unix socket paths must stay under 108 bytes: pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    CREATED_DIRS.append(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def routed_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True
    )
    nets = []
    for line in out.stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("local", "broadcast"):
            first = line.split()[1]
        try:
            nets.append(ipaddress.IPv4Network(first, strict=False))
        except ValueError:
            continue
    return nets


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0-10.254.255.0 that nothing on the host routes yet (random, so
    parallel test daemons and their networks do not collide)."""
    taken = routed_networks()
    while True:
        net = ipaddress.IPv4Network(f"10.{random.randint(200, 254)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net


def unix_request(path: str, request: bytes, *, timeout: float = 10.0) -> bytes:
    """Send one raw HTTP request over a unix socket and read until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


class Daemon:
    """One pydockerd process with its own data-root, exec-root, pidfile and socket."""

    def __init__(self, root: Path, args: Sequence[str], config: dict[str, Any] | None) -> None:
        self.root = root
        self.data_root = root / "data"
        self.exec_root = root / "exec"
        self.pidfile = root / "pydockerd.pid"
        self.sock = root / "d.sock"
        self.host = f"unix://{self.sock}"
        self.config_file = root / "daemon.json"
        self.log_file = root / "daemon.log"
        self.docker_config = root / "docker-cli"
        self.docker_config.mkdir(exist_ok=True)
        if config is not None:
            self.write_config(config)
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.namespace = f"pydtest-{secrets.token_hex(6)}"
        # Our own default bridge and subnet: parallel daemons never share one.
        self.bridge = f"pyd{secrets.token_hex(4)}"
        self.bip = f"{free_subnet()[1]}/24"
        CREATED_DAEMONS.append(self)
        self.starts = 0
        # Interpreter arguments before `-m kernel.main` (a launcher script, say).
        self.command_prefix: list[str] = []
        # A command the daemon runs under (`ip netns exec NAME`, say).
        self.wrapper: list[str] = []

    def file_config(self) -> dict[str, Any]:
        try:
            loaded = json.loads(self.config_file.read_text())
        except (OSError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else json.dumps(config)
        self.config_file.write_text(text)

    def command(self, *extra: str) -> list[str]:
        args = [
            *self.wrapper,
            PYDOCKERD[0],
            *self.command_prefix,
            *PYDOCKERD[1:],
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "--config-file", str(self.config_file),
            "--containerd-namespace", self.namespace,
        ]  # fmt: skip
        if not any(a.startswith(("--iptables", "--ip-masq")) for a in self.args):
            args += ["--iptables=false", "--ip-masq=false"]  # never the host's netfilter
        if not any(a in ("-b", "--bridge") or a.startswith("--bridge=") for a in self.args):
            args += ["--bridge", self.bridge, "--bip", self.bip]
        hosts_given = any(a in ("-H", "--host") or a.startswith("--host=") for a in self.args)
        if not hosts_given and "hosts" not in self.file_config():
            args += ["-H", self.host]
        return args + self.args + list(extra)

    def start(self, *, wait: bool = True, env: dict[str, str] | None = None) -> Daemon:
        if not self.config_file.exists():
            self.write_config({})
        self.starts += 1
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def run_to_exit(self, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run this daemon's command in the foreground (for starts that must fail)."""
        if not self.config_file.exists():
            self.write_config({})
        return subprocess.run(
            self.command(), cwd=REPO, capture_output=True, text=True, timeout=timeout
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every actor has started (the log says so), not just until /_ping answers:
        tests then see no start-up events or waits."""
        deadline = time.monotonic() + timeout
        done = "Daemon has completed initialization"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if self.log().count(done) >= self.starts:
                try:
                    reply = unix_request(str(self.sock), b"GET /_ping HTTP/1.0\r\n\r\n", timeout=1)
                    if reply.endswith(b"OK"):
                        return
                except OSError:
                    pass
            time.sleep(0.02)
        raise AssertionError(f"daemon did not start in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DOCKER_HOST": self.host,
            "DOCKER_CONFIG": str(self.docker_config),
            "DOCKER_BUILDKIT": "0",
        }

    def docker(
        self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        raw = subprocess.run(
            ["docker", *args], env=self.env(), input=input, capture_output=True, timeout=timeout
        )
        result = subprocess.CompletedProcess(
            raw.args,
            raw.returncode,
            raw.stdout.decode("utf-8", "replace"),
            raw.stderr.decode("utf-8", "replace"),
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}\ndaemon log:\n{self.log()}"
            )
        return result

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.host, version="auto", timeout=30)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, SIGKILL as a last resort; return the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def remove_network_leftovers(daemon: Daemon) -> None:
    """What the daemon's network records name: veths, namespaces, bridges (only ours)."""
    records = daemon.data_root / "network"
    for path in (records / "sandboxes").glob("*.json"):
        try:
            sandbox = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for endpoint in sandbox.get("endpoints") or []:
            subprocess.run(["ip", "link", "del", endpoint["host_if"]], capture_output=True)
        if sandbox.get("netns"):
            subprocess.run(["umount", "-l", sandbox["netns"]], capture_output=True)
    bridges = {daemon.bridge}
    for path in (records / "networks").glob("*.json"):
        try:
            network = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if network.get("Driver") == "bridge":
            options = network.get("Options") or {}
            bridges.add(options.get("com.docker.network.bridge.name") or f"br-{network['Id'][:12]}")
    for bridge in bridges:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    for netns in (daemon.exec_root / "netns").glob("*"):
        subprocess.run(["umount", "-l", str(netns)], capture_output=True)


def remove_cgroups(namespace: str) -> None:
    """The daemon's cgroup parent (`/<namespace>`) in every hierarchy, once it is empty."""
    base = Path("/sys/fs/cgroup")
    for parent in [base / namespace, *base.glob(f"*/{namespace}")]:
        for directory in sorted(parent.glob("**/"), key=lambda p: -len(p.parts)):
            try:
                directory.rmdir()
            except OSError:
                pass


@contextmanager
def running_daemon(
    *args: str,
    config: dict[str, Any] | None = None,
    root: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Daemon]:
    root = root or short_tempdir()
    daemon = Daemon(root, args, config)
    try:
        daemon.start(env=env)
        yield daemon
    finally:
        daemon.stop()
        remove_network_leftovers(daemon)
        remove_cgroups(daemon.namespace)
        remove_root(root)


def remove_root(root: Path) -> None:
    """Unmount what a daemon left mounted below `root` (deepest first: a rootfs whose
    cleanup a failing test cut short, say), then delete it."""
    below = [p for p in mount_points() if p == str(root) or p.startswith(f"{root}/")]
    for point in sorted(set(below), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


def run_pydockerd(
    *args: str, timeout: float = 20.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the daemon binary to completion (for flags like --validate and failing starts)."""
    return subprocess.run(
        [*PYDOCKERD, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def wait_child(pid: int, timeout: float = 20.0) -> int:
    """A forked child's exit code; a child that hangs fails the test instead of the run."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still runs after {timeout:g} s")
        time.sleep(0.05)


class Terminal:
    """A docker CLI command on the child side of a real pseudo-terminal."""

    def __init__(self, daemon: Daemon, *argv: str, rows: int = 24, cols: int = 80) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the size is set before the CLI starts and reads it
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.environ.update(daemon.env())
            os.execvp("docker", ["docker", *argv])
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        """As a terminal emulator does: the new size, then SIGWINCH to the CLI."""
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.kill(self.pid, signal.SIGWINCH)

    def expect(self, pattern: bytes, timeout: float = 20, start: int = 0) -> int:
        """Read until `pattern` shows (after offset `start`); the offset just past it."""
        deadline = time.monotonic() + timeout
        while (found := self.seen.find(pattern, start)) < 0:
            assert time.monotonic() < deadline, f"no {pattern!r} in {self.seen!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                self.seen += os.read(self.fd, 4096)
        return found + len(pattern)

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> int:
        """Wait for the CLI to exit; its exit code."""
        code = wait_child(self.pid)
        self._close_fd()
        return code

    def kill(self) -> None:
        """Cleanup after a failure: the CLI goes, whatever state it is in."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._close_fd()

    def _close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
