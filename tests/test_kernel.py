"""The kernel: supervisor, mailboxes and topics, on trio's autojump clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from kernel.errors import NotFound, Unavailable
from kernel.mailbox import Mailbox, serve_mailbox
from kernel.supervisor import ChildSpec, Supervisor, SupervisorGaveUp
from kernel.topic import SubscriberDropped, Topic


class Counter:
    """An actor that answers `n` with `n + 1` and crashes on -1."""

    def __init__(self, mailbox: Mailbox[int]) -> None:
        self.mailbox = mailbox
        self.starts = 0

    async def handle(self, n: int) -> int:
        if n == -1:
            raise NotFound("no such number")
        return n + 1

    async def run(self, *, stopping: trio.Event, task_status: Any) -> None:
        self.starts += 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_mailbox, self.mailbox, self.handle, nursery)
            task_status.started(self)
            await stopping.wait()
            nursery.cancel_scope.cancel()


class Crasher:
    """Crashes `crashes` times after starting, then serves until stopped."""

    def __init__(self, crashes: int, *, delay: float = 1.0) -> None:
        self.crashes = crashes
        self.delay = delay
        self.starts = 0

    async def run(self, *, stopping: trio.Event, task_status: Any) -> None:
        self.starts += 1
        task_status.started(self)
        if self.starts <= self.crashes:
            await trio.sleep(self.delay)
            raise RuntimeError(f"crash {self.starts}")
        await stopping.wait()


async def test_crashing_actor_restarts_alone(autojump_clock: trio.testing.MockClock) -> None:
    counter = Counter(Mailbox("counter"))
    crasher = Crasher(crashes=3)
    supervisor = Supervisor(
        [ChildSpec(id="counter", start=counter.run), ChildSpec(id="crasher", start=crasher.run)],
        intensity=5,
        period=30,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        for i in range(20):
            assert await counter.mailbox.call(i) == i + 1
            await trio.sleep(0.5)
        stats = {s.id: s for s in supervisor.statistics()}
        assert stats["crasher"].restarts == 3
        assert stats["crasher"].state == "running"
        assert "crash 3" in (stats["crasher"].last_error or "")
        assert stats["counter"].restarts == 0
        assert counter.starts == 1
        supervisor.stop()
    assert {s.state for s in supervisor.statistics()} == {"stopped"}


async def test_errors_cross_as_typed_replies(autojump_clock: trio.testing.MockClock) -> None:
    counter = Counter(Mailbox("counter"))
    supervisor = Supervisor([ChildSpec(id="counter", start=counter.run)])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        with pytest.raises(NotFound, match="no such number"):
            await counter.mailbox.call(-1)
        supervisor.stop()


async def test_exceeding_intensity_gives_up(autojump_clock: trio.testing.MockClock) -> None:
    counter = Counter(Mailbox("counter"))
    crasher = Crasher(crashes=100, delay=0.1)
    supervisor = Supervisor(
        [ChildSpec(id="counter", start=counter.run), ChildSpec(id="crasher", start=crasher.run)],
        intensity=3,
        period=60,
    )
    with pytest.raises(SupervisorGaveUp, match="crasher restarted more than 3 times"):
        await supervisor.run()
    # The escalation stopped the healthy actor too, in an orderly way.
    assert {s.id: s.state for s in supervisor.statistics()} == {
        "counter": "stopped",
        "crasher": "failed",
    }


async def test_transient_and_temporary(autojump_clock: trio.testing.MockClock) -> None:
    async def finishes(*, stopping: trio.Event, task_status: Any) -> None:
        task_status.started()

    temporary_crasher = Crasher(crashes=1)
    transient_crasher = Crasher(crashes=1)
    supervisor = Supervisor(
        [
            ChildSpec(id="done", start=finishes, restart="transient"),
            ChildSpec(id="temp", start=temporary_crasher.run, restart="temporary"),
            ChildSpec(id="trans", start=transient_crasher.run, restart="transient"),
        ]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(10)
        states = {s.id: (s.state, s.restarts) for s in supervisor.statistics()}
        assert states == {
            "done": ("stopped", 0),
            "temp": ("failed", 0),
            "trans": ("running", 1),
        }
        supervisor.stop()


async def test_stop_in_reverse_order_with_grace(autojump_clock: trio.testing.MockClock) -> None:
    order: list[str] = []

    def actor(name: str, needs: float) -> ChildSpec:
        async def run(*, stopping: trio.Event, task_status: Any) -> None:
            task_status.started()
            await stopping.wait()
            try:
                await trio.sleep(needs)
                order.append(f"{name} clean")
            except trio.Cancelled:
                order.append(f"{name} cancelled")
                raise

        return ChildSpec(id=name, start=run, shutdown=2.0)

    supervisor = Supervisor([actor("first", 1.0), actor("second", 5.0), actor("third", 0.5)])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        supervisor.stop()
    assert order == ["third clean", "second cancelled", "first clean"]


async def test_failing_init_is_raised_where_started() -> None:
    async def broken(*, stopping: trio.Event, task_status: Any) -> None:
        raise OSError("cannot bind")

    supervisor = Supervisor([ChildSpec(id="broken", start=broken)])
    with pytest.raises(ExceptionGroup) as info:
        await supervisor.run()
    assert info.group_contains(OSError, match="cannot bind")


async def test_requests_wait_for_a_restarting_actor(autojump_clock: trio.testing.MockClock) -> None:
    mailbox: Mailbox[int] = Mailbox("counter", pickup_timeout=5.0)
    counter = Counter(mailbox)
    # Nobody serves yet: a call waits, then the actor comes up and answers it.
    async with trio.open_nursery() as nursery:
        results: list[int] = []

        async def ask() -> None:
            results.append(await mailbox.call(41))

        nursery.start_soon(ask)
        await trio.sleep(2)
        supervisor = Supervisor([ChildSpec(id="counter", start=counter.run)])
        await nursery.start(supervisor.run)
        await trio.sleep(1)
        assert results == [42]
        supervisor.stop()
    # Nobody serves at all: Unavailable naming the actor after the bound.
    with pytest.raises(Unavailable, match="counter is not available"):
        await mailbox.call(1)


async def test_slow_subscriber_dropped_publisher_never_blocks() -> None:
    topic: Topic[int] = Topic(buffer=4)
    async with topic.subscribe() as fast, topic.subscribe() as slow:
        for i in range(3):
            topic.publish(i)
            assert await fast.receive() == i
        for i in range(3, 10):
            topic.publish(i)  # slow never reads: it overflows and is cut off
            assert await fast.receive() == i
        assert topic.subscriber_count == 1
        received = []
        with pytest.raises(SubscriberDropped):
            async for item in slow:
                received.append(item)
        assert received == [0, 1, 2, 3]
    assert topic.subscriber_count == 0


async def test_injected_fault_restarts_only_that_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts = {"a": 0, "b": 0}

    def actor(name: str) -> Callable[..., Awaitable[None]]:
        async def run(*, stopping: trio.Event, task_status: trio.TaskStatus[Any]) -> None:
            starts[name] += 1
            task_status.started(name)
            await stopping.wait()

        return run

    supervisor = Supervisor([ChildSpec(id=n, start=actor(n)) for n in starts])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        supervisor.inject_fault("b")
        await trio.sleep(1)
        status = {c.id: c for c in supervisor.statistics()}
        assert starts == {"a": 1, "b": 2}
        assert status["b"].restarts == 1 and status["b"].state == "running"
        assert status["b"].last_error == "InjectedFault: fault injected into actor b"
        assert status["a"].restarts == 0
        supervisor.stop()
