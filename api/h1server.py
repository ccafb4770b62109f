"""Our HTTP/1.1 server: trio + h11, serving an ASGI app, with Docker's connection hijack.

Why not hypercorn: it cannot answer `Upgrade: tcp` and treats a client's half-close as a
full close (DESIGN.md §4). Every request's scope carries
`scope["extensions"]["docker.hijack"]["take"]`; a route that has read its body calls
`stream = await take(content_type=..., headers=[...])` and owns the connection from then
on: the server writes the `101 UPGRADED` head (or a raw `200 OK` when the client did not
ask to upgrade) as its own write, stops reading the socket itself, and hands back a
half-closeable stream that first replays bytes already buffered behind the request.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterable
from urllib.parse import unquote

import h11
import msgspec
import trio
from h11._state import MIGHT_SWITCH_PROTOCOL

from api.asgi import ASGIApp, Headers, Message, Scope

log = logging.getLogger("pydockerd.http")

READ_SIZE = 64 * 1024
DISCARD_LIMIT = 64 * 1024  # unread request body we still skip to keep a connection alive
RAW_STREAM = "application/vnd.docker.raw-stream"


class ServerStatistics(msgspec.Struct, frozen=True):
    connections: int
    in_flight: int
    hijacked: int


class HijackedStream(trio.abc.HalfCloseableStream):
    """The raw connection after a hijack: replays buffered bytes first, half-closes on EOF."""

    def __init__(self, stream: trio.abc.Stream, buffered: bytes) -> None:
        self._stream = stream
        self._buffered = buffered

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._buffered:
            size = len(self._buffered) if max_bytes is None else max_bytes
            data, self._buffered = self._buffered[:size], self._buffered[size:]
            await trio.lowlevel.checkpoint()
            return data
        try:
            return bytes(await self._stream.receive_some(max_bytes))
        except trio.BrokenResourceError:
            return b""  # a reset after the client is gone reads as EOF

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        # TLS has no half-close here: the route closes the connection when it is done.
        if isinstance(self._stream, trio.abc.HalfCloseableStream):
            try:
                await self._stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Exchange:
    """One request/response on a connection, as the ASGI app sees it."""

    def __init__(self, conn: _Connection, request: h11.Request) -> None:
        self.conn = conn
        self.request = request
        self.method = request.method.decode("ascii")
        self.body_done = False
        self.response_started = False
        self.response_done = False
        self.hijacked = False
        self.expect_continue = any(
            k == b"expect" and v.lower() == b"100-continue" for k, v in request.headers
        )
        self.upgrade = any(k == b"upgrade" for k, v in request.headers)
        self._pending_head: h11.Response | None = None

    def scope(self) -> Scope:
        target = self.request.target
        path, _, query = target.partition(b"?")
        server = self.conn.server
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.request.http_version.decode("ascii"),
            "method": self.method,
            "scheme": "https" if self.conn.tls else "http",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in self.request.headers],
            "client": None,
            "server": None,
            "extensions": {"docker.hijack": {"take": self.take}},
            "state": {},
            "docker.server": server,
        }

    async def receive(self) -> Message:
        if self.hijacked:
            await trio.sleep_forever()
        if not self.body_done:
            if self.expect_continue and self.conn.h11.they_are_waiting_for_100_continue:
                await self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
            event = await self.conn.next_event()
            if isinstance(event, h11.Data):
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            if isinstance(event, h11.EndOfMessage):
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.disconnect"}
        # Body read: what is left to tell the app is that the client went away.
        await self.conn.wait_disconnect()
        if self.hijacked:
            await trio.sleep_forever()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.hijacked or self.response_done:
            return
        kind = message["type"]
        if kind == "http.response.start":
            headers: Headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            head = h11.Response(status_code=message["status"], headers=headers, reason=b"")
            self.response_started = True
            if any(k.lower() == b"content-length" for k, _ in headers):
                self._pending_head = head  # goes out with the body in one write
            else:
                await self.conn.send(head)  # a stream: flush the head at once
        elif kind == "http.response.body":
            parts: list[h11.Event] = []
            if self._pending_head is not None:
                parts.append(self._pending_head)
                self._pending_head = None
            body = message.get("body", b"")
            if body and self.method != "HEAD":
                parts.append(h11.Data(data=body))
            if not message.get("more_body", False):
                parts.append(h11.EndOfMessage())
                self.response_done = True
            await self.conn.send(*parts)

    async def take(
        self, content_type: str = RAW_STREAM, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> trio.abc.HalfCloseableStream:
        """Hand the connection to the route (see the module docstring)."""
        if self.response_started or self.hijacked:
            raise RuntimeError("cannot hijack: a response was already sent")
        if self.conn.h11.their_state not in (h11.DONE, MIGHT_SWITCH_PROTOCOL):
            raise RuntimeError("cannot hijack before the request body was read")
        self.hijacked = True
        await self.conn.stop_reading()
        if self.upgrade:
            status = b"HTTP/1.1 101 UPGRADED\r\n"
            fixed = [(b"Connection", b"Upgrade"), (b"Upgrade", b"tcp")]
        else:
            status, fixed = b"HTTP/1.1 200 OK\r\n", []
        lines = [(b"Content-Type", content_type.encode()), *fixed, *headers]
        head = status + b"".join(k + b": " + v + b"\r\n" for k, v in lines) + b"\r\n"
        await self.conn.stream.send_all(head)
        buffered, _closed = self.conn.h11.trailing_data
        self.conn.server._hijacked += 1
        return HijackedStream(self.conn.stream, bytes(buffered))


class _Connection:
    def __init__(self, server: H1Server, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.tls = isinstance(stream, trio.SSLStream)
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_header_bytes)
        self._read_lock = trio.Lock()
        self._reader_scope: trio.CancelScope | None = None
        self.idle_scope: trio.CancelScope | None = None
        self.closed_by_peer = False
        self.hijacking = False  # once set, the server never reads this socket again
        # h11 waits for a new request and holds no bytes: the fast lane may answer.
        self.at_cycle_start = True

    async def send(self, *events: h11.Event) -> None:
        data = b"".join(self.h11.send(e) or b"" for e in events)
        if data:
            # One frame is never cut in half by a cancel (DESIGN.md: protect frames, not calls).
            with trio.CancelScope(shield=True):
                await self.stream.send_all(data)

    async def _read_more(self) -> None:
        async with self._read_lock:
            if not self.hijacking:
                with trio.CancelScope() as scope:
                    self._reader_scope = scope
                    try:
                        data = bytes(await self.stream.receive_some(READ_SIZE))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        self.closed_by_peer = True
                    fast = self.server.fast_lane
                    reply = (
                        fast(data) if fast is not None and self.at_cycle_start and data else None
                    )
                    if reply is not None:
                        # Answered without h11, which never saw the request and stays idle.
                        with trio.CancelScope(shield=True):
                            await self.stream.send_all(reply)
                    else:
                        self.at_cycle_start = False
                        self.h11.receive_data(data)
                self._reader_scope = None
        if self.hijacking:
            await trio.sleep_forever()  # the route owns the socket now

    async def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.closed_by_peer:
                return h11.ConnectionClosed()
            await self._read_more()

    async def wait_disconnect(self) -> None:
        """Return when the peer has gone (EOF); bytes it pipelines meanwhile stay buffered."""
        while not self.closed_by_peer:
            if len(self.h11.trailing_data[0]) > DISCARD_LIMIT:
                await trio.sleep_forever()
            await self._read_more()

    async def stop_reading(self) -> None:
        """Cancel a read in progress and wait until it is out: nobody reads here again."""
        self.hijacking = True
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        async with self._read_lock:
            pass


class _ClientGone(Exception):
    """The peer closed while the app was still talking to it: end this connection quietly."""


_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


def _split_gone(exc: Exception) -> tuple[BaseException | None, BaseException | None]:
    """(the 'peer went away' part, everything else) of a possibly grouped exception."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(_GONE)
    return (exc, None) if isinstance(exc, _GONE) else (None, exc)


class H1Server:
    def __init__(
        self,
        app: ASGIApp,
        *,
        graceful_timeout: float = 10.0,
        max_header_bytes: int = 1 << 20,
        fast_lane: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        """`fast_lane(request bytes)` may return a whole response for a request that
        arrived alone in one read (the cheapest endpoints: `/_ping`), skipping h11 and
        ASGI; None sends the request the normal way."""
        self.app = app
        self.graceful_timeout = graceful_timeout
        self.max_header_bytes = max_header_bytes
        self.fast_lane = fast_lane
        self.stopped = trio.Event()
        self._drain = trio.Event()
        self._handlers: trio.Nursery | None = None
        self._ready = trio.Event()
        self._connections: set[_Connection] = set()
        self._in_flight = 0
        self._hijacked = 0

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            connections=len(self._connections), in_flight=self._in_flight, hijacked=self._hijacked
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every connection; return once drained (see `drain`)."""
        try:
            async with trio.open_nursery() as nursery:
                self._handlers = nursery
                self._ready.set()
                task_status.started()
                await self._drain.wait()
                for conn in list(self._connections):
                    if conn.idle_scope is not None:
                        conn.idle_scope.cancel()
                nursery.cancel_scope.deadline = trio.current_time() + self.graceful_timeout
        finally:
            self._handlers = None
            self.stopped.set()

    def drain(self) -> None:
        """Stop taking requests; idle connections close now, busy ones after their request."""
        self._drain.set()

    async def serve_listener(
        self,
        listener: trio.abc.Listener[trio.abc.Stream],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on `listener` until cancelled or drained; connections live in `run`."""
        await self._ready.wait()
        task_status.started()
        while not self._drain.is_set():
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            handlers = self._handlers
            if handlers is None or self._drain.is_set():
                await stream.aclose()
                return
            handlers.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        conn = _Connection(self, stream)
        self._connections.add(conn)
        hijacked = False
        try:
            if isinstance(stream, trio.SocketStream):
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            while not self._drain.is_set():
                with trio.CancelScope() as idle:
                    conn.idle_scope = idle
                    try:
                        event = await conn.next_event()
                    except h11.RemoteProtocolError as exc:
                        await self._bad_request(conn, exc)
                        return
                conn.idle_scope = None
                if idle.cancelled_caught or not isinstance(event, h11.Request):
                    return
                exchange = _Exchange(conn, event)
                self._in_flight += 1
                try:
                    await self._run_app(exchange)
                finally:
                    self._in_flight -= 1
                if exchange.hijacked:
                    hijacked = True
                    return
                if not await self._finish_cycle(conn, exchange):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, _ClientGone):
            pass
        except h11.LocalProtocolError as exc:
            log.debug("closing connection after a protocol error: %s", exc)
        finally:
            self._connections.discard(conn)
            if hijacked:
                self._hijacked -= 1
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def _run_app(self, exchange: _Exchange) -> None:
        try:
            await self.app(exchange.scope(), exchange.receive, exchange.send)
        except Exception as exc:
            gone, other = _split_gone(exc)
            if other is None:
                log.debug(
                    "client went away during %s %s: %s",
                    exchange.method,
                    exchange.request.target,
                    gone,
                )
                raise _ClientGone from None
            log.exception("unhandled error in %s %s", exchange.method, exchange.request.target)
            if not exchange.response_started and not exchange.hijacked:
                body = json.dumps({"message": f"{type(exc).__name__}: {exc}"}).encode()
                await exchange.send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await exchange.send({"type": "http.response.body", "body": body})

    async def _finish_cycle(self, conn: _Connection, exchange: _Exchange) -> bool:
        """After the app returned: skip an unread body, then ready the next request."""
        if not exchange.response_done:
            return False  # the app gave up mid-response: the framing is lost
        skipped = 0
        while conn.h11.their_state is h11.SEND_BODY and skipped <= DISCARD_LIMIT:
            event = await conn.next_event()
            if isinstance(event, h11.Data):
                skipped += len(event.data)
            elif not isinstance(event, h11.EndOfMessage):
                return False
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            conn.at_cycle_start = not conn.h11.trailing_data[0]
            return True
        return False

    async def _bad_request(self, conn: _Connection, exc: h11.RemoteProtocolError) -> None:
        if conn.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = json.dumps({"message": f"bad request: {exc}"}).encode()
        status = exc.error_status_hint or 400
        try:
            await conn.send(
                h11.Response(
                    status_code=status,
                    headers=[
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                ),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
