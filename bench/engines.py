"""Start the engines a benchmark compares: pydockerd, and dockerd when it is installed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.daemon import remove_root

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Engine:
    name: str
    sock: str
    proc: subprocess.Popen[bytes]
    started_at: float
    root: Path

    def cpu_seconds(self) -> float:
        """User + system CPU of the engine process (not its children)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks


def ping_once(sock_path: str, timeout: float = 1.0) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(sock_path)
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            return data.endswith(b"OK")
    except OSError:
        return False


def wait_first_ping(
    sock_path: str, proc: subprocess.Popen[bytes], start: float, timeout: float = 60
) -> float:
    """Seconds from `start` until the first successful /_ping (polled every millisecond)."""
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"engine exited with {proc.returncode}")
        if os.path.exists(sock_path) and ping_once(sock_path):
            return time.perf_counter() - start
        time.sleep(0.001)
    raise RuntimeError("engine did not answer /_ping")


def dockerd_available() -> bool:
    return shutil.which("dockerd") is not None


@contextmanager
def start_engine(
    name: str, root: Path | None = None, *, extra: Sequence[str] = (), keep_root: bool = False
) -> Iterator[tuple[Engine, float]]:
    """Start `pydockerd` or `dockerd` on temporary roots; yield it and its time to first ping.
    With `keep_root` the roots stay for the next start (restore benchmarks)."""
    root = root or Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir="/tmp"))
    sock = str(root / "engine.sock")
    common = [
        "--data-root", str(root / "data"),
        "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "engine.pid"),
        "-H", f"unix://{sock}",
        "--iptables=false",
        "--ip-masq=false",
        "--bridge=none",  # no bridge left on the host; `extra` may name one (the last wins)
        *extra,
        "--config-file", str(root / "x.json"),
    ]  # fmt: skip
    if name == "pydockerd":
        argv = [sys.executable, "-m", "kernel.main", *common]
    else:
        argv = ["dockerd", *common]
    (root / "x.json").write_text("{}")
    log = (root / "engine.log").open("ab")
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        first_ping = wait_first_ping(sock, proc, started)
        yield Engine(name, sock, proc, started, root), first_ping
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        if not keep_root:
            remove_root(root)
