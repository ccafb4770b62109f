"""The HTTP/1.1 server with real unix sockets and real clients: keep-alive, chunked bodies,
100-continue, streaming, errors, drain, listeners, TLS, and Docker's hijack from raw
sockets, docker-py and a Quart route."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trustme

from api.asgi import Receive, Scope, Send
from api.h1server import H1Server, serve
from tests.daemon import short_tempdir

RAW = b"application/vnd.docker.raw-stream"
HIJACK = (
    b"POST /v1.47/hijack HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n"
    b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
)
PING = b"GET /ping HTTP/1.1\r\nHost: d\r\n\r\n"


# --- the apps -------------------------------------------------------------------------


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


async def respond(send: Send, status: int, body: bytes, ctype: bytes = b"text/plain") -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def echo_session(stream: trio.abc.HalfCloseableStream) -> None:
    """Echo stdin; after its EOF (a half-close) still send a trailer, then close."""
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(b"echo:" + data)
        await stream.send_all(b"trailer")


class App:
    """A raw ASGI app with one route per behaviour; events let tests see inside."""

    def __init__(self) -> None:
        self.gate = trio.Event()  # a streaming route waits on it
        self.cancelled = trio.Event()  # a streaming route was cancelled
        self.in_hijack = trio.Event()
        self.received: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = re.sub(r"^/v[0-9.]+", "", scope["path"])  # docker-py prefixes /v1.47
        take = scope["extensions"]["docker.hijack"]["take"]
        if path == "/ping":
            await respond(send, 200, b"OK")
        elif path == "/upload":
            body = await read_body(receive)
            self.received.append(body)
            await respond(send, 200, str(len(body)).encode())
        elif path == "/noread":
            await respond(send, 200, b"ignored your body")
        elif path == "/hijack":
            await read_body(receive)
            stream = await take(content_type=RAW.decode(), headers=[(b"Api-Version", b"1.47")])
            self.in_hijack.set()
            await echo_session(stream)
            await respond(send, 200, b"dropped")  # ignored: the connection is hijacked
        elif path == "/hijack-unread":  # an empty body needs no read before take()
            await echo_session(await take())
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await self.gate.wait()
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/json-lines":
            start = {"type": "http.response.start", "status": 200, "headers": []}
            await send(start | {"headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"n": 1}\n', "more_body": True})
            await self.gate.wait()
            await send({"type": "http.response.body", "body": b'{"n": 2}\n'})
        elif path == "/forever":
            await self.forever(receive, send)
        elif path == "/flood":  # for a client that never reads
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        elif path == "/boom":
            raise RuntimeError("kaboom")
        elif path == "/boom-after-start":  # the sized head is still unsent: a 500 fits
            headers = [(b"content-length", b"5")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            raise ValueError("late")
        elif path == "/nothing":
            return
        elif path == "/slow":
            await trio.sleep(0.5)
            await respond(send, 200, b"slow done")
        elif path == "/hang":
            try:
                await trio.sleep_forever()
            finally:
                self.cancelled.set()
        else:
            await respond(send, 404, b"no")

    async def forever(self, receive: Receive, send: Send) -> None:
        """Ticks until the client goes away; what an /events stream does."""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                while True:
                    await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                    await trio.sleep(0.05)
        finally:
            self.cancelled.set()


# --- serving and clients --------------------------------------------------------------


def unix_listener(path: str) -> trio.SocketListener:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(64)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


async def eventually(predicate: Callable[[], bool], within: float = 5) -> None:
    """Poll a condition the server has no event for (its statistics)."""
    with trio.fail_after(within):
        for _ in range(int(within / 0.01) + 1):
            if predicate():
                return
            await trio.sleep(0.01)


@asynccontextmanager
async def serving(
    app: Any = None,
    *,
    tls: ssl.SSLContext | None = None,
    graceful_timeout: float = 2.0,
    **options: Any,
) -> AsyncIterator[tuple[H1Server, str]]:
    root = short_tempdir("h1")
    path = str(root / "s.sock")
    listener: trio.abc.Listener[Any] = unix_listener(path)
    if tls is not None:
        listener = trio.SSLListener(listener, tls, https_compatible=False)
    server = H1Server(app or App(), graceful_timeout=graceful_timeout, **options)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                await nursery.start(server.serve_listener, listener)
                try:
                    yield server, path
                finally:
                    server.drain()
                    with trio.fail_after(graceful_timeout + 3):
                        await server.stopped.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Blocking clients run in a thread; their sockets time out, so this is bounded."""
    return await trio.to_thread.run_sync(fn)


def connect(path: str, timeout: float = 10) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def read_head(sock: socket.socket) -> bytes:
    """Byte by byte: stop exactly at the end of the head, leave the rest unread."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise EOFError(head)
        head += byte
    return head


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(data)
        data += chunk
    return data


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        line += read_exact(sock, 1)
    return line


def read_response(sock: socket.socket, *, head_request: bool = False) -> tuple[bytes, bytes]:
    """One response, sized or chunked: (head, body)."""
    head = read_head(sock)
    if head_request:
        return head, b""
    if (length := header(head, b"content-length")) is not None:
        return head, read_exact(sock, int(length))
    assert header(head, b"transfer-encoding") == b"chunked", head
    return head, read_chunked(sock)


def read_chunked(sock: socket.socket) -> bytes:
    body = b""
    while size := int(read_line(sock), 16):
        body += read_exact(sock, size)
        assert read_exact(sock, 2) == b"\r\n"
    assert read_exact(sock, 2) == b"\r\n"
    return body


def read_until_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def is_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# --- plain HTTP -----------------------------------------------------------------------


async def test_keep_alive_get_head_and_reason_phrase() -> None:
    async with serving(server_header="pydockerd-test") as (_, path):

        def client() -> None:
            with connect(path) as sock:
                for _ in range(2):
                    sock.sendall(PING)
                    head, body = read_response(sock)
                    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"OK"
                    assert header(head, b"server") == b"pydockerd-test"
                # HEAD: the head says 2 bytes, none follow; the next response is intact.
                sock.sendall(b"HEAD /ping HTTP/1.1\r\nHost: d\r\n\r\n" + PING)
                head, _ = read_response(sock, head_request=True)
                assert header(head, b"content-length") == b"2"
                assert read_response(sock)[1] == b"OK"
                sock.sendall(b"GET /nope HTTP/1.1\r\nHost: d\r\n\r\n")
                assert read_response(sock)[0].startswith(b"HTTP/1.1 404 Not Found\r\n")

        await in_thread(client)


async def test_chunked_upload_with_expect_100_continue() -> None:
    app = App()
    async with serving(app) as (_, path):

        def client() -> None:
            with connect(path) as sock:
                sock.sendall(
                    b"POST /upload HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )
                assert read_head(sock) == b"HTTP/1.1 100 Continue\r\n\r\n"
                sock.sendall(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                assert read_response(sock)[1] == b"11"
                sock.sendall(PING)  # still alive
                assert read_response(sock)[1] == b"OK"

        await in_thread(client)
    assert app.received == [b"hello world"]


async def test_unread_bodies_are_skipped_or_the_connection_closes() -> None:
    async with serving() as (_, path):

        def client() -> None:
            with connect(path) as sock:  # small unread body: skipped, keep-alive goes on
                sock.sendall(b"POST /noread HTTP/1.1\r\nHost: d\r\nContent-Length: 1000\r\n\r\n")
                sock.sendall(b"z" * 1000 + PING)
                assert read_response(sock)[1] == b"ignored your body"
                assert read_response(sock)[1] == b"OK"
            with connect(path) as sock:  # a big one is not worth reading: close
                sock.sendall(b"POST /noread HTTP/1.1\r\nHost: d\r\nContent-Length: 9999999\r\n\r\n")
                sock.sendall(b"z" * 200_000)
                assert read_response(sock)[1] == b"ignored your body"
                assert is_closed(sock)
            with connect(path) as sock:  # 100-continue never sent: the body never comes
                sock.sendall(
                    b"POST /noread HTTP/1.1\r\nHost: d\r\nContent-Length: 10\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )
                head, _ = read_response(sock)
                assert head.startswith(b"HTTP/1.1 200") and header(head, b"connection") == b"close"
                assert is_closed(sock)

        await in_thread(client)


async def test_streaming_head_flushed_before_the_body() -> None:
    app = App()
    async with serving(app) as (_, path):

        def client() -> bytes:
            with connect(path) as sock:
                sock.sendall(b"GET /stream HTTP/1.1\r\nHost: d\r\n\r\n")
                head = read_head(sock)  # arrives while the app still waits on the gate
                assert not app.gate.is_set()
                assert head.startswith(b"HTTP/1.1 200")
                assert header(head, b"transfer-encoding") == b"chunked"
                trio.from_thread.run_sync(app.gate.set)
                return read_chunked(sock)

        assert await in_thread(client) == b"first"


async def test_errors_are_json_and_never_tracebacks() -> None:
    async with serving() as (_, path):

        def client() -> None:
            with connect(path) as sock:
                sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
                reply = read_until_eof(sock)
                assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
                assert json.loads(reply.partition(b"\r\n\r\n")[2])["message"]
            with connect(path) as sock:  # a broken chunked body: 400, then close
                sock.sendall(
                    b"POST /upload HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"zz\r\nnot a chunk\r\n"
                )
                assert read_until_eof(sock).startswith(b"HTTP/1.1 400")
            for route, message in (
                (b"/boom", "RuntimeError: kaboom"),
                (b"/boom-after-start", "ValueError: late"),
                (b"/nothing", "the handler returned without a response"),
            ):
                with connect(path) as sock:
                    sock.sendall(b"GET " + route + b" HTTP/1.1\r\nHost: d\r\n\r\n")
                    head, body = read_response(sock)
                    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
                    assert header(head, b"content-type") == b"application/json"
                    assert json.loads(body) == {"message": message}
                    assert is_closed(sock)
            with connect(path) as sock:  # headers up to 1 MiB are fine (registry auth)
                big = b"X-Registry-Auth: " + b"a" * 500_000 + b"\r\n"
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: d\r\n" + big + b"\r\n")
                assert read_response(sock)[1] == b"OK"
            with connect(path) as sock:  # beyond that: refused, not buffered forever
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: d\r\nX-Big: " + b"a" * (1 << 20))
                assert read_until_eof(sock).startswith(b"HTTP/1.1 4")

        await in_thread(client)


async def test_client_disconnect_cancels_a_stream() -> None:
    app = App()
    async with serving(app) as (server, path):

        def client() -> None:
            with connect(path) as sock:
                sock.sendall(b"GET /forever HTTP/1.1\r\nHost: d\r\n\r\n")
                assert b"tick" in read_head(sock) + sock.recv(65536)

        await in_thread(client)
        with trio.fail_after(5):
            await app.cancelled.wait()
        await eventually(lambda: server.statistics().connections == 0)


async def test_docker_py_streams_chunked_json() -> None:
    app = App()
    async with serving(app) as (_, path):

        def client() -> list[Any]:
            import docker

            api = docker.APIClient(base_url=f"unix://{path}", version="1.47")
            try:
                response = api._get(api._url("/json-lines"), stream=True)
                items = api._stream_helper(response, decode=True)
                first = next(items)  # while the server still holds the second back
                trio.from_thread.run_sync(app.gate.set)
                return [first, *items]
            finally:
                api.close()

        assert await in_thread(client) == [{"n": 1}, {"n": 2}]


# --- hijack ---------------------------------------------------------------------------


def hijack(sock: socket.socket, request: bytes = HIJACK, early: bytes = b"") -> bytes:
    """Send a hijack request (plus bytes pipelined behind it); return the response head."""
    sock.sendall(request + early)
    return read_head(sock)


async def test_raw_hijack_with_half_close() -> None:
    app = App()
    async with serving(app) as (server, path):

        def client() -> tuple[bytes, bytes, bytes]:
            with connect(path) as sock:
                head = hijack(sock)
                sock.sendall(b"stdin-bytes")
                echoed = read_exact(sock, len(b"echo:stdin-bytes"))
                sock.shutdown(socket.SHUT_WR)  # stdin EOF, not a disconnect
                return head, echoed, read_until_eof(sock)

        results: list[tuple[bytes, bytes, bytes]] = []

        async def run_client() -> None:
            results.append(await in_thread(client))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_client)
            with trio.fail_after(10):
                await app.in_hijack.wait()
            stats = server.statistics()
            assert (stats.hijacked, stats.in_flight, stats.connections) == (1, 1, 1)
        [result] = results
        head, echoed, rest = result
        assert head.startswith(b"HTTP/1.1 101 UPGRADED\r\n")
        assert header(head, b"content-type") == RAW
        assert header(head, b"connection") == b"Upgrade"
        assert header(head, b"upgrade") == b"tcp"
        assert header(head, b"api-version") == b"1.47"
        assert echoed == b"echo:stdin-bytes"
        assert rest == b"trailer"
        await eventually(lambda: server.statistics() == type(stats)(0, 0, 0))


async def test_hijack_on_a_reused_connection_replays_pipelined_bytes() -> None:
    async with serving() as (_, path):

        def client() -> bytes:
            with connect(path) as sock:
                sock.sendall(PING)
                assert read_response(sock)[1] == b"OK"
                assert hijack(sock, early=b"early!").startswith(b"HTTP/1.1 101")
                sock.sendall(b"late")
                sock.shutdown(socket.SHUT_WR)
                return read_until_eof(sock)

        out = await in_thread(client)
        assert out.startswith(b"echo:early!") and out.endswith(b"trailer")
        assert b"late" in out


async def test_hijack_without_upgrade_header_answers_raw_200() -> None:
    async with serving() as (_, path):

        def client(request: bytes) -> tuple[bytes, bytes]:
            with connect(path) as sock:
                head = hijack(sock, request)
                sock.sendall(b"in")
                sock.shutdown(socket.SHUT_WR)
                return head, read_until_eof(sock)

        plain = b"POST /hijack HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n"
        head, out = await in_thread(lambda: client(plain))
        assert head == b"HTTP/1.1 200 OK\r\nContent-Type: " + RAW + b"\r\nApi-Version: 1.47\r\n\r\n"
        assert out == b"echo:intrailer"
        # An empty body (the Go client's attach) need not be read before take().
        unread = b"POST /hijack-unread HTTP/1.1\r\nHost: d\r\nUpgrade: tcp\r\n\r\n"
        head, out = await in_thread(lambda: client(unread))
        assert head.startswith(b"HTTP/1.1 101") and out == b"echo:intrailer"


async def test_docker_py_hijack_on_a_pooled_connection() -> None:
    async with serving() as (_, path):

        def client() -> bytes:
            import docker

            api = docker.APIClient(base_url=f"unix://{path}", version="1.47")
            try:
                assert api._get(api._url("/ping")).text == "OK"  # pools a connection
                response = api._post(
                    api._url("/hijack"),
                    headers={"Connection": "Upgrade", "Upgrade": "tcp"},
                    stream=True,
                )
                assert response.status_code == 101
                sock: Any = api._get_raw_response_socket(response)
                raw = getattr(sock, "_sock", sock)
                raw.sendall(b"from-docker-py")
                raw.shutdown(socket.SHUT_WR)
                return read_until_eof(raw)
            finally:
                api.close()

        assert await in_thread(client) == b"echo:from-docker-pytrailer"


def quart_app(cancelled: trio.Event) -> Any:
    from quart import Response, request
    from quart_trio import QuartTrio

    app = QuartTrio(__name__)

    @app.route("/hijack", methods=["POST"])
    async def hijack_route() -> Response:
        await request.get_data()
        if "late" in request.args:  # let Quart's disconnect watcher read what comes
            await trio.sleep(0.2)
        take = request.scope["extensions"]["docker.hijack"]["take"]
        await echo_session(await take(headers=[(b"Api-Version", b"1.47")]))
        return Response(b"", status=200)  # dropped

    @app.route("/events")
    async def events() -> Response:
        async def lines() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"{}\n"
                    await trio.sleep(0.05)
            finally:
                cancelled.set()

        return Response(lines(), content_type="application/json")

    return app


async def test_quart_route_hijacks_and_a_disconnect_ends_its_stream() -> None:
    cancelled = trio.Event()
    async with serving(quart_app(cancelled)) as (_, path):

        def client() -> tuple[bytes, bytes]:
            with connect(path) as sock:
                sock.sendall(PING)  # Quart's 404, then the hijack on the same connection
                assert read_response(sock)[0].startswith(b"HTTP/1.1 404")
                head = hijack(sock, HIJACK.replace(b"/v1.47", b""))
                sock.sendall(b"q")
                sock.shutdown(socket.SHUT_WR)
                return head, read_until_eof(sock)

        def eager_client() -> bytes:
            # Request, stdin and the half-close all at once, before the 101: Quart's
            # disconnect watcher reads that EOF, which must not end the route.
            with connect(path) as sock:
                sock.sendall(HIJACK.replace(b"/v1.47/hijack", b"/hijack?late=1") + b"eager")
                sock.shutdown(socket.SHUT_WR)
                return read_until_eof(sock).partition(b"\r\n\r\n")[2]

        def events_client() -> None:
            with connect(path) as sock:
                sock.sendall(b"GET /events HTTP/1.1\r\nHost: d\r\n\r\n")
                read_head(sock)
                sock.recv(100)

        head, out = await in_thread(client)
        assert head.startswith(b"HTTP/1.1 101 UPGRADED\r\n") and b"Api-Version: 1.47" in head
        assert out == b"echo:qtrailer"
        assert await in_thread(eager_client) == b"echo:eagertrailer"
        await in_thread(events_client)
        with trio.fail_after(5):
            await cancelled.wait()


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED  # --tlsverify
    return context


def client_tls(ca: trustme.CA, *, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if with_cert:
        ca.issue_cert("client").configure_cert(context)
    return context


class TlsClient:
    """TLS over a blocking socket through memory BIOs, so that `close_write` can do what
    Go's `tls.Conn.CloseWrite` does: send close_notify and keep reading (ssl.SSLSocket
    cannot: its unwrap() also swallows what arrives next)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock, self.incoming, self.outgoing = sock, ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self._call(self.tls.do_handshake)

    def _flush(self) -> None:
        if data := self.outgoing.read():
            self.sock.sendall(data)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        while True:
            try:
                result = fn(*args)
            except ssl.SSLWantReadError:
                self._flush()
                if data := self.sock.recv(65536):
                    self.incoming.write(data)
                else:
                    self.incoming.write_eof()
            else:
                self._flush()
                return result

    def sendall(self, data: bytes) -> None:
        self._call(self.tls.write, data)

    def recv(self, size: int) -> bytes:
        try:
            return bytes(self._call(self.tls.read, size))
        except ssl.SSLZeroReturnError:  # the peer's close_notify
            return b""

    def close_write(self) -> None:
        try:
            self.tls.unwrap()  # sends close_notify, then wants the peer's
        except ssl.SSLWantReadError:
            pass
        self._flush()


async def test_tls_keep_alive_and_hijack_with_close_notify(ca: trustme.CA) -> None:
    context = client_tls(ca, with_cert=True)
    async with serving(tls=server_tls(ca)) as (_, path):

        def client() -> tuple[bytes, bytes]:
            with connect(path) as raw:
                sock: Any = TlsClient(raw, context)  # duck-types the socket helpers
                sock.sendall(PING)
                assert read_response(sock)[1] == b"OK"
                assert hijack(sock).startswith(b"HTTP/1.1 101")
                sock.sendall(b"secret")
                echoed = read_exact(sock, len(b"echo:secret"))
                sock.close_write()  # stdin EOF: the server still sends, then closes
                return echoed, read_until_eof(sock)

        for _ in range(5):
            assert await in_thread(client) == (b"echo:secret", b"trailer")


async def test_tls_client_without_certificate_is_refused(ca: trustme.CA) -> None:
    context = client_tls(ca, with_cert=False)
    async with serving(tls=server_tls(ca)) as (server, path):

        def client() -> bytes:
            # TLS 1.3 reports the server's refusal on the first read after the handshake.
            with connect(path) as raw:
                try:
                    sock = context.wrap_socket(raw, server_hostname="localhost")
                    sock.sendall(PING)
                    return sock.recv(65536)
                except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                    return b"refused"

        assert await in_thread(client) in (b"refused", b"")
        await eventually(lambda: server.statistics().connections == 0)


# --- listeners, drain, shutdown -------------------------------------------------------


async def test_drain_finishes_in_flight_and_closes_idle() -> None:
    async with serving() as (server, path):
        results: dict[str, bytes] = {}
        ready = trio.Event()

        def idle_client() -> None:
            with connect(path) as sock:
                sock.sendall(PING)
                read_response(sock)
                trio.from_thread.run_sync(ready.set)
                results["idle"] = read_until_eof(sock)  # closed by the drain at once

        def slow_client() -> None:
            with connect(path) as sock:
                sock.sendall(b"GET /slow HTTP/1.1\r\nHost: d\r\n\r\n")
                head, results["slow"] = read_response(sock)
                assert header(head, b"connection") == b"close"
                assert is_closed(sock)  # no next request after the drain

        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_thread, idle_client)
            nursery.start_soon(in_thread, slow_client)
            with trio.fail_after(5):
                await ready.wait()
            await eventually(lambda: server.statistics().in_flight == 1)
            server.drain()
            with trio.fail_after(5):
                await server.stopped.wait()
        assert results == {"idle": b"", "slow": b"slow done"}
        with pytest.raises(ConnectionRefusedError):
            connect(path)  # the listener is closed


async def test_drain_deadline_cancels_what_is_left_without_a_500() -> None:
    app = App()
    async with serving(app, graceful_timeout=0.3) as (server, path):
        stuck = connect(path)  # asks for a flood and never reads it
        stuck.sendall(b"GET /flood HTTP/1.1\r\nHost: d\r\n\r\n")
        hung = connect(path)
        hung.sendall(b"GET /hang HTTP/1.1\r\nHost: d\r\n\r\n")
        with stuck, hung:
            await eventually(lambda: server.statistics().in_flight == 2)
            with trio.fail_after(5):
                server.drain()
                await server.stopped.wait()
            assert app.cancelled.is_set()
            assert await in_thread(lambda: read_until_eof(hung)) == b""  # Cancelled ≠ 500


async def serve_one(
    server: H1Server, path: str, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]
) -> None:
    with scope:
        await server.serve_listener(unix_listener(path), task_status=task_status)


async def test_cancelling_one_listener_keeps_its_connections() -> None:
    async with serving() as (server, path):
        second = path + "2"
        scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_one, server, second, scope)

            def request(sock: socket.socket) -> bytes:
                sock.sendall(PING)
                return read_response(sock)[1]

            with connect(second) as kept:
                assert await in_thread(lambda: request(kept)) == b"OK"
                scope.cancel()
                with trio.fail_after(5):
                    while True:  # the listener closes...
                        try:
                            connect(second).close()
                        except ConnectionRefusedError:
                            break
                        await trio.sleep(0.01)
                    # ... and its connection is still served.
                    assert await in_thread(lambda: request(kept)) == b"OK"
            with connect(path) as other:  # and the other listener goes on
                assert await in_thread(lambda: request(other)) == b"OK"


async def test_serve_runs_until_the_trigger() -> None:
    root = short_tempdir("h1")
    path = str(root / "s.sock")
    stop = trio.Event()
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                server = await nursery.start(
                    lambda task_status: serve(
                        App(), [unix_listener(path)], shutdown_trigger=stop.wait,
                        task_status=task_status,
                    )
                )  # fmt: skip
                assert isinstance(server, H1Server)

                def client() -> bytes:
                    with connect(path) as sock:
                        sock.sendall(PING)
                        return read_response(sock)[1]

                assert await in_thread(client) == b"OK"
                stop.set()
            assert server.stopped.is_set()
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_fast_lane_mixes_with_normal_requests() -> None:
    def fast_lane(request: bytes) -> bytes | None:
        if request == b"GET /fast HTTP/1.1\r\nHost: d\r\n\r\n":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast"
        return None

    async with serving(fast_lane=fast_lane) as (_, path):

        def client() -> None:
            fast = b"GET /fast HTTP/1.1\r\nHost: d\r\n\r\n"
            with connect(path) as sock:
                for request, body in ((fast, b"fast"), (PING, b"OK"), (fast, b"fast")):
                    sock.sendall(request)
                    assert read_response(sock)[1] == body
                # Two requests in one read are not for the fast lane: the app answers both.
                sock.sendall(fast + fast)
                assert read_response(sock)[1] == b"no"
                assert read_response(sock)[1] == b"no"

        await in_thread(client)
