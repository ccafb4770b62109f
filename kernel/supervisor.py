"""A one_for_one supervisor for trio actors, after Erlang/OTP.

Each child is an async function `start(*, stopping: trio.Event, task_status)` that calls
`task_status.started(handle)` once it can serve and returns when `stopping` is set.
Children start in order and stop in reverse order; a crash restarts that child alone,
with capped exponential backoff; too many restarts in a window make the supervisor give
up, which the daemon turns into an orderly shutdown with a non-zero exit.
"""

from __future__ import annotations

import logging
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import trio

from kernel.trionics import collapse

log = logging.getLogger("pydockerd.supervisor")

Restart = Literal["permanent", "transient", "temporary"]
StartFn = Callable[..., Awaitable[Any]]


class SupervisorGaveUp(Exception):
    """More than `intensity` restarts happened within `period` seconds."""


class InjectedFault(Exception):
    """A crash asked for by `Supervisor.inject_fault` (fault-isolation tests)."""


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    start: StartFn
    # permanent: always restarted; transient: only after a crash; temporary: never.
    restart: Restart = "permanent"
    # Grace between asking a child to stop and cancelling it; 0 cancels at once.
    shutdown: float = 5.0


class ChildStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One child as `/debug/actors` and the SIGUSR1 dump show it."""

    id: str
    state: str
    restarts: int
    last_error: str | None
    # What the actor's handle reports about its load (`statistics()`), if it does.
    detail: dict[str, Any] | None = None


@dataclass(eq=False)
class _Child:
    spec: ChildSpec
    stopping: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    # Shielded so that an outer cancel still leaves this child its grace period.
    scope: trio.CancelScope = field(default_factory=lambda: trio.CancelScope(shield=True))
    state: str = "starting"
    restarts: int = 0
    last_error: str | None = None
    handle: Any = None
    ever_started: bool = False
    fault: trio.Event = field(default_factory=trio.Event)


class Supervisor:
    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        intensity: int = 5,
        period: float = 30.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self._specs = list(specs)
        self._children: list[_Child] = []
        self._intensity = intensity
        self._period = period
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._restart_times: deque[float] = deque()
        self._gave_up: SupervisorGaveUp | None = None
        self._stop = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every child in order, serve until `stop()` or a give-up, then stop them."""
        try:
            async with trio.open_nursery() as nursery:
                try:
                    for spec in self._specs:
                        child = _Child(spec)
                        self._children.append(child)
                        await nursery.start(self._supervise, child)
                    task_status.started(self)
                    await self._stop.wait()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._stop_all()
        finally:
            self._stop.set()
        if self._gave_up is not None:
            raise self._gave_up

    def stop(self) -> None:
        """Ask for an orderly stop of every child (reverse start order)."""
        self._stop.set()

    def handle(self, child_id: str) -> Any:
        for child in self._children:
            if child.spec.id == child_id:
                return child.handle
        raise KeyError(child_id)

    def inject_fault(self, child_id: str) -> None:
        """Make a running child crash as if its code had raised: the restart path runs."""
        for child in self._children:
            if child.spec.id == child_id and child.state == "running":
                child.fault.set()
                return
        raise KeyError(child_id)

    def statistics(self) -> list[ChildStatus]:
        return [
            ChildStatus(
                id=c.spec.id,
                state=c.state,
                restarts=c.restarts,
                last_error=c.last_error,
                detail=_detail(c.handle),
            )
            for c in self._children
        ]

    async def _supervise(self, child: _Child, *, task_status: trio.TaskStatus[None]) -> None:
        delay = self._backoff_initial
        try:
            with child.scope:
                while True:
                    outcome = "normal"
                    started_at = trio.current_time()
                    try:
                        await self._run_once(child, task_status)
                    except Exception as exc:  # never Cancelled: that is a BaseException
                        if not child.ever_started:
                            child.state = "failed"
                            raise
                        outcome = "crash"
                        cause = collapse(exc)
                        child.last_error = f"{type(cause).__name__}: {cause}"
                        log.error(
                            "actor %s crashed: %s\n%s",
                            child.spec.id,
                            child.last_error,
                            "".join(traceback.format_exception(exc)),
                        )
                    if child.stopping.is_set() or not self._should_restart(child.spec, outcome):
                        child.state = "stopped" if outcome == "normal" else "failed"
                        return
                    if not self._note_restart():
                        child.state = "failed"
                        self._gave_up = SupervisorGaveUp(
                            f"actor {child.spec.id} restarted more than {self._intensity} times "
                            f"in {self._period:g} s; last error: {child.last_error}"
                        )
                        log.critical("%s", self._gave_up)
                        self._stop.set()
                        return
                    # A child that ran a while since its last crash starts over with a short delay.
                    if trio.current_time() - started_at > self._period:
                        delay = self._backoff_initial
                    child.state = "restarting"
                    child.restarts += 1
                    log.warning("restarting actor %s in %.2f s", child.spec.id, delay)
                    with trio.move_on_after(delay):
                        await child.stopping.wait()
                    if child.stopping.is_set():
                        child.state = "stopped"
                        return
                    delay = min(delay * 2, self._backoff_max)
        finally:
            child.done.set()

    async def _run_once(self, child: _Child, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            child.handle = await nursery.start(self._start_child, child)
            child.state = "running"
            if not child.ever_started:
                child.ever_started = True
                task_status.started()

    @staticmethod
    async def _start_child(child: _Child, *, task_status: trio.TaskStatus[Any]) -> None:
        async def crash_on_fault() -> None:
            await child.fault.wait()
            child.fault = trio.Event()
            raise InjectedFault(f"fault injected into actor {child.spec.id}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash_on_fault)
            await child.spec.start(stopping=child.stopping, task_status=task_status)
            nursery.cancel_scope.cancel()

    def _should_restart(self, spec: ChildSpec, outcome: str) -> bool:
        if spec.restart == "temporary":
            return False
        if spec.restart == "transient":
            return outcome == "crash"
        return True

    def _note_restart(self) -> bool:
        """Record a restart; False when the intensity is exceeded."""
        now = trio.current_time()
        self._restart_times.append(now)
        while self._restart_times and now - self._restart_times[0] > self._period:
            self._restart_times.popleft()
        return len(self._restart_times) <= self._intensity

    async def _stop_all(self) -> None:
        for child in reversed(self._children):
            child.stopping.set()
            if child.state in ("running", "restarting", "starting"):
                child.state = "stopping"
            grace = child.spec.shutdown
            with trio.move_on_after(grace if grace > 0 else 0):
                await child.done.wait()
            if not child.done.is_set():
                log.warning("actor %s did not stop within %g s, cancelling", child.spec.id, grace)
                child.scope.cancel()
                with trio.move_on_after(max(grace, 1.0)):
                    await child.done.wait()
            if child.state == "stopping":
                child.state = "stopped"


def _detail(handle: Any) -> dict[str, Any] | None:
    report = getattr(handle, "statistics", None)
    if not callable(report):
        return None
    detail = report()
    return dict(detail) if isinstance(detail, dict) else None
