"""Typed request/reply mailboxes that outlive the actor serving them.

A mailbox is made once by the daemon's wiring and handed to every incarnation of its
actor, so a request sent while the actor restarts waits in the queue instead of failing.
The wait for an actor to *pick up* a request is bounded (then `Unavailable` naming the
actor); once picked up, a request may take as long as it needs (a container wait does).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import outcome
import trio

from kernel.errors import DaemonError, InternalError, Unavailable

Req = TypeVar("Req")
log = logging.getLogger("pydockerd.mailbox")


class Envelope(Generic[Req]):
    """One request and the slot its reply goes into."""

    __slots__ = ("_done", "_result", "picked", "request")

    def __init__(self, request: Req) -> None:
        self.request = request
        self.picked = False
        self._done = trio.Event()
        self._result: outcome.Outcome[Any] | None = None

    def reply(self, value: Any) -> None:
        if not self._done.is_set():
            self._result = outcome.Value(value)
            self._done.set()

    def fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self._result = outcome.Error(error)
            self._done.set()

    @property
    def answered(self) -> bool:
        return self._done.is_set()


class Mailbox(Generic[Req]):
    """A bounded queue of envelopes; `call` sends one and waits for its reply."""

    def __init__(self, owner: str, *, capacity: int = 1024, pickup_timeout: float = 10.0) -> None:
        self.owner = owner
        self.pickup_timeout = pickup_timeout
        self._send, self._recv = trio.open_memory_channel[Envelope[Req]](capacity)

    async def call(self, request: Req) -> Any:
        """Send `request` and return the reply, or raise the actor's error."""
        envelope = Envelope(request)
        try:
            self._send.send_nowait(envelope)
        except trio.WouldBlock:
            raise Unavailable(f"{self.owner} is overloaded, try again later") from None
        try:
            with trio.move_on_after(self.pickup_timeout):
                await envelope._done.wait()
            if not envelope.picked and not envelope.answered:
                envelope.fail(Unavailable(f"{self.owner} is not available"))
            await envelope._done.wait()
        finally:
            # A caller that gave up leaves a marker so the actor skips the request.
            envelope.fail(Unavailable("request abandoned"))
        assert envelope._result is not None
        return envelope._result.unwrap()

    async def receive(self) -> Envelope[Req]:
        """The next envelope whose caller still waits."""
        while True:
            envelope = await self._recv.receive()
            if not envelope.answered:
                envelope.picked = True
                return envelope

    def depth(self) -> int:
        return self._recv.statistics().current_buffer_used


async def serve_mailbox(
    mailbox: Mailbox[Req],
    handler: Callable[[Req], Awaitable[Any]],
    nursery: trio.Nursery,
) -> None:
    """The standard actor loop: each request runs in its own task of `nursery`.

    Daemon errors travel back as they are; anything else is logged and becomes an
    internal error; a cancelled handler (actor stopping) answers `Unavailable`.
    """

    async def run_one(envelope: Envelope[Req]) -> None:
        try:
            envelope.reply(await handler(envelope.request))
        except DaemonError as exc:
            envelope.fail(exc)
        except Exception as exc:
            log.exception("%s: request %r failed", mailbox.owner, envelope.request)
            envelope.fail(InternalError(f"{mailbox.owner}: {type(exc).__name__}: {exc}"))
        except BaseException:
            envelope.fail(Unavailable(f"{mailbox.owner} is restarting"))
            raise

    while True:
        envelope = await mailbox.receive()
        nursery.start_soon(run_one, envelope)
