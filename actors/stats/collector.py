"""The stats collector: one sampler per container, shared by every subscriber, ticking once a
second only while someone listens (moby daemon/stats/collector.go, per container here)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from actors.containerd.errors import ContainerdError
from actors.stats import convert
from kernel.errors import NotFound, Unavailable
from kernel.topic import Subscription, Topic

if TYPE_CHECKING:
    from actors.containerd.bridge import ContainerdBridge

log = logging.getLogger("pydockerd.stats")

INTERVAL = 1.0  # seconds between samples of a stream, as dockerd
RECENT = 5.0  # seconds a sample may serve as the previous one (`precpu_stats`)
READY_WAIT = 5.0  # how long a request waits for a restarting collector before a 503


@dataclass(eq=False)
class _Sampler:
    topic: Topic[dict[str, Any]] = field(default_factory=lambda: Topic(buffer=4))
    users: int = 0
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class StatsCollector:
    """The stats actor's handle; the last samples outlive restarts of the actor."""

    def __init__(self, bridge: ContainerdBridge, *, interval: float = INTERVAL) -> None:
        self._bridge = bridge
        self.interval = interval
        self._samplers: dict[str, _Sampler] = {}
        self._last: dict[str, tuple[float, dict[str, Any]]] = {}
        self._nursery: trio.Nursery | None = None
        self._ready = trio.Event()

    async def run(self, *, stopping: trio.Event, task_status: trio.TaskStatus[Any]) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._ready.set()
                task_status.started(self)
                await stopping.wait()
                nursery.cancel_scope.cancel()
        finally:
            # Streams of a crashed collector end; their clients reconnect to the new one.
            self._nursery, self._ready = None, trio.Event()
            for sampler in self._samplers.values():
                sampler.topic.close()
            self._samplers.clear()

    def statistics(self) -> dict[str, int]:
        return {"samplers": len(self._samplers), "subscribers": self.subscribers()}

    def subscribers(self) -> int:
        return sum(s.users for s in self._samplers.values())

    async def _running_nursery(self) -> trio.Nursery:
        with trio.move_on_after(READY_WAIT):
            await self._ready.wait()
        if self._nursery is None:
            raise Unavailable("stats is not available: the stats collector is restarting")
        return self._nursery

    async def take(self, container_id: str, pid: int) -> dict[str, Any]:
        """One reading now, remembered as the container's latest."""
        await self._running_nursery()
        client = await self._bridge.wait_client()
        try:
            raw = await client.metrics(container_id)
        except ContainerdError as exc:
            raise NotFound(f"no metrics for container {container_id}: {exc.message}") from None
        reading = convert.sample(raw, pid)
        self._last[container_id] = (trio.current_time(), reading)
        return reading

    def previous(self, container_id: str) -> dict[str, Any] | None:
        """The latest reading if it is fresh enough to pair with a new one."""
        taken = self._last.get(container_id)
        if taken is None or trio.current_time() - taken[0] > RECENT:
            self._last.pop(container_id, None)
            return None
        return taken[1]

    @asynccontextmanager
    async def subscribe(
        self, container_id: str, pid: int
    ) -> AsyncIterator[Subscription[dict[str, Any]]]:
        """Readings once a second, each with its predecessor as `precpu_stats`."""
        nursery = await self._running_nursery()
        sampler = self._samplers.get(container_id)
        if sampler is None:
            sampler = self._samplers[container_id] = _Sampler()
            nursery.start_soon(self._tick, container_id, pid, sampler)
        sampler.users += 1
        try:
            async with sampler.topic.subscribe() as subscription:
                yield subscription
        finally:
            sampler.users -= 1
            if sampler.users == 0 and self._samplers.get(container_id) is sampler:
                sampler.scope.cancel()
                del self._samplers[container_id]

    async def _tick(self, container_id: str, pid: int, sampler: _Sampler) -> None:
        with sampler.scope:
            previous = self.previous(container_id)
            while True:
                try:
                    reading = with_previous(await self.take(container_id, pid), previous)
                except NotFound:
                    sampler.topic.close()  # the task is gone: end the streams
                    return
                sampler.topic.publish(reading)
                previous = reading
                await trio.sleep(self.interval)


def with_previous(reading: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    paired = dict(reading)
    paired["preread"] = previous["read"] if previous else convert.ZERO_TIME
    paired["precpu_stats"] = (
        previous["cpu_stats"] if previous else {"cpu_usage": {"total_usage": 0}}
    )
    return paired
