"""The containerd bridge actor: one connection to containerd (ours or the user's), its
task events as a topic, and reconnection when containerd goes away.

Other actors take the client with `await bridge.wait_client()`: while containerd is
unreachable they wait a little, then get 503 `containerd is not available`. After every
(re)connection a `Reconnected` marker is published before any event, so subscribers
reconcile with `list_tasks` (an exit missed while disconnected is found that way).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import trio

from actors.containerd.client import ContainerdClient, Version, open_containerd_client
from actors.containerd.errors import ContainerdUnavailable, EventStreamBroken
from actors.containerd.managed import ManagedContainerd
from actors.containerd.model import RuncOptions, TaskEvent
from kernel.errors import StartupError, Unavailable
from kernel.topic import Topic
from kernel.trionics import collapse

log = logging.getLogger("pydockerd.containerd")

WAIT_FOR_CLIENT = 5.0  # how long a request waits for a reconnecting bridge
FIRST_CONNECT = 20.0  # an unreachable --containerd at start is a start failure
DAEMON_TOPICS = ("/tasks/exit", "/tasks/oom")  # what the actors act on; the rest is traffic


class Reconnected(msgspec.Struct, frozen=True):
    """Published after each (re)connection: events may have been missed, reconcile."""


BridgeEvent = TaskEvent | Reconnected


class ContainerdBridge:
    """The bridge actor's handle; it outlives restarts of the actor."""

    def __init__(self, *, address: str, namespace: str, data_root: Path, exec_root: Path) -> None:
        self.address = address
        self.namespace = namespace
        self.runc_root = exec_root / "runtime-runc"
        self.managed = None if address else ManagedContainerd(data_root, exec_root)
        self.events: Topic[BridgeEvent] = Topic(buffer=4096)
        self.version: Version | None = None
        self._runc_version: tuple[str, str] | None = None
        self._client: ContainerdClient | None = None
        self._connected = trio.Event()

    @property
    def socket_path(self) -> str:
        return self.managed.socket_path if self.managed is not None else self.address

    async def wait_client(self) -> ContainerdClient:
        with trio.move_on_after(WAIT_FOR_CLIENT):
            await self._connected.wait()
        if self._client is None:
            raise Unavailable("containerd is not available")
        return self._client

    def _disconnected(self) -> None:
        self._client = None
        if self._connected.is_set():
            self._connected = trio.Event()

    async def run(self, *, stopping: trio.Event, task_status: trio.TaskStatus[Any]) -> None:
        status: trio.TaskStatus[Any] | None = task_status  # None once started
        give_up_at = trio.current_time() + FIRST_CONNECT
        delay = 0.1
        try:
            if self.managed is not None and self.managed.pid is None:
                await self.managed.start()
            while not stopping.is_set():
                try:
                    await self._serve(stopping, status)
                except (ContainerdUnavailable, EventStreamBroken) as exc:
                    if self._client is not None:
                        status, delay = None, 0.1  # it was up: it served and started us
                    self._disconnected()
                    if stopping.is_set():
                        break
                    if status is not None and trio.current_time() > give_up_at:
                        raise StartupError(
                            f"containerd did not answer on {self.socket_path} "
                            f"within {FIRST_CONNECT:g} s"
                        ) from None
                    log.warning("containerd connection lost (%s); reconnecting", exc.message)
                    if self.managed is not None and self.managed.pid is None:
                        log.warning("containerd exited; restarting it")
                        await self._restart_managed(stopping)
                    with trio.move_on_after(delay):
                        await stopping.wait()
                    delay = min(delay * 2, 2.0)
        finally:
            self._disconnected()
            if self.managed is not None:
                with trio.CancelScope(shield=True):
                    await self.managed.stop()

    async def _serve(self, stopping: trio.Event, task_status: trio.TaskStatus[Any] | None) -> None:
        """Connect, subscribe, then pump events until containerd goes or we stop."""
        options = RuncOptions(root=str(self.runc_root))
        async with (
            open_containerd_client(
                self.socket_path, self.namespace, runc_options=options
            ) as client,
            client.open_events(topics=DAEMON_TOPICS) as stream,
        ):
            self.version = await client.version()
            self._client = client
            self._connected.set()
            self.events.publish(Reconnected())
            log.info("containerd %s connected on %s", self.version.version, self.socket_path)
            if task_status is not None:
                task_status.started(self)
            try:
                async with trio.open_nursery() as nursery:

                    async def stop_pumping() -> None:
                        await stopping.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(stop_pumping)
                    async for event in stream:
                        self.events.publish(event)
            except BaseExceptionGroup as group:
                # The pump fails one way at a time: let `run` see that error itself.
                leaf = collapse(group)
                if leaf is group:
                    raise
                raise leaf from None

    async def _restart_managed(self, stopping: trio.Event) -> None:
        assert self.managed is not None
        delay = 0.2
        while not stopping.is_set():
            try:
                await self.managed.restart()
                log.info("containerd restarted (pid %s)", self.managed.pid)
                return
            except Exception as exc:
                log.error("restarting containerd failed: %s", exc)
            with trio.move_on_after(delay):
                await stopping.wait()
            delay = min(delay * 2, 5.0)

    def runc_version(self) -> tuple[str, str]:
        """(version, commit) of the runc on PATH, asked once."""
        if self._runc_version is None:
            try:
                out = subprocess.run(
                    ["runc", "--version"], capture_output=True, text=True, timeout=5
                ).stdout
            except (OSError, subprocess.TimeoutExpired):
                out = ""
            version = commit = ""
            for line in out.splitlines():
                if line.startswith("runc version "):
                    version = line.split()[-1]
                elif line.startswith("commit:"):
                    commit = line.split(":", 1)[1].strip()
            self._runc_version = (version, commit)
        return self._runc_version

    def component_versions(self) -> list[dict[str, Any]]:
        components: list[dict[str, Any]] = []
        if self.version is not None:
            components.append(
                {
                    "Name": "containerd",
                    "Version": self.version.version,
                    "Details": {"GitCommit": self.version.revision},
                }
            )
        runc, commit = self.runc_version()
        if runc:
            components.append({"Name": "runc", "Version": runc, "Details": {"GitCommit": commit}})
        return components

    async def info_fields(self) -> dict[str, Any]:
        _, runc_commit = self.runc_version()
        return {
            "ContainerdCommit": {"ID": self.version.revision if self.version else ""},
            "RuncCommit": {"ID": runc_commit},
            "Containerd": {
                "Address": self.socket_path,
                "Namespaces": {"Containers": self.namespace, "Plugins": ""},
            },
        }
