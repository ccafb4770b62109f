"""The containerd bridge against a real containerd + runc.

One containerd per module (a plain subprocess on temporary roots; pytest-trio
fixtures cannot outlive a test), one containerd namespace per test, and a
managed containerd of its own for the kill/restart test. Everything a test
creates is removed even when it fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
import trio
import trio_asyncio

from actors.containerd.client import ContainerdClient, open_containerd_client
from actors.containerd.errors import (
    AlreadyExists,
    ContainerdError,
    ContainerdStartFailed,
    ContainerdUnavailable,
    EventStreamBroken,
    NotFound,
)
from actors.containerd.managed import containerd_config, open_managed_containerd
from actors.containerd.model import (
    Mount,
    RuncOptions,
    TaskCreate,
    TaskDelete,
    TaskExecAdded,
    TaskExecStarted,
    TaskExit,
    TaskPaused,
    TaskResumed,
    TaskStart,
    TaskStatus,
)
from kernel.fsutil import mount_points

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0
        or not shutil.which("containerd")
        or not shutil.which("runc")
        or not os.path.exists("/usr/bin/busybox"),
        reason="needs root, containerd, runc and /usr/bin/busybox",
    ),
]


def _our_mounts(prefix: Path) -> list[str]:
    return [p for p in mount_points() if p.startswith(str(prefix))]


def _remove_tree(base: Path) -> None:
    # Never rm -r through a mount a failed test may have left behind.
    for point in sorted(_our_mounts(base), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="pdcd-"))  # short: unix socket paths are limited
    try:
        yield base
    finally:
        _remove_tree(base)


def _wait_for_socket(path: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"containerd exited with {proc.returncode}")
        with socket.socket(socket.AF_UNIX) as s, suppress(OSError):
            s.connect(path)
            return
        time.sleep(0.02)
    raise RuntimeError("containerd did not listen in time")


@pytest.fixture(scope="module")
def containerd_socket(base_dir: Path) -> Iterator[str]:
    """A containerd for the whole module, stopped by its PID."""
    run = base_dir / "cd"
    run.mkdir()
    sock = str(run / "containerd.sock")
    config = run / "containerd.toml"
    config.write_text(containerd_config(run / "root", run / "state", sock))
    with open(run / "containerd.log", "ab") as log:
        proc = subprocess.Popen(
            ["containerd", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_socket(sock, proc, 20)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def rootfs(base_dir: Path) -> Mount:
    """busybox-static as /bin/busybox and /bin/sh, passed as a read-only bind
    `rootfs` mount (the shim mounts it at <bundle>/rootfs)."""
    root = base_dir / "rootfs"
    for d in ("bin", "proc", "dev", "tmp"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/usr/bin/busybox", root / "bin" / "busybox")
    shutil.copy2("/usr/bin/busybox", root / "bin" / "sh")
    return Mount(type="bind", source=str(root), options=("rbind", "ro"))


def oci_spec(ns: str, cid: str, *args: str) -> bytes:
    """A minimal OCI runtime spec: own namespaces (no network but loopback)."""
    process = {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": list(args),
        "env": ["PATH=/bin"],
        "cwd": "/",
        "noNewPrivileges": True,
    }
    return json.dumps(
        {
            "ociVersion": "1.0.2",
            "process": process,
            "root": {"path": "rootfs", "readonly": True},
            "hostname": cid,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {
                    "destination": "/dev",
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "mode=755", "size=1m"],
                },
            ],
            "linux": {
                "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
                # A leaf cgroup per container: runc removes it at delete.
                "cgroupsPath": f"/{ns}-{cid}",
            },
        }
    ).encode()


def exec_spec(*args: str) -> bytes:
    return json.dumps(
        {"user": {"uid": 0, "gid": 0}, "args": list(args), "env": ["PATH=/bin"], "cwd": "/"}
    ).encode()


async def _cleanup(client: ContainerdClient) -> None:
    """Remove every task and container of the client's namespace."""
    for task in await client.list_tasks():
        with suppress(ContainerdError):
            await client.kill(task.container_id, signal.SIGKILL, all=True)
        with suppress(ContainerdError), trio.move_on_after(5):
            await client.wait(task.container_id)
        with suppress(ContainerdError):
            await client.delete_task(task.container_id)
    for container in await client.list_containers():
        with suppress(ContainerdError):
            await client.delete_container(container.id)


@asynccontextmanager
async def session(sock: str) -> AsyncIterator[ContainerdClient]:
    """trio-asyncio loop + client on a fresh namespace, cleaned up on exit."""
    ns = f"pdtest-{os.getpid()}-{secrets.token_hex(4)}"
    # runc state next to the socket, not in the shim's default /run/containerd/runc.
    runc = RuncOptions(root=str(Path(sock).parent / "runc"))
    async with trio_asyncio.open_loop():
        async with open_containerd_client(sock, ns, call_timeout=20, runc_options=runc) as client:
            try:
                yield client
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(30):
                    with suppress(ContainerdUnavailable):
                        await _cleanup(client)


async def test_version_and_introspection(containerd_socket: str) -> None:
    with trio.fail_after(10):
        async with session(containerd_socket) as c:
            version = await c.version()
            assert version.version.startswith("1.")
            assert version.revision
            assert await c.server_uuid()
            plugins = {(p.type, p.id): p.init_error for p in await c.plugins()}
            assert plugins[("io.containerd.grpc.v1", "tasks")] == ""
            assert ("io.containerd.grpc.v1", "cri") not in plugins  # disabled
            assert await c.list_tasks() == []
            assert c.open_streams() == 0


async def test_task_exit_code_via_event_and_wait(containerd_socket: str, rootfs: Mount) -> None:
    with trio.fail_after(30):
        async with session(containerd_socket) as c, c.open_events() as events:
            cid = "exit7"
            await c.create_container(
                cid, oci_spec(c.namespace, cid, "/bin/sh", "-c", "exit 7"), labels={"a": "b"}
            )
            record = await c.get_container(cid)
            assert record.labels == {"a": "b"}
            assert record.runtime == "io.containerd.runc.v2"
            assert json.loads(record.spec)["process"]["args"][-1] == "exit 7"

            pid = await c.create_task(cid, [rootfs])
            assert pid > 0
            assert (await c.get_task(cid)).status == TaskStatus.CREATED
            waited = []
            async with trio.open_nursery() as nursery:

                async def wait() -> None:
                    waited.append(await c.wait(cid))

                nursery.start_soon(wait)
                await trio.sleep(0.05)  # Wait before start: no exit can be missed
                assert await c.start_task(cid) == pid

            seen = []
            async for event in events:
                seen.append(event)
                if isinstance(event, TaskExit):
                    break
            assert [type(e) for e in seen] == [TaskCreate, TaskStart, TaskExit]
            create, start, exit_ = seen
            assert isinstance(create, TaskCreate) and create.rootfs == (rootfs,)
            assert isinstance(start, TaskStart) and start.pid == pid
            assert isinstance(exit_, TaskExit)
            assert (exit_.container_id, exit_.id, exit_.pid, exit_.exit_status) == (
                cid,
                cid,
                pid,
                7,
            )
            assert waited[0].exit_status == 7
            assert waited[0].exited_at == exit_.exited_at

            process = await c.get_task(cid)
            assert (process.status, process.exit_status) == (TaskStatus.STOPPED, 7)
            deleted = await c.delete_task(cid)
            assert deleted == (7, exit_.exited_at)
            event = await events.__anext__()
            assert isinstance(event, TaskDelete) and event.exit_status == 7
            await c.delete_container(cid)
            assert await c.list_containers() == []


async def test_running_task_operations(containerd_socket: str, rootfs: Mount) -> None:
    with trio.fail_after(30):
        async with session(containerd_socket) as c, c.open_events() as events:
            cid = "sleeper"
            spec = oci_spec(c.namespace, cid, "/bin/busybox", "sleep", "60")
            pid = await c.create_and_start(cid, spec, [rootfs])

            async def next_of(kind: type) -> object:
                async for event in events:
                    if isinstance(event, kind):
                        return event
                raise AssertionError("stream ended")

            assert [p.pid for p in await c.list_pids(cid)] == [pid]
            assert [(t.container_id, t.status) for t in await c.list_tasks()] == [
                (cid, TaskStatus.RUNNING)
            ]
            metrics = await c.metrics(cid)
            assert metrics.type_url.startswith("io.containerd.cgroups.v")
            assert metrics.value
            await c.update_resources(cid, json.dumps({"pids": {"limit": 64}}).encode())

            await c.pause(cid)
            assert isinstance(await next_of(TaskPaused), TaskPaused)
            assert (await c.get_task(cid)).status == TaskStatus.PAUSED
            await c.resume(cid)
            assert isinstance(await next_of(TaskResumed), TaskResumed)

            await c.exec_process(cid, "ex1", exec_spec("/bin/sh", "-c", "exit 5"))
            assert await next_of(TaskExecAdded) == TaskExecAdded(cid, "ex1")
            exec_pid = await c.start_task(cid, exec_id="ex1")
            started = await next_of(TaskExecStarted)
            assert started == TaskExecStarted(cid, "ex1", exec_pid)
            exit_ = await next_of(TaskExit)
            assert isinstance(exit_, TaskExit)
            assert (exit_.id, exit_.exit_status) == ("ex1", 5)
            assert (await c.wait(cid, exec_id="ex1")).exit_status == 5
            assert (await c.delete_process(cid, "ex1")).exit_status == 5

            # Typed errors.
            with pytest.raises(AlreadyExists):
                await c.create_container(cid, spec)
            with pytest.raises(ContainerdError, match="running"):
                await c.delete_task(cid)  # containerd 1.6 says Unknown here
            with pytest.raises(NotFound):
                await c.get_task("nope")
            with pytest.raises(NotFound):
                await c.kill("nope", signal.SIGTERM)

            await c.kill(cid, signal.SIGKILL)
            assert (await c.wait(cid)).exit_status == 128 + signal.SIGKILL
            assert (await c.delete_task(cid)).exit_status == 128 + signal.SIGKILL
            await c.delete_container(cid)


async def test_create_and_start_leaves_nothing_on_failure(
    containerd_socket: str, rootfs: Mount
) -> None:
    with trio.fail_after(30):
        async with session(containerd_socket) as c:
            spec = oci_spec(c.namespace, "bad", "/bin/does-not-exist")
            with pytest.raises(ContainerdError):
                await c.create_and_start("bad", spec, [rootfs])
            assert await c.list_tasks() == []
            assert await c.list_containers() == []


async def test_cancelled_create_and_start_leaves_nothing(
    containerd_socket: str, rootfs: Mount
) -> None:
    """Cancel the batched create at every stage: either it completed, or no
    container or task of it remains."""
    cancelled = 0
    with trio.fail_after(30):
        async with session(containerd_socket) as c:
            for i, delay in enumerate((0, 0.001, 0.003, 0.01, 0.02, 0.04, 0.08, 0.15, 1)):
                cid = f"cx{i}"
                spec = oci_spec(c.namespace, cid, "/bin/busybox", "sleep", "60")
                with trio.move_on_after(delay) as scope:
                    await c.create_and_start(cid, spec, [rootfs])
                if scope.cancelled_caught:
                    cancelled += 1
                    assert await c.list_tasks() == [], delay
                    assert await c.list_containers() == [], delay
                else:
                    await _cleanup(c)
                assert c.open_streams() == 0
    assert cancelled >= 3


async def test_events_survive_200_cycles(containerd_socket: str, rootfs: Mount) -> None:
    """200 create/start/exit/delete cycles (8 at a time) on one channel with one
    subscription: every exit arrives, nothing leaks, unary calls still answer."""
    cycles, parallel = 200, 8
    exits: dict[str, TaskExit] = {}
    arrived: dict[str, trio.Event] = {f"c{i}": trio.Event() for i in range(cycles)}
    with trio.fail_after(60):
        async with session(containerd_socket) as c:
            async with c.open_events() as events, trio.open_nursery() as nursery:

                async def consume() -> None:
                    async for event in events:
                        if isinstance(event, TaskExit):
                            exits[event.container_id] = event
                            arrived[event.container_id].set()

                nursery.start_soon(consume)
                limiter = trio.CapacityLimiter(parallel)

                async def cycle(i: int) -> None:
                    async with limiter:
                        cid = f"c{i}"
                        spec = oci_spec(c.namespace, cid, "/bin/sh", "-c", f"exit {i % 256}")
                        await c.create_and_start(cid, spec, [rootfs])
                        await arrived[cid].wait()
                        assert (await c.delete_task(cid)).exit_status == i % 256
                        await c.delete_container(cid)

                start = time.monotonic()
                async with trio.open_nursery() as cycles_nursery:
                    for i in range(cycles):
                        cycles_nursery.start_soon(cycle, i)
                elapsed = time.monotonic() - start
                assert c.open_streams() == 1  # just the subscription
                nursery.cancel_scope.cancel()
            print(f"{cycles} cycles in {elapsed:.1f}s")
            assert {cid: e.exit_status for cid, e in exits.items()} == {
                f"c{i}": i % 256 for i in range(cycles)
            }
            with trio.fail_after(2):
                assert (await c.version()).version
            assert c.open_streams() == 0
            assert await c.list_containers() == []


async def test_events_cancellation_is_clean(containerd_socket: str, rootfs: Mount) -> None:
    """Cancel subscriptions at every stage (while subscribing, while waiting,
    right after an event): no HTTP/2 stream is left behind."""
    with trio.fail_after(30):
        async with session(containerd_socket) as c:
            for i in range(60):
                with trio.move_on_after(i * 0.0001):
                    async with c.open_events() as events:
                        await events.__anext__()
                assert c.open_streams() == 0, i
            # Cancelled right after receiving events, with more in flight.
            for i in range(3):
                cid = f"k{i}"
                with trio.move_on_after(10) as scope:
                    async with c.open_events() as events:
                        spec = oci_spec(c.namespace, cid, "/bin/sh", "-c", "exit 0")
                        await c.create_and_start(cid, spec, [rootfs])
                        await events.__anext__()
                        scope.cancel()
                assert not scope.cancelled_caught or c.open_streams() == 0
                assert c.open_streams() == 0
                await c.wait(cid)
                await c.delete_task(cid)
                await c.delete_container(cid)
            with trio.fail_after(2):
                await c.version()


async def test_slow_subscriber_gets_stream_broken(containerd_socket: str, rootfs: Mount) -> None:
    with trio.fail_after(30):
        async with session(containerd_socket) as c, c.open_events(buffer=2) as events:
            cid = "flood"
            spec = oci_spec(c.namespace, cid, "/bin/sh", "-c", "exit 0")
            await c.create_and_start(cid, spec, [rootfs])  # create, start
            await c.wait(cid)
            await c.delete_task(cid)  # exit, delete: over the buffer of 2
            got = []
            with pytest.raises(EventStreamBroken):
                async for event in events:
                    got.append(event)
            assert [type(e) for e in got] == [TaskCreate, TaskStart]
            with pytest.raises(EventStreamBroken):  # stays broken
                await events.__anext__()
            assert c.open_streams() == 0  # the broken stream was reset
            await c.delete_container(cid)


async def test_managed_containerd_kill_and_restart(rootfs: Mount) -> None:
    base = Path(tempfile.mkdtemp(prefix="pdmc-"))
    try:
        with trio.fail_after(60):
            async with (
                trio_asyncio.open_loop(),
                open_managed_containerd(base / "data", base / "exec") as managed,
                session(managed.socket_path) as c,
            ):
                assert managed.pid is not None
                assert (await c.version()).version
                config = managed.config_path.read_text()
                assert 'disabled_plugins = ["io.containerd.grpc.v1.cri"' in config
                assert str(base / "exec" / "containerd" / "containerd.sock") in config

                # A running container survives containerd's death (its shim is
                # a separate process).
                cid = "survivor"
                spec = oci_spec(c.namespace, cid, "/bin/busybox", "sleep", "60")
                task_pid = await c.create_and_start(cid, spec, [rootfs])

                async with c.open_events() as events:
                    old_pid = managed.pid
                    os.kill(old_pid, signal.SIGKILL)
                    assert await managed.wait() == -signal.SIGKILL
                    assert managed.pid is None
                    with trio.fail_after(5):
                        with pytest.raises(ContainerdUnavailable) as err:
                            await events.__anext__()
                        assert str(err.value) == "containerd is not available"
                        with pytest.raises(ContainerdUnavailable):
                            await c.version()
                        with pytest.raises(ContainerdUnavailable):
                            await c.get_task(cid)
                        with pytest.raises(ContainerdUnavailable):
                            async with c.open_events():
                                pass  # pragma: no cover

                await managed.restart()
                assert managed.pid not in (None, old_pid)

                # A hung containerd: the call deadline turns it into Unavailable.
                os.kill(managed.pid, signal.SIGSTOP)
                try:
                    async with open_containerd_client(
                        managed.socket_path, c.namespace, call_timeout=0.5
                    ) as impatient:
                        with trio.fail_after(3), pytest.raises(ContainerdUnavailable):
                            await impatient.version()
                finally:
                    os.kill(managed.pid, signal.SIGCONT)

                assert (await c.version()).version  # same client reconnects
                task = await c.get_task(cid)
                assert (task.status, task.pid) == (TaskStatus.RUNNING, task_pid)
                async with c.open_events() as events:
                    await c.kill(cid, signal.SIGKILL)
                    event = await events.__anext__()
                    assert isinstance(event, TaskExit) and event.container_id == cid
                await c.delete_task(cid)
                await c.delete_container(cid)
            assert managed.pid is None and managed.returncode == 0  # SIGTERM, clean
    finally:
        _remove_tree(base)


async def test_managed_containerd_start_failure() -> None:
    base = Path(tempfile.mkdtemp(prefix="pdmf-"))
    try:
        with trio.fail_after(10):
            async with trio_asyncio.open_loop():
                with pytest.raises(ContainerdStartFailed, match="exited with status 1"):
                    async with open_managed_containerd(
                        base / "data", base / "exec", binary="/bin/false"
                    ):
                        pass  # pragma: no cover
    finally:
        _remove_tree(base)
