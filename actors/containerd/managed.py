"""Our own containerd child (trio-flavoured), as dockerd runs one without --containerd.

Layout (moby's): config, socket and log under `<exec-root>/containerd/`,
containerd's state in `<exec-root>/containerd/daemon`, its root in
`<data-root>/containerd/daemon`. Must run inside `trio_asyncio.open_loop()`:
readiness is "the socket answers Version".
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from actors.containerd.client import open_containerd_client
from actors.containerd.errors import ContainerdStartFailed, ContainerdUnavailable

# Plugins a Docker-like daemon never uses: CRI (kubelet's API), `opt` (it would
# create /opt/containerd), and snapshotters that only log failures here.
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
)

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: like moby, containerd dies with
    # us (containers survive: their shims are separate processes).
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _toml_str(s: str | Path) -> str:
    return json.dumps(str(s))  # JSON string escapes are valid TOML basic strings


def containerd_config(root: str | Path, state: str | Path, socket_path: str) -> str:
    """containerd 1.6 config.toml (version 2) for a private instance."""
    disabled = ", ".join(_toml_str(p) for p in DISABLED_PLUGINS)
    return (
        "# Written by pydockerd; rewritten at every start.\n"
        "version = 2\n"
        f"root = {_toml_str(root)}\n"
        f"state = {_toml_str(state)}\n"
        f"disabled_plugins = [{disabled}]\n"
        "\n[grpc]\n"
        f"  address = {_toml_str(socket_path)}\n"
        "\n[ttrpc]\n"
        f"  address = {_toml_str(socket_path + '.ttrpc')}\n"
        "\n[debug]\n"
        '  address = ""\n'  # no debug socket
        '  level = "info"\n'
    )


class ManagedContainerd:
    def __init__(self, data_root: Path, exec_root: Path, binary: str = "containerd") -> None:
        self.base = exec_root / "containerd"
        self.root = data_root / "containerd" / "daemon"
        self.state = self.base / "daemon"
        self.socket_path = str(self.base / "containerd.sock")
        self.config_path = self.base / "containerd.toml"
        self.log_path = self.base / "containerd.log"
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        # One waiter on the pidfd at a time (trio allows one per fd); the others
        # queue here and find the process already reaped.
        self._wait_lock = trio.Lock()

    @property
    def pid(self) -> int | None:
        """The running containerd's PID, None when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def write_config(self) -> None:
        self.config_path.write_text(containerd_config(self.root, self.state, self.socket_path))

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Popen here rather than trio.lowlevel.open_process: trio forks from a
        # worker thread, and PDEATHSIG fires when that *thread* ends (trio
        # retires idle workers), which would kill containerd at random. The fork
        # blocks trio for a few ms, once per (re)start.
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [self._binary, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's ^C is ours to handle
                preexec_fn=_die_with_parent,
                # systemd's notify socket is ours: containerd would announce READY=1 too.
                env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
            )

    async def start(self, start_timeout: float = 30.0) -> None:
        """Start containerd and return once it answers Version."""
        if self.pid is not None:
            raise RuntimeError("containerd is already running")
        for d in (self.base, self.state, self.root):
            d.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.write_config()
        self.close()
        self._proc = self._spawn()
        self._pidfd = os.pidfd_open(self._proc.pid)  # before anyone can reap it
        try:
            with trio.fail_after(start_timeout):
                await self._wait_ready()
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self.stop()
            if isinstance(exc, trio.TooSlowError):
                raise ContainerdStartFailed(
                    f"containerd did not answer within {start_timeout}s; see {self.log_path}"
                ) from None
            raise

    async def _wait_ready(self) -> None:
        async with open_containerd_client(self.socket_path, call_timeout=2.0) as client:
            while True:
                if self.pid is None:
                    raise ContainerdStartFailed(
                        f"containerd exited with status {self.returncode} at start; "
                        f"last log lines:\n{self._log_tail()}"
                    )
                try:
                    await client.version()
                    return
                except ContainerdUnavailable:
                    await trio.sleep(0.05)

    def _log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait(self) -> int | None:
        """Return containerd's exit status once it exits (at once if not running)."""
        async with self._wait_lock:
            if self._proc is not None and self._proc.poll() is None:
                # A pidfd turns readable when the process exits.
                await trio.lowlevel.wait_readable(self._pidfd)
        return self.returncode

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if self._proc is None or self.pid is None:
            return
        self._proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(grace):
            await self.wait()
            return
        self._proc.kill()
        await self.wait()

    def close(self) -> None:
        """Release the pidfd of a process that is gone."""
        if self._pidfd >= 0 and self.pid is None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    async def restart(self, start_timeout: float = 30.0, stop_grace: float = 10.0) -> None:
        await self.stop(stop_grace)
        await self.start(start_timeout)


@asynccontextmanager
async def open_managed_containerd(
    data_root: str | os.PathLike[str],
    exec_root: str | os.PathLike[str],
    *,
    binary: str = "containerd",
    start_timeout: float = 30.0,
    stop_grace: float = 10.0,
) -> AsyncIterator[ManagedContainerd]:
    """Run containerd for as long as the block runs; stop it (bounded) on exit."""
    managed = ManagedContainerd(Path(data_root), Path(exec_root), binary)
    await managed.start(start_timeout)
    try:
        yield managed
    finally:
        with trio.CancelScope(shield=True):
            await managed.stop(stop_grace)
        managed.close()
