"""Attach and logs: a container's streams over a hijacked connection or a log response.

Without a TTY every chunk goes out as a multiplexed frame: 8 bytes [stream, 0, 0, 0,
size big-endian] then the payload (stream 1 stdout, 2 stderr); with a TTY bytes are raw.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from actors.containers.logfile import LogEntry, codec_for, read_entries, read_from
from kernel.errors import Conflict, InvalidParameter

if TYPE_CHECKING:
    from actors.containers.service import ContainersService

STREAM_IDS = {"stdin": 0, "stdout": 1, "stderr": 2}
DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p ctrl-q
FOLLOW_POLL = 0.1


def frame(stream: str, data: bytes) -> bytes:
    return struct.pack(">BxxxL", STREAM_IDS[stream], len(data)) + data


def parse_detach_keys(spec: str) -> bytes:
    """`ctrl-p,ctrl-q` style, as the CLI sends them (moby term.ToBytes)."""
    if not spec:
        return DEFAULT_DETACH_KEYS
    keys = bytearray()
    for key in spec.split(","):
        key = key.strip().lower()
        if key.startswith("ctrl-") and len(key) == 6:
            char = key[5]
            if char == "@":
                keys.append(0)
            elif "a" <= char <= "z":
                keys.append(ord(char) - ord("a") + 1)
            elif char in "[\\]^_":
                keys.append(ord(char) - ord("[") + 27)
            else:
                raise InvalidParameter(f"Invalid detach keys ({spec}) provided")
        elif len(key) == 1:
            keys.append(ord(key))
        else:
            raise InvalidParameter(f"Invalid detach keys ({spec}) provided")
    return bytes(keys)


@dataclass(frozen=True)
class AttachOptions:
    stdin: bool
    stdout: bool
    stderr: bool
    logs: bool
    stream: bool
    detach_keys: bytes


async def attach(
    service: ContainersService,
    ref: str,
    options: AttachOptions,
    take: object,
) -> None:
    """Subscribe first, then take the connection (so a `docker run` loses no output)."""
    container = service.store.get(ref)
    if container.State.Paused:
        raise Conflict("You cannot attach to a paused container, unpause it first")
    if container.State.Restarting:
        raise Conflict("You cannot attach to a restarting container, wait until it is running")
    tty = container.tty
    wanted = {name for name, on in (("stdout", options.stdout), ("stderr", options.stderr)) if on}
    hub = service.hub(container.Id)
    async with hub.topic.subscribe() as output:
        stream: trio.abc.HalfCloseableStream = await take(  # type: ignore[operator]
            content_type="application/vnd.docker.raw-stream"
            if tty
            else "application/vnd.docker.multiplexed-stream"
        )
        async with stream:
            if options.logs:
                entries, _ = read_entries(
                    Path(container.LogPath), codec=codec_for(container.log_driver)
                )
                for entry in entries:
                    if entry.stream in wanted:
                        data = entry.log.encode()
                        await stream.send_all(data if tty else frame(entry.stream, data))
            if not options.stream:
                return
            async with trio.open_nursery() as nursery:
                if options.stdin and container.Config.get("OpenStdin"):
                    nursery.start_soon(
                        _pump_stdin, service, container.Id, stream, options.detach_keys,
                        bool(container.Config.get("StdinOnce")) and not tty, nursery.cancel_scope,
                    )  # fmt: skip
                try:
                    async for name, data in output:
                        if name in wanted:
                            await stream.send_all(data if tty else frame(name, data))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the client went away
                nursery.cancel_scope.cancel()
            try:
                await stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def _pump_stdin(
    service: ContainersService,
    cid: str,
    stream: trio.abc.HalfCloseableStream,
    detach_keys: bytes,
    close_on_eof: bool,
    session: trio.CancelScope,
) -> None:
    matched = 0
    while True:
        try:
            data = bytes(await stream.receive_some(65536))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            break  # a half-close: stdin ended, output keeps flowing
        if detach_keys:
            for index, byte in enumerate(data):
                matched = (
                    matched + 1
                    if byte == detach_keys[matched]
                    else (1 if byte == detach_keys[0] else 0)
                )
                if matched == len(detach_keys):
                    await service.write_stdin(cid, data[: index + 1 - len(detach_keys)])
                    session.cancel()  # detach: the session ends, the container runs on
                    return
        await service.write_stdin(cid, data)
    if close_on_eof:
        await service.close_stdin(cid)


async def log_stream(
    service: ContainersService,
    ref: str,
    *,
    stdout: bool,
    stderr: bool,
    follow: bool,
    tail: int,
    since_ns: int,
    until_ns: int,
    timestamps: bool,
) -> AsyncIterator[bytes]:
    if not stdout and not stderr:
        raise InvalidParameter("Bad parameters: you must choose at least one stream")
    container = service.store.get(ref)
    if container.log_driver == "none":
        raise InvalidParameter("configured logging driver does not support reading")
    codec = codec_for(container.log_driver)
    tty = container.tty
    wanted = {name for name, on in (("stdout", stdout), ("stderr", stderr)) if on}
    path = Path(container.LogPath)

    def render(entry: LogEntry) -> bytes:
        data = entry.log.encode()
        if timestamps:
            data = entry.time.encode() + b" " + data
        return data if tty else frame(entry.stream, data)

    async def generate() -> AsyncIterator[bytes]:
        entries, offset = await trio.to_thread.run_sync(
            lambda: read_entries(path, codec=codec, since_ns=since_ns, until_ns=until_ns, tail=tail)
        )
        for entry in entries:
            if entry.stream in wanted:
                yield render(entry)
        if not follow or (until_ns and not container.State.Running):
            return
        while True:
            running = container.State.Running
            more, offset = read_from(path, offset, codec=codec)
            for entry in more:
                if entry.stream in wanted:
                    yield render(entry)
            if not running:
                return
            await trio.sleep(FOLLOW_POLL)

    return generate()
