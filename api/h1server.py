"""Our HTTP/1.1 server: trio + h11, serving an ASGI app, with Docker's connection hijack.

Why not hypercorn: it cannot answer `Upgrade: tcp` and treats a client's half-close as a
full close (DESIGN.md §4). Every request's scope carries
`scope["extensions"]["docker.hijack"]["take"]`; a route that has read its body calls
`stream = await take(content_type=..., headers=[...])` and owns the connection from then
on: the server stops reading the socket itself, writes the `101 UPGRADED` head (or a raw
`200 OK` when the client did not ask to upgrade) as its own write, and hands back a
half-closeable stream that first replays bytes already buffered behind the request.

Shape: `run()` owns the nursery every connection lives in; `serve_listener()` is one
accept loop (any number of them, each cancellable alone); `drain()` stops accepting,
closes idle keep-alive connections at once and gives busy ones `graceful_timeout`.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from http import HTTPStatus
from urllib.parse import unquote

import h11
import msgspec
import trio
from h11._state import MIGHT_SWITCH_PROTOCOL  # h11 exports it untyped

from api.asgi import ASGIApp, Headers, Message, Scope

__all__ = ["ASGIApp", "H1Server", "HijackedStream", "ServerStatistics", "serve"]

log = logging.getLogger("pydockerd.http")

READ_SIZE = 64 * 1024
DISCARD_LIMIT = 64 * 1024  # unread request body we still skip to keep a connection alive
CLOSE_TIMEOUT = 1.0  # closing a TLS stream sends close_notify: never wait long for it
RAW_STREAM = "application/vnd.docker.raw-stream"
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
# accept() failures that mean "out of resources right now": back off, keep serving.
_ACCEPT_BACKOFF = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class ServerStatistics(msgspec.Struct, frozen=True):
    connections: int
    in_flight: int
    hijacked: int


class HijackedStream(trio.abc.HalfCloseableStream):
    """The raw connection after a hijack: replays buffered bytes first, half-closes on EOF.

    A client's half-close (stdin EOF) reads as b"" while sending still works.
    """

    def __init__(self, conn: _Connection, buffered: bytes, eof: bool) -> None:
        self._conn = conn
        self._stream = conn.stream
        self._buffered = buffered
        self._eof = eof  # the peer's EOF was already read by the server

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._buffered:
            size = len(self._buffered) if max_bytes is None else max_bytes
            data, self._buffered = self._buffered[:size], self._buffered[size:]
            await trio.lowlevel.checkpoint()
            return data
        if self._eof:
            await trio.lowlevel.checkpoint()
            return b""
        try:
            data = bytes(await self._stream.receive_some(max_bytes))
        except trio.BrokenResourceError:
            data = b""  # a reset (or TLS without close_notify) reads as EOF
        self._eof = not data
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._conn.write(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        # TLS has no half-close in trio (close_notify would need the peer's answer):
        # send nothing; the peer sees EOF when the route returns and the server closes.
        if isinstance(self._stream, trio.abc.HalfCloseableStream):
            try:
                await self._stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        else:
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            await self._stream.aclose()


def _peer(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """ASGI's `client` for TCP peers; unix sockets have none."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream) and stream.socket.family in (
        socket.AF_INET,
        socket.AF_INET6,
    ):
        try:
            host, port, *_ = stream.socket.getpeername()
        except OSError:
            return None
        return str(host), int(port)
    return None


class _Connection:
    """One client socket and its h11 state."""

    def __init__(self, server: H1Server, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.tls = isinstance(stream, trio.SSLStream)
        self.client = _peer(stream)
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_header_bytes)
        self._watcher: tuple[trio.CancelScope, trio.Event] | None = None
        self.idle_scope: trio.CancelScope | None = None
        self.closed_by_peer = False
        self.broken = False  # a write failed or was cut: the framing is lost, close
        self.hijacking = False  # once set, the server never reads this socket again
        # h11 waits for a new request and holds no bytes: the fast lane may answer.
        self.at_cycle_start = True

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        # Not shielded: a cancelled or failed write marks the connection broken instead,
        # so a half-written frame is never followed by another response.
        try:
            await self.stream.send_all(data)
        except BaseException:
            self.broken = True
            raise

    async def send(self, *events: h11.Event) -> None:
        data = b"".join(self.h11.send(e) or b"" for e in events)
        if data:
            await self.write(data)

    async def _read_more(self) -> None:
        """Feed h11 one read, unless the fast lane answers it whole."""
        if self.hijacking:
            await trio.sleep_forever()  # the route owns the socket now
        try:
            data = bytes(await self.stream.receive_some(READ_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed_by_peer = True
        fast = self.server.fast_lane
        reply = fast(data) if fast and self.at_cycle_start and data else None
        if reply is not None:
            await self.write(reply)  # h11 never saw the request and stays idle
        else:
            self.at_cycle_start = False
            self.h11.receive_data(data)

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # h11 types NEED_DATA apart
            if self.closed_by_peer:
                return h11.ConnectionClosed()
            await self._read_more()

    async def wait_disconnect(self) -> None:
        """Return when the peer has gone (EOF); bytes it pipelines meanwhile stay buffered.

        The only read that can be running when a route hijacks: `stop_reading` cancels it.
        """
        while self._watcher is not None:  # one watcher at a time
            await self._watcher[1].wait()
        done = trio.Event()
        with trio.CancelScope() as scope:
            self._watcher = (scope, done)
            try:
                while not self.closed_by_peer and not self.hijacking:
                    if len(self.h11.trailing_data[0]) > DISCARD_LIMIT:
                        await trio.sleep_forever()
                    await self._read_more()
            finally:
                self._watcher = None
                done.set()
        if self.hijacking:
            await trio.sleep_forever()

    async def stop_reading(self) -> None:
        """Stop the disconnect watcher and wait until it is out: nobody reads here again."""
        self.hijacking = True
        if self._watcher is not None:
            scope, done = self._watcher
            scope.cancel()
            await done.wait()


class _Exchange:
    """One request/response on a connection, as the ASGI app sees it."""

    def __init__(self, conn: _Connection, request: h11.Request) -> None:
        self.conn = conn
        self.request = request
        self.method = request.method.decode("ascii")
        self.body_done = False
        self.bad_body: h11.RemoteProtocolError | None = None
        self.response_started = False  # the app sent http.response.start
        self.head_sent = False  # ... and its head went out to h11 and the socket
        self.response_done = False
        self.hijacked = False
        self.expect_continue = self.upgrade = False
        for name, value in request.headers:  # h11 lower-cases names
            if name == b"expect":
                self.expect_continue = value.lower() == b"100-continue"
            elif name == b"upgrade":
                self.upgrade = True
        self._pending_head: h11.Response | None = None

    def scope(self) -> Scope:
        request = self.request
        path, _, query = request.target.partition(b"?")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version.decode("ascii"),
            "method": self.method,
            "scheme": "https" if self.conn.tls else "http",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": list(request.headers),
            "client": self.conn.client,
            "server": None,
            "extensions": {"docker.hijack": {"take": self.take}},
            "state": {},
            "docker.server": self.conn.server,
        }

    async def receive(self) -> Message:
        if self.hijacked:
            await trio.sleep_forever()
        if not self.body_done:
            if self.expect_continue and self.conn.h11.they_are_waiting_for_100_continue:
                await self.conn.send(
                    h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                )
            try:
                event = await self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.bad_body = exc  # answered with 400 once the app returns
                self.body_done = True
                return {"type": "http.disconnect"}
            if isinstance(event, h11.Data):
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            self.body_done = True
            if isinstance(event, h11.EndOfMessage):
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.disconnect"}
        # Body read: what is left to tell the app is that the client went away.
        await self.conn.wait_disconnect()
        if self.hijacked or self.upgrade:
            # A client that asked to upgrade half-closes when it has no stdin (docker
            # run without -i), possibly before the route took the connection: that EOF
            # is the hijacked stream's, never a disconnect.
            await trio.sleep_forever()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.hijacked or self.response_done or (self.bad_body and not self.head_sent):
            return  # nobody to answer, or the server answers 400 itself
        kind = message["type"]
        if kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("http.response.start sent twice")
            self.response_started = True
            headers: Headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            server = self.conn.server
            if server.draining or self.conn.h11.they_are_waiting_for_100_continue:
                # No next request after a drain; an unread 100-continue body never comes.
                headers.append((b"connection", b"close"))
            if server.server_header and not any(k.lower() == b"server" for k, _ in headers):
                headers.append((b"server", server.server_header))
            status = int(message["status"])
            head = h11.Response(
                status_code=status, headers=headers, reason=_REASONS.get(status, b"")
            )
            if any(k.lower() == b"content-length" for k, _ in headers):
                self._pending_head = head  # a sized body follows at once: one write
            else:
                self.head_sent = True
                await self.conn.send(head)  # a stream: flush the head now (docker wait)
        elif kind == "http.response.body":
            if not self.response_started:
                raise RuntimeError("http.response.body before http.response.start")
            parts: list[h11.Event] = []
            if self._pending_head is not None:
                parts.append(self._pending_head)
                self._pending_head = None
                self.head_sent = True
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
        conn = self.conn
        if self.response_started or self.hijacked:
            raise RuntimeError("cannot hijack: a response was already started")
        if conn.h11.their_state is h11.SEND_BODY and not self.body_done:
            # An empty body needs no read (the Go client's attach sends none).
            self.body_done = isinstance(conn.h11.next_event(), h11.EndOfMessage)
        if conn.h11.their_state not in (h11.DONE, MIGHT_SWITCH_PROTOCOL):
            raise RuntimeError("cannot hijack before the request body was read")
        self.hijacked = True
        conn.server._hijacked += 1
        await conn.stop_reading()
        if self.upgrade:
            status = b"HTTP/1.1 101 UPGRADED\r\n"
            fixed = [(b"Connection", b"Upgrade"), (b"Upgrade", b"tcp")]
        else:
            status, fixed = b"HTTP/1.1 200 OK\r\n", []
        lines = [(b"Content-Type", content_type.encode("latin-1")), *fixed, *headers]
        server = conn.server.server_header
        if server is not None and not any(k.lower() == b"server" for k, _ in lines):
            lines.append((b"Server", server))
        head = status + b"".join(k + b": " + v + b"\r\n" for k, v in lines) + b"\r\n"
        # Its own write: docker-py loses stream bytes that share a read with the head.
        await conn.write(head)
        buffered, closed = conn.h11.trailing_data
        return HijackedStream(conn, bytes(buffered), eof=closed or conn.closed_by_peer)


class _ClientGone(Exception):
    """The peer went away while the app was still talking to it: end quietly."""


class H1Server:
    """HTTP/1.1 on any number of trio listeners for one ASGI app (see module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        graceful_timeout: float = 10.0,
        max_header_bytes: int = 1 << 20,
        server_header: str | None = None,
        fast_lane: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        """`fast_lane(request bytes)` may return a whole response for a request that
        arrived alone in one read (the cheapest endpoints: `/_ping`), skipping h11 and
        ASGI; None sends the request the normal way. `server_header` is added to
        responses that carry no `Server` header of their own."""
        self.app = app
        self.graceful_timeout = graceful_timeout
        self.max_header_bytes = max_header_bytes
        self.server_header = server_header.encode("latin-1") if server_header else None
        self.fast_lane = fast_lane
        self.stopped = trio.Event()
        self._drain = trio.Event()
        self._handlers: trio.Nursery | None = None
        self._ready = trio.Event()
        self._accepting: set[trio.CancelScope] = set()
        self._connections: set[_Connection] = set()
        self._in_flight = 0
        self._hijacked = 0

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            connections=len(self._connections), in_flight=self._in_flight, hijacked=self._hijacked
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every connection of every listener; return once drained (see `drain`)."""
        try:
            async with trio.open_nursery() as nursery:
                self._handlers = nursery
                self._ready.set()
                task_status.started()
                await self._drain.wait()
                for scope in self._accepting:
                    scope.cancel()
                for conn in self._connections:
                    if conn.idle_scope is not None:
                        conn.idle_scope.cancel()
                # Busy connections end after their request; whatever is left at the
                # deadline (streams, hijacked sessions) is cancelled.
                nursery.cancel_scope.deadline = trio.current_time() + self.graceful_timeout
        finally:
            self._handlers = None
            self._drain.set()  # cancelled from outside: accept loops must stop too
            for scope in self._accepting:
                scope.cancel()
            self.stopped.set()

    @property
    def draining(self) -> bool:
        return self._drain.is_set()

    def drain(self) -> None:
        """Stop accepting; idle connections close now, busy ones after their request."""
        self._drain.set()

    async def serve_listener(
        self,
        listener: trio.abc.Listener[trio.abc.Stream],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on `listener` until cancelled or drained, then close it. Connections
        run in `run`'s nursery, so they outlive this loop."""
        await self._ready.wait()
        try:
            with trio.CancelScope() as scope:
                self._accepting.add(scope)
                if self._drain.is_set():
                    scope.cancel()
                task_status.started()
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        if exc.errno not in _ACCEPT_BACKOFF:
                            raise
                        log.warning("accept failed: %s", exc)
                        await trio.sleep(0.1)
                        continue
                    if self._handlers is None:
                        await stream.aclose()
                        break
                    self._handlers.start_soon(self._serve_connection, stream)
        finally:
            self._accepting.discard(scope)
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await listener.aclose()

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        conn = _Connection(self, stream)
        self._connections.add(conn)
        try:
            if isinstance(stream, trio.SocketStream):
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            while not self._drain.is_set():
                with trio.CancelScope() as idle:
                    conn.idle_scope = idle
                    try:
                        event = await conn.next_event()
                    except h11.RemoteProtocolError as exc:
                        await self._error(conn, exc.error_status_hint, f"bad request: {exc}")
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
                        self._hijacked -= 1
                if exchange.hijacked or not await self._finish_cycle(exchange):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, _ClientGone):
            pass
        except h11.ProtocolError as exc:
            log.debug("closing connection after a protocol error: %s", exc)
        except Exception:
            # A bug in one connection must not take the server (and all others) down.
            log.exception("HTTP connection failed")
        except BaseExceptionGroup as group:
            # Only cancellation may leave; whatever else rode along is logged here.
            cancelled, rest = group.split(trio.Cancelled)
            if rest is not None:
                log.error("HTTP connection failed", exc_info=rest)
            if cancelled is not None:
                raise cancelled from None
        finally:
            self._connections.discard(conn)
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await stream.aclose()

    async def _run_app(self, exchange: _Exchange) -> None:
        conn = exchange.conn
        error: tuple[int, str] | None = None
        try:
            await self.app(exchange.scope(), exchange.receive, exchange.send)
        except Exception as exc:
            target = exchange.request.target.decode("latin-1")
            if conn.broken or conn.closed_by_peer:
                log.debug("client went away during %s %s: %r", exchange.method, target, exc)
                raise _ClientGone from None
            if exchange.bad_body is None:
                log.exception("unhandled error in %s %s", exchange.method, target)
                error = (500, f"{type(exc).__name__}: {exc}")
        else:
            if not exchange.head_sent and not conn.closed_by_peer:
                error = (500, "the handler returned without a response")
        if exchange.bad_body is not None:
            error = (400, f"bad request body: {exchange.bad_body}")
        if error is not None and not exchange.head_sent and not exchange.hijacked:
            await self._error(conn, *error)

    async def _finish_cycle(self, exchange: _Exchange) -> bool:
        """After the app returned: skip an unread body, then ready the next request."""
        conn = exchange.conn
        h = conn.h11
        # Not DONE: the app gave up mid-response (the framing is lost) or we must close.
        if conn.broken or not exchange.response_done or h.our_state is not h11.DONE:
            return False
        skipped = 0
        try:
            while h.their_state is h11.SEND_BODY and skipped <= DISCARD_LIMIT:
                event = await conn.next_event()
                if isinstance(event, h11.Data):
                    skipped += len(event.data)
                elif not isinstance(event, h11.EndOfMessage):
                    return False
        except h11.RemoteProtocolError:
            return False
        if h.their_state is not h11.DONE:
            return False
        h.start_next_cycle()
        conn.at_cycle_start = not h.trailing_data[0]
        return True

    async def _error(self, conn: _Connection, status: int, message: str) -> None:
        """A JSON error response (`{"message": ...}`), then the connection closes."""
        if conn.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE) or conn.broken:
            return
        body = json.dumps({"message": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        if self.server_header is not None:
            headers.append((b"server", self.server_header))
        try:
            await conn.send(
                h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b"")),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def serve(
    app: ASGIApp,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    graceful_timeout: float = 10.0,
    task_status: trio.TaskStatus[H1Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `listeners` until `shutdown_trigger()` returns, then drain."""
    server = H1Server(app, graceful_timeout=graceful_timeout)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        for listener in listeners:
            await nursery.start(server.serve_listener, listener)
        task_status.started(server)
        await shutdown_trigger()
        server.drain()  # run() and the accept loops return on their own
