"""Byte streams between trio and a worker thread, through an OS pipe.

Blocking libraries (tarfile, gzip) read and write ordinary files; a pipe lets them consume
a request body or produce a response body while trio moves the bytes, without holding
either whole in memory.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import BinaryIO, TypeVar

import trio

T = TypeVar("T")
log = logging.getLogger("pydockerd.threadpipe")
BUFFER = 1 << 20


async def run_with_input(fn: Callable[[BinaryIO], T], chunks: AsyncIterable[bytes]) -> T:
    """Run `fn(file)` in a thread while `chunks` are written into `file`."""
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb", buffering=BUFFER)
    writer = trio.lowlevel.FdStream(write_fd)

    async def pump() -> None:
        try:
            async with writer:
                async for chunk in chunks:
                    await writer.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the reader stopped early (bad input): its error is the one to report

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            try:
                return await trio.to_thread.run_sync(fn, reader)
            finally:
                reader.close()
                nursery.cancel_scope.cancel()
    finally:
        reader.close()


async def stream_output(fn: Callable[[BinaryIO], None]) -> AsyncIterator[bytes]:
    """Run `fn(file)` in a thread and yield what it writes to `file`.

    A plain thread, not trio's pool: this generator holds no nursery, so the consumer may
    stop at any point; closing our end makes the writer fail with EPIPE and end."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=BUFFER) as out:
                fn(out)
        except BrokenPipeError:
            pass
        except BaseException as exc:
            failure.append(exc)
            log.error("stream producer failed: %s", exc)

    threading.Thread(target=work, daemon=True, name="stream-output").start()
    reader = trio.lowlevel.FdStream(read_fd)
    try:
        while data := await reader.receive_some(BUFFER):
            yield data
    finally:
        await reader.aclose()
    if failure:
        raise failure[0]
