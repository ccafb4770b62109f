"""Broadcast topics: the publisher never blocks, a slow subscriber is dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class SubscriberDropped(Exception):
    """The subscriber fell more than its buffer behind and was cut off."""


class Subscription(Generic[T]):
    def __init__(self, buffer: int) -> None:
        self._send, self._recv = trio.open_memory_channel[T](buffer)
        self.dropped = False

    def _offer(self, item: T) -> bool:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self.dropped = True
            self._send.close()
            return False
        except trio.ClosedResourceError:
            return False
        return True

    def __aiter__(self) -> AsyncIterator[T]:
        return self._items()

    async def _items(self) -> AsyncIterator[T]:
        async for item in self._recv:
            yield item
        if self.dropped:
            raise SubscriberDropped("subscriber too slow, dropped")

    async def receive(self) -> T:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            if self.dropped:
                raise SubscriberDropped("subscriber too slow, dropped") from None
            raise


class Topic(Generic[T]):
    def __init__(self, *, buffer: int = 1024) -> None:
        self._buffer = buffer
        self._subscribers: set[Subscription[T]] = set()

    def publish(self, item: T) -> None:
        """Hand `item` to every subscriber without blocking; drop the ones that are full."""
        for subscription in list(self._subscribers):
            if not subscription._offer(item):
                self._subscribers.discard(subscription)

    @asynccontextmanager
    async def subscribe(self, *, buffer: int | None = None) -> AsyncIterator[Subscription[T]]:
        subscription = Subscription[T](self._buffer if buffer is None else buffer)
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)
            subscription._send.close()
            subscription._recv.close()

    def close(self) -> None:
        """End every subscriber's stream normally (daemon shutdown)."""
        for subscription in self._subscribers:
            subscription._send.close()
        self._subscribers.clear()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
