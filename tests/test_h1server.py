"""The HTTP/1.1 server with real sockets: keep-alive, chunked bodies, streaming, errors,
drain, and Docker's hijack from raw sockets and from docker-py."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from api.asgi import Receive, Scope, Send
from api.h1server import H1Server
from api.versioning import split_version
from tests.daemon import short_tempdir

STREAM_GATE: dict[str, trio.Event] = {}


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


async def respond(send: Send, status: int, body: bytes, ctype: bytes = b"text/plain") -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    _, path = split_version(scope["path"])  # docker-py prefixes every path with /v1.47
    if path == "/ping":
        await respond(send, 200, b"OK")
    elif path == "/upload":
        await respond(send, 200, str(len(await read_body(receive))).encode())
    elif path == "/hijack":
        await read_body(receive)
        take = scope["extensions"]["docker.hijack"]["take"]
        stream = await take(content_type="application/vnd.docker.raw-stream",
                            headers=[(b"Api-Version", b"1.47")])  # fmt: skip
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(b"echo:" + data)
            # stdin ended (half-close): the server still sends, then closes.
            await stream.send_all(b"trailer")
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await STREAM_GATE.setdefault("open", trio.Event()).wait()
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/forever":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            async with trio.open_nursery() as nursery:

                async def disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(disconnect)
                while True:
                    await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                    await trio.sleep(0.05)
        finally:
            STREAM_GATE.setdefault("cancelled", trio.Event()).set()
    elif path == "/boom":
        raise RuntimeError("kaboom")
    elif path == "/slow":
        await trio.sleep(0.5)
        await respond(send, 200, b"slow done")
    else:
        await respond(send, 404, b"no")


def fast_lane(request: bytes) -> bytes | None:
    if request == b"GET /fast HTTP/1.1\r\nHost: d\r\n\r\n":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast"
    return None


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[H1Server, str]]:
    root = short_tempdir("h1")
    path = str(root / "s.sock")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(16)
    server = H1Server(app, graceful_timeout=2, fast_lane=fast_lane)
    STREAM_GATE.clear()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        await nursery.start(server.serve_listener, trio.SocketListener(sock))
        try:
            yield server, path
        finally:
            server.drain()
            with trio.fail_after(5):
                await server.stopped.wait()
            nursery.cancel_scope.cancel()
    Path(path).unlink(missing_ok=True)


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def read_response(sock: socket.socket) -> tuple[str, bytes]:
    """One Content-Length response: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))  # fmt: skip
    while len(body) < length:
        body += sock.recv(65536)
    return head.decode(), body


def read_until_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


HIJACK = (
    b"POST /v1.47/hijack HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n"
    b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
)


def hijack_exchange(sock: socket.socket, request: bytes, early: bytes = b"") -> bytes:
    sock.sendall(request + early)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: stop exactly at the end of the head
    sock.sendall(b"stdin-bytes")
    return head


async def test_keep_alive_and_upload() -> None:
    async with serving() as (_, path):

        def client() -> None:
            with connect(path) as sock:
                for _ in range(2):
                    sock.sendall(b"GET /ping HTTP/1.1\r\nHost: d\r\n\r\n")
                    head, body = read_response(sock)
                    assert head.startswith("HTTP/1.1 200") and body == b"OK"
                sock.sendall(
                    b"POST /upload HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )
                assert sock.recv(100).startswith(b"HTTP/1.1 100")
                sock.sendall(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                head, body = read_response(sock)
                assert body == b"11"
                sock.sendall(b"HEAD /ping HTTP/1.1\r\nHost: d\r\n\r\n")
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: d\r\n\r\n")
                data = b""
                while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"OK"):
                    data += sock.recv(65536)
                assert data.count(b"OK") == 1  # HEAD got no body

        await trio.to_thread.run_sync(client)


async def test_streaming_head_flushed_before_body() -> None:
    async with serving() as (_, path):

        def client() -> bytes:
            with connect(path) as sock:
                sock.sendall(b"GET /stream HTTP/1.1\r\nHost: d\r\n\r\n")
                head = sock.recv(65536)  # arrives while the app still waits on the gate
                assert head.startswith(b"HTTP/1.1 200")
                assert b"transfer-encoding: chunked" in head.lower()
                trio.from_thread.run_sync(STREAM_GATE.setdefault("open", trio.Event()).set)
                rest = b""
                while not rest.endswith(b"0\r\n\r\n"):
                    rest += sock.recv(65536)
                return rest

        assert b"first" in await trio.to_thread.run_sync(client)


async def test_client_disconnect_cancels_a_stream() -> None:
    async with serving() as (_, path):

        def client() -> None:
            with connect(path) as sock:
                sock.sendall(b"GET /forever HTTP/1.1\r\nHost: d\r\n\r\n")
                assert b"tick" in sock.recv(65536) + sock.recv(65536)

        await trio.to_thread.run_sync(client)
        with trio.fail_after(5):
            await STREAM_GATE.setdefault("cancelled", trio.Event()).wait()


async def test_bad_requests() -> None:
    async with serving() as (_, path):

        def client() -> None:
            with connect(path) as sock:
                sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
                assert read_until_eof(sock).startswith(b"HTTP/1.1 400")
            with connect(path) as sock:
                sock.sendall(b"GET /boom HTTP/1.1\r\nHost: d\r\n\r\n")
                head, body = read_response(sock)
                assert head.startswith("HTTP/1.1 500")
                assert json.loads(body) == {"message": "RuntimeError: kaboom"}
            with connect(path) as sock:  # headers up to 1 MiB are fine
                big = b"X-Registry-Auth: " + b"a" * 200_000 + b"\r\n"
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: d\r\n" + big + b"\r\n")
                assert read_response(sock)[1] == b"OK"

        await trio.to_thread.run_sync(client)


async def test_raw_hijack_with_half_close() -> None:
    async with serving() as (server, path):

        def client() -> tuple[bytes, bytes]:
            with connect(path) as sock:
                head = hijack_exchange(sock, HIJACK)
                echoed = sock.recv(65536)
                sock.shutdown(socket.SHUT_WR)  # stdin EOF, not a disconnect
                return head + b"|" + echoed, read_until_eof(sock)

        head, rest = await trio.to_thread.run_sync(client)
        assert head.startswith(b"HTTP/1.1 101 UPGRADED\r\n")
        for line in (b"Content-Type: application/vnd.docker.raw-stream", b"Connection: Upgrade",
                     b"Upgrade: tcp", b"Api-Version: 1.47"):  # fmt: skip
            assert line in head
        assert head.endswith(b"|echo:stdin-bytes")
        assert rest == b"trailer"
        assert server.statistics().hijacked == 0


async def test_hijack_on_reused_connection_with_pipelined_bytes() -> None:
    async with serving() as (_, path):

        def client() -> bytes:
            with connect(path) as sock:
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: d\r\n\r\n")
                assert read_response(sock)[1] == b"OK"
                head = hijack_exchange(sock, HIJACK, early=b"early!")
                assert head.startswith(b"HTTP/1.1 101")
                sock.shutdown(socket.SHUT_WR)
                return read_until_eof(sock)

        out = await trio.to_thread.run_sync(client)
        assert out.startswith(b"echo:early!")
        assert b"stdin-bytes" in out and out.endswith(b"trailer")


async def test_hijack_without_upgrade_header_answers_200() -> None:
    async with serving() as (_, path):

        def client() -> bytes:
            with connect(path) as sock:
                hijack_exchange(
                    sock, b"POST /hijack HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n"
                )
                sock.shutdown(socket.SHUT_WR)
                return read_until_eof(sock)

        def head_only() -> bytes:
            with connect(path) as sock:
                return hijack_exchange(
                    sock, b"POST /hijack HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n"
                )

        assert (await trio.to_thread.run_sync(client)).endswith(b"trailer")
        head = await trio.to_thread.run_sync(head_only)
        assert head.startswith(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream"
        )


async def test_docker_py_hijack_on_pooled_connection() -> None:
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
                sock: Any = api._get_raw_response_socket(response)
                raw = getattr(sock, "_sock", sock)
                raw.sendall(b"from-docker-py")
                raw.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := raw.recv(65536):
                    data += chunk
                return data
            finally:
                api.close()

        assert await trio.to_thread.run_sync(client) == b"echo:from-docker-pytrailer"


async def test_drain_finishes_in_flight_and_closes_idle() -> None:
    async with serving() as (server, path):
        results: list[bytes] = []

        def idle_client() -> bytes:
            with connect(path) as sock:
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: d\r\n\r\n")
                read_response(sock)
                trio.from_thread.run_sync(ready.set)
                return read_until_eof(sock)  # closed by the drain

        def slow_client() -> None:
            with connect(path) as sock:
                sock.sendall(b"GET /slow HTTP/1.1\r\nHost: d\r\n\r\n")
                results.append(read_response(sock)[1])

        ready = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, idle_client)
            nursery.start_soon(trio.to_thread.run_sync, slow_client)
            await ready.wait()
            await trio.sleep(0.1)
            server.drain()
            with trio.fail_after(5):
                await server.stopped.wait()
        assert results == [b"slow done"]


async def test_fast_lane_mixes_with_normal_requests() -> None:
    async with serving() as (_, path):

        def client() -> None:
            fast = b"GET /fast HTTP/1.1\r\nHost: d\r\n\r\n"
            with connect(path) as sock:
                for request, body in (
                    (fast, b"fast"),
                    (b"GET /ping HTTP/1.1\r\nHost: d\r\n\r\n", b"OK"),
                    (fast, b"fast"),
                ):
                    sock.sendall(request)
                    assert read_response(sock)[1] == body
                # Two requests in one read are not for the fast lane: the app answers both.
                sock.sendall(fast + fast)
                assert read_response(sock)[1] == b"no"
                assert read_response(sock)[1] == b"no"

        await trio.to_thread.run_sync(client)
