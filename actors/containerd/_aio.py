"""The asyncio-flavoured half of the containerd bridge.

EVERY asyncio-flavoured line of the bridge lives in this module: grpclib runs on
asyncio, the daemon on trio, and trio-asyncio joins them. Each public coroutine
here is called from trio exactly once per operation through
`trio_asyncio.aio_as_trio` (see client.py), so a crossing (~47 µs) is paid per
operation, not per gRPC call: chatty sequences are batched here.

Objects here must be created inside the trio-asyncio loop (grpclib's Channel
binds the running loop when constructed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from actors.containerd.errors import (
    AlreadyExists,
    ContainerdError,
    ContainerdUnavailable,
    EventStreamBroken,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from actors.containerd.model import TaskEvent, decode_event
from actors.containerd.proto import (
    containers_grpc,
    containers_pb2,
    events_grpc,
    events_pb2,
    introspection_grpc,
    tasks_grpc,
    tasks_pb2,
    version_grpc,
)

R = TypeVar("R")

_BY_STATUS: dict[Status, type[ContainerdError]] = {
    Status.NOT_FOUND: NotFound,
    Status.ALREADY_EXISTS: AlreadyExists,
    Status.FAILED_PRECONDITION: FailedPrecondition,
    Status.INVALID_ARGUMENT: InvalidArgument,
}


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn grpclib and transport failures into our typed errors."""
    try:
        yield
    except GRPCError as exc:
        if exc.status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
            raise ContainerdUnavailable() from exc
        raise _BY_STATUS.get(exc.status, ContainerdError)(exc.message or str(exc)) from exc
    except (OSError, StreamTerminatedError) as exc:
        # Socket missing/refused, connection lost mid-call, or our deadline
        # (asyncio.TimeoutError is the builtin TimeoutError, an OSError).
        raise ContainerdUnavailable() from exc
    except ProtocolError as exc:
        raise ContainerdError(f"containerd protocol error: {exc}") from exc


class AioContainerd:
    """One HTTP/2 connection to containerd, every call tagged with our namespace."""

    def __init__(self, socket_path: str, namespace: str, call_timeout: float | None) -> None:
        self.namespace = namespace
        self.call_timeout = call_timeout
        self.channel = Channel(path=socket_path)
        self.metadata = {"containerd-namespace": namespace}
        self.containers = containers_grpc.ContainersStub(self.channel)
        self.tasks = tasks_grpc.TasksStub(self.channel)
        self.events = events_grpc.EventsStub(self.channel)
        self.version = version_grpc.VersionStub(self.channel)
        self.introspection = introspection_grpc.IntrospectionStub(self.channel)

    @classmethod
    async def connect(
        cls, socket_path: str, namespace: str, call_timeout: float | None
    ) -> AioContainerd:
        # A coroutine only so that construction happens on the asyncio side;
        # grpclib connects lazily (and reconnects after containerd restarts).
        return cls(socket_path, namespace, call_timeout)

    async def close(self) -> None:
        self.channel.close()

    def open_streams(self) -> int:
        """HTTP/2 streams grpclib still holds on our connection: a leak detector
        (0 when idle, 1 per open subscription). Reads grpclib internals."""
        protocol = self.channel._protocol
        return 0 if protocol is None else len(protocol.processor.streams)

    async def call(
        self, method: Callable[..., Awaitable[R]], request: Any, *, wait: bool = False
    ) -> R:
        """One unary call; `wait` drops the deadline (Tasks.Wait blocks until exit)."""
        timeout = None if wait else self.call_timeout
        with translate_errors():
            return await method(request, metadata=self.metadata, timeout=timeout)

    async def create_and_start(
        self,
        container: containers_pb2.CreateContainerRequest,
        task: tasks_pb2.CreateTaskRequest,
    ) -> int:
        """Containers.Create + Tasks.Create + Tasks.Start in one crossing; on
        failure remove what was made. The trio side shields this coroutine: a
        call cancelled mid-flight may still take effect in containerd, and
        cleaning up after that would race it."""
        cid = task.container_id
        await self.call(self.containers.Create, container)
        try:
            await self.call(self.tasks.Create, task)
            started = await self.call(self.tasks.Start, tasks_pb2.StartRequest(container_id=cid))
        except BaseException:
            await self.remove(cid)
            raise
        return started.pid

    async def remove(self, cid: str) -> None:
        """Best effort: kill and reap the container's task, delete it and the
        record (Delete refuses a live task). Each step is bounded by call_timeout."""
        with contextlib.suppress(ContainerdError):
            await self.call(self.tasks.Kill, tasks_pb2.KillRequest(container_id=cid, signal=9))
            await self.call(self.tasks.Wait, tasks_pb2.WaitRequest(container_id=cid))
        with contextlib.suppress(ContainerdError):
            await self.call(self.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=cid))
        with contextlib.suppress(ContainerdError):
            await self.call(self.containers.Delete, containers_pb2.DeleteContainerRequest(id=cid))

    async def subscribe(self, filters: list[str], maxsize: int) -> AioSubscription:
        sub = AioSubscription(self, filters, maxsize)
        try:
            await sub.sent  # connection errors surface here, not at the first get()
        except BaseException:
            await sub.aclose()
            raise
        return sub


class AioSubscription:
    """Events/Subscribe run by one asyncio task that pushes decoded task events
    into a queue; trio pulls with `aio_as_trio(sub.get)()`.

    Why this shape: wrapping grpclib's stream context manager with aio_as_trio
    leaks the HTTP/2 stream when trio cancels it (its __aexit__ runs as a new,
    already-cancelled asyncio task) and leaked streams end up stalling the whole
    channel. Here the stream lives and dies inside one asyncio task, and a
    cancelled `queue.get` is harmless.
    """

    def __init__(self, aio: AioContainerd, filters: list[str], maxsize: int) -> None:
        self._aio = aio
        self._request = events_pb2.SubscribeRequest(filters=filters)
        self._maxsize = maxsize
        # Unbounded on purpose: we enforce maxsize ourselves so that the final
        # error item always fits.
        self._queue: asyncio.Queue[TaskEvent | Exception] = asyncio.Queue()
        self.sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            with translate_errors():
                # No namespace metadata: Subscribe filters by namespace== instead.
                async with self._aio.events.Subscribe.open() as stream:
                    await stream.send_message(self._request, end=True)
                    # containerd sends the response headers only with the first
                    # event, so "request sent" is as ready as it gets.
                    if not self.sent.done():  # cancelled if subscribe() was
                        self.sent.set_result(None)
                    async for envelope in stream:
                        event = decode_event(envelope.event)
                        if event is None:
                            continue
                        if self._queue.qsize() >= self._maxsize:
                            # Raising inside the `async with` resets the stream.
                            raise EventStreamBroken("events subscriber fell behind")
                        self._queue.put_nowait(event)
            raise ContainerdUnavailable()  # the server ended the stream
        except Exception as exc:
            if not self.sent.done():
                self.sent.set_exception(exc)
            self._queue.put_nowait(exc)

    async def get(self) -> TaskEvent:
        item = await self._queue.get()
        if isinstance(item, Exception):
            self._queue.put_nowait(item)  # stay broken for every later get()
            raise item
        return item

    async def aclose(self) -> None:
        self._task.cancel()
        # asyncio.wait never raises, so a cancelled task does not cancel us.
        await asyncio.wait([self._task])
        self._queue.put_nowait(ContainerdError("events subscription closed"))  # late get()s
        if self.sent.done() and not self.sent.cancelled():
            self.sent.exception()  # mark retrieved: no "never retrieved" warning
