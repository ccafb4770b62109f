"""A running process's output: copied from its FIFOs into the log and to every attached
client, never blocking the container (a slow client is dropped, like a slow subscriber)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from actors.containers.stdio import ProcessIO
from kernel.topic import Topic

log = logging.getLogger("pydockerd.containers")

Chunk = tuple[str, bytes]  # ("stdout" | "stderr", data)
READ_SIZE = 64 * 1024


class OutputHub:
    """Fans one process's output out to the log writer and attached clients."""

    def __init__(self) -> None:
        self.topic: Topic[Chunk] = Topic(buffer=256)
        self.done = trio.Event()

    async def copy(self, io: ProcessIO, sink: Callable[[str, bytes], None] | None) -> None:
        """Read stdout and stderr until the shim closes them (EOF); feed `sink` and the topic."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, io.stdout, "stdout", sink)
                if io.stderr is not None:
                    nursery.start_soon(self._pump, io.stderr, "stderr", sink)
        finally:
            self.done.set()
            self.topic.close()

    async def _pump(
        self,
        stream: trio.lowlevel.FdStream,
        name: str,
        sink: Callable[[str, bytes], None] | None,
    ) -> None:
        while True:
            try:
                data = await stream.receive_some(READ_SIZE)
            except (trio.ClosedResourceError, OSError) as exc:
                log.debug("%s stream ended: %s", name, exc)
                return
            if not data:
                return
            if sink is not None:
                try:
                    sink(name, data)
                except OSError as exc:  # a full disk must not stop the container
                    log.error("cannot write container log: %s", exc)
            self.topic.publish((name, data))
