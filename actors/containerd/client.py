"""The trio-flavoured containerd client the rest of the daemon uses.

Every method crosses into asyncio once (`aio_as_trio`) and raises only the
typed errors of `errors.py`. Must be used inside `trio_asyncio.open_loop()`.
Cancelling a call is safe for the connection, but as with any RPC a call
cancelled mid-flight may still take effect in containerd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import trio
from google.protobuf.empty_pb2 import Empty
from trio_asyncio import aio_as_trio

from actors.containerd._aio import AioContainerd, AioSubscription
from actors.containerd.errors import NotFound
from actors.containerd.model import (
    PROCESS_TYPE_URL,
    RESOURCES_TYPE_URL,
    RUNC_RUNTIME,
    SPEC_TYPE_URL,
    ContainerRecord,
    Exit,
    Mount,
    Process,
    ProcessInfo,
    RawAny,
    RuncOptions,
    TaskEvent,
    container_from_pb,
    mount_to_pb,
    pack,
    process_from_pb,
    raw_any,
    runc_options_any,
    timestamp,
)
from actors.containerd.proto import containers_pb2, introspection_pb2, tasks_pb2

DEFAULT_NAMESPACE = "pydockerd"


class Version(NamedTuple):
    version: str
    revision: str


class Plugin(NamedTuple):
    type: str
    id: str
    init_error: str  # "" when the plugin loaded


@asynccontextmanager
async def open_containerd_client(
    socket_path: str,
    namespace: str = DEFAULT_NAMESPACE,
    *,
    call_timeout: float | None = 120.0,
    runc_options: RuncOptions | None = None,
) -> AsyncIterator[ContainerdClient]:
    """A client on one gRPC channel. `call_timeout` bounds every unary call
    except Wait, so a wedged containerd surfaces as ContainerdUnavailable.
    `runc_options` go on every container we create (set `root` under our
    exec-root, or runc state lands in the shim's default /run/containerd/runc)."""
    aio: AioContainerd = await aio_as_trio(AioContainerd.connect)(
        socket_path, namespace, call_timeout
    )
    try:
        yield ContainerdClient(aio, runc_options)
    finally:
        with trio.CancelScope(shield=True):
            await aio_as_trio(aio.close)()


class ContainerdClient:
    def __init__(self, aio: AioContainerd, runc_options: RuncOptions | None = None) -> None:
        self._aio = aio
        self._runc_options = runc_options
        self._t = aio.tasks
        self._c = aio.containers

    @property
    def namespace(self) -> str:
        return self._aio.namespace

    def open_streams(self) -> int:
        """HTTP/2 streams in use on this client's connection (leak detector)."""
        return self._aio.open_streams()

    async def _call(self, method: Any, request: Any, *, wait: bool = False) -> Any:
        return await aio_as_trio(self._aio.call)(method, request, wait=wait)

    # -- server ----------------------------------------------------------

    async def version(self) -> Version:
        r = await self._call(self._aio.version.Version, Empty())
        return Version(r.version, r.revision)

    async def plugins(self, filters: Sequence[str] = ()) -> list[Plugin]:
        req = introspection_pb2.PluginsRequest(filters=filters)
        r = await self._call(self._aio.introspection.Plugins, req)
        return [Plugin(p.type, p.id, p.init_err.message) for p in r.plugins]

    async def server_uuid(self) -> str:
        r = await self._call(self._aio.introspection.Server, Empty())
        return str(r.uuid)

    # -- containers --------------------------------------------------------

    def _container_request(
        self,
        id: str,
        spec_json: bytes,
        runtime: str,
        labels: Mapping[str, str] | None,
        runc_options: RuncOptions | None,
    ) -> containers_pb2.CreateContainerRequest:
        rt = containers_pb2.Container.Runtime(name=runtime)
        # The shim falls back to these when a task brings no options of its own.
        runc_options = runc_options or self._runc_options
        if runc_options is not None:
            rt.options.CopyFrom(runc_options_any(runc_options))
        container = containers_pb2.Container(
            id=id, labels=labels or {}, runtime=rt, spec=pack(SPEC_TYPE_URL, spec_json)
        )
        return containers_pb2.CreateContainerRequest(container=container)

    async def create_container(
        self,
        id: str,
        spec_json: bytes,
        runtime: str = RUNC_RUNTIME,
        labels: Mapping[str, str] | None = None,
        *,
        runc_options: RuncOptions | None = None,
    ) -> None:
        req = self._container_request(id, spec_json, runtime, labels, runc_options)
        await self._call(self._c.Create, req)

    async def get_container(self, id: str) -> ContainerRecord:
        r = await self._call(self._c.Get, containers_pb2.GetContainerRequest(id=id))
        return container_from_pb(r.container)

    async def list_containers(self, filters: Sequence[str] = ()) -> list[ContainerRecord]:
        r = await self._call(self._c.List, containers_pb2.ListContainersRequest(filters=filters))
        return [container_from_pb(c) for c in r.containers]

    async def delete_container(self, id: str) -> None:
        """containerd 1.6 deletes the record even while its task runs (the task
        then lingers unowned): delete the task first."""
        await self._call(self._c.Delete, containers_pb2.DeleteContainerRequest(id=id))

    # -- tasks -------------------------------------------------------------

    @staticmethod
    def _task_request(
        id: str,
        rootfs: Sequence[Mount],
        stdin: str,
        stdout: str,
        stderr: str,
        terminal: bool,
        runc_options: RuncOptions | None,
    ) -> tasks_pb2.CreateTaskRequest:
        req = tasks_pb2.CreateTaskRequest(
            container_id=id,
            rootfs=[mount_to_pb(m) for m in rootfs],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
        )
        if runc_options is not None:
            req.options.CopyFrom(runc_options_any(runc_options))
        return req

    async def create_task(
        self,
        id: str,
        rootfs: Sequence[Mount] = (),
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
        *,
        runc_options: RuncOptions | None = None,
    ) -> int:
        """Create the task (init process not yet running); returns its pid."""
        req = self._task_request(id, rootfs, stdin, stdout, stderr, terminal, runc_options)
        r = await self._call(self._t.Create, req)
        return int(r.pid)

    async def create_and_start(
        self,
        id: str,
        spec_json: bytes,
        rootfs: Sequence[Mount] = (),
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
        *,
        runtime: str = RUNC_RUNTIME,
        labels: Mapping[str, str] | None = None,
        runc_options: RuncOptions | None = None,
    ) -> int:
        """create_container + create_task + start_task in one crossing; returns
        the pid. On failure nothing is left behind; on cancellation the batch
        first finishes (each call is bounded by call_timeout), is then undone, and
        Cancelled propagates: nobody would know about the container otherwise."""
        creq = self._container_request(id, spec_json, runtime, labels, runc_options)
        treq = self._task_request(id, rootfs, stdin, stdout, stderr, terminal, runc_options)
        with trio.CancelScope(shield=True):
            pid = int(await aio_as_trio(self._aio.create_and_start)(creq, treq))
        try:
            await trio.lowlevel.checkpoint()  # a cancel that arrived meanwhile lands here
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await aio_as_trio(self._aio.remove)(id)
            raise
        return pid

    async def start_task(self, id: str, exec_id: str = "") -> int:
        r = await self._call(
            self._t.Start, tasks_pb2.StartRequest(container_id=id, exec_id=exec_id)
        )
        return int(r.pid)

    async def kill(self, id: str, signal: int, all: bool = False, exec_id: str = "") -> None:
        req = tasks_pb2.KillRequest(container_id=id, exec_id=exec_id, signal=signal, all=all)
        await self._call(self._t.Kill, req)

    async def wait(self, id: str, exec_id: str = "") -> Exit:
        """Block until the process exits (no deadline: use a trio cancel scope)."""
        req = tasks_pb2.WaitRequest(container_id=id, exec_id=exec_id)
        r = await self._call(self._t.Wait, req, wait=True)
        return Exit(r.exit_status, timestamp(r.exited_at))

    async def delete_task(self, id: str) -> Exit:
        """Delete a stopped (or never started) task; containerd refuses a running
        one with a plain ContainerdError ("cannot delete a running process")."""
        r = await self._call(self._t.Delete, tasks_pb2.DeleteTaskRequest(container_id=id))
        return Exit(r.exit_status, timestamp(r.exited_at))

    async def exec_process(
        self,
        id: str,
        exec_id: str,
        process_spec_json: bytes,
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
    ) -> None:
        """Add an exec process (an OCI `Process` JSON); start it with start_task."""
        req = tasks_pb2.ExecProcessRequest(
            container_id=id,
            exec_id=exec_id,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
            spec=pack(PROCESS_TYPE_URL, process_spec_json),
        )
        await self._call(self._t.Exec, req)

    async def delete_process(self, id: str, exec_id: str) -> Exit:
        req = tasks_pb2.DeleteProcessRequest(container_id=id, exec_id=exec_id)
        r = await self._call(self._t.DeleteProcess, req)
        return Exit(r.exit_status, timestamp(r.exited_at))

    async def resize_pty(self, id: str, width: int, height: int, exec_id: str = "") -> None:
        req = tasks_pb2.ResizePtyRequest(
            container_id=id, exec_id=exec_id, width=width, height=height
        )
        await self._call(self._t.ResizePty, req)

    async def close_io(self, id: str, exec_id: str = "") -> None:
        """Tell the shim stdin is done (after closing our FIFO write end)."""
        req = tasks_pb2.CloseIORequest(container_id=id, exec_id=exec_id, stdin=True)
        await self._call(self._t.CloseIO, req)

    async def pause(self, id: str) -> None:
        await self._call(self._t.Pause, tasks_pb2.PauseTaskRequest(container_id=id))

    async def resume(self, id: str) -> None:
        await self._call(self._t.Resume, tasks_pb2.ResumeTaskRequest(container_id=id))

    async def list_pids(self, id: str) -> list[ProcessInfo]:
        r = await self._call(self._t.ListPids, tasks_pb2.ListPidsRequest(container_id=id))
        return [
            ProcessInfo(p.pid, raw_any(p.info) if p.HasField("info") else None) for p in r.processes
        ]

    async def metrics(self, id: str) -> RawAny:
        """The task's cgroup metrics, undecoded (`io.containerd.cgroups.v1.Metrics`
        or `...v2.Metrics`)."""
        r = await self._call(self._t.Metrics, tasks_pb2.MetricsRequest(filters=[f"id=={id}"]))
        if not r.metrics:
            raise NotFound(f"no metrics for task {id}")
        return raw_any(r.metrics[0].data)

    async def update_resources(
        self, id: str, resources_json: bytes, annotations: Mapping[str, str] | None = None
    ) -> None:
        """Apply an OCI `LinuxResources` JSON to a running task."""
        req = tasks_pb2.UpdateTaskRequest(
            container_id=id,
            resources=pack(RESOURCES_TYPE_URL, resources_json),
            annotations=annotations or {},
        )
        await self._call(self._t.Update, req)

    async def get_task(self, id: str, exec_id: str = "") -> Process:
        r = await self._call(self._t.Get, tasks_pb2.GetRequest(container_id=id, exec_id=exec_id))
        return process_from_pb(r.process, id)

    async def list_tasks(self, filter: str = "") -> list[Process]:
        r = await self._call(self._t.List, tasks_pb2.ListTasksRequest(filter=filter))
        return [process_from_pb(p, p.id) for p in r.tasks]

    # -- events ------------------------------------------------------------

    @asynccontextmanager
    async def open_events(
        self, *, topics: Sequence[str] = (), buffer: int = 4096
    ) -> AsyncIterator[EventStream]:
        """Subscribe to this namespace's task events: those `topics` ("/tasks/exit", ...),
        or every /tasks/* one.

        Subscribe first, then list and reconcile: there is no replay. If the
        consumer falls more than `buffer` events behind, or containerd goes away,
        iteration raises (EventStreamBroken / ContainerdUnavailable): reopen and
        reconcile with list_tasks.
        """
        scope = f"namespace=={self.namespace}"
        # containerd ORs the filters it is given (and ANDs the parts of one).
        filters = [f'{scope},topic=="{topic}"' for topic in topics]
        filters = filters or [f"{scope},topic~=|^/tasks/|"]
        sub: AioSubscription = await aio_as_trio(self._aio.subscribe)(filters, buffer)
        try:
            yield EventStream(sub)
        finally:
            # Shielded so the asyncio task (and its HTTP/2 stream) always ends.
            with trio.CancelScope(shield=True):
                await aio_as_trio(sub.aclose)()


class EventStream:
    """Async iterator of task events; valid inside `open_events` only."""

    def __init__(self, sub: AioSubscription) -> None:
        self._sub = sub

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> TaskEvent:
        event: TaskEvent = await aio_as_trio(self._sub.get)()
        return event
