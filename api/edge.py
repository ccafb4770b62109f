"""The ASGI callable the HTTP server calls: version prefix, common headers, the ping fast path
and the router swapper.

Everything a request needs before routing happens here, in plain ASGI, so the cheapest
endpoint (`/_ping`, which every docker CLI call starts with) never pays for Quart, and the
Quart app behind it can be replaced atomically on reload while in-flight requests finish
on the app they started on.
"""

from __future__ import annotations

import json

import trio

from api.asgi import ASGIApp, Headers, Message, Receive, Scope, Send
from api.versioning import API_VERSION, VersionError, split_version

_PING_HEADERS: Headers = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"builder-version", b"1"),
    (b"cache-control", b"no-cache, no-store, must-revalidate"),
    (b"pragma", b"no-cache"),
    (b"swarm", b"inactive"),
]


# Headers that need the full HTTP machinery (h11 handles them).
_NOT_FAST = (b"connection:", b"upgrade:", b"expect:", b"content-length:", b"transfer-encoding:")


def _raw_response(start: Message, body: bytes) -> bytes:
    headers = b"".join(name.title() + b": " + value + b"\r\n" for name, value in start["headers"])
    return b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n" + body


class ApiEdge:
    def __init__(self, *, server: str, experimental: bool = False) -> None:
        self._common: Headers = [
            (b"api-version", API_VERSION.encode()),
            (b"docker-experimental", b"true" if experimental else b"false"),
            (b"ostype", b"linux"),
            (b"server", server.encode()),
        ]
        self._ping_get = self._response_start(200, _PING_HEADERS + [(b"content-length", b"2")])
        self._ping_head = self._response_start(200, _PING_HEADERS + [(b"content-length", b"0")])
        self._app: ASGIApp | None = None
        self._app_ready = trio.Event()
        self._ping_bytes = {
            method: _raw_response(self._ping_get if method == b"GET" else self._ping_head, body)
            for method, body in ((b"GET", b"OK"), (b"HEAD", b""))
        }

    @property
    def common_headers(self) -> Headers:
        """Headers every response carries, hijacked streams included."""
        return list(self._common)

    def swap(self, app: ASGIApp) -> None:
        """Route new requests to `app`; requests already running keep the old one."""
        self._app = app
        self._app_ready.set()

    @property
    def app(self) -> ASGIApp | None:
        return self._app

    def fast_lane(self, request: bytes) -> bytes | None:
        """The whole response to a bare `GET|HEAD /_ping` that came alone in one read."""
        head, sep, rest = request.partition(b"\r\n\r\n")
        if not sep or rest:
            return None
        line, _, headers = head.partition(b"\r\n")
        parts = line.split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in (b"GET", b"HEAD"):
            return None
        path = parts[1]
        if not path.endswith(b"/_ping"):
            return None
        try:
            _, bare = split_version(path.decode("ascii"))
        except (VersionError, UnicodeDecodeError):
            return None
        lowered = headers.lower()
        if bare != "/_ping" or any(h in lowered for h in _NOT_FAST):
            return None
        return self._ping_bytes[parts[0]]

    def _response_start(self, status: int, headers: Headers) -> Message:
        return {"type": "http.response.start", "status": status, "headers": headers + self._common}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            version, path = split_version(scope["path"])
        except VersionError as exc:
            await self._version_error(exc, send)
            return
        method = scope["method"]
        if path == "/_ping" and method in ("GET", "HEAD"):
            if method == "GET":
                await send(self._ping_get)
                await send({"type": "http.response.body", "body": b"OK"})
            else:
                await send(self._ping_head)
                await send({"type": "http.response.body", "body": b""})
            return
        scope["path"] = path
        scope["raw_path"] = path.encode()
        scope["docker.api_version"] = version
        scope["docker.headers"] = self._common
        app = self._app
        if app is None:
            await self._app_ready.wait()
            app = self._app
            assert app is not None
        common = self._common

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *common]
            await send(message)

        await app(scope, receive, send_with_headers)

    async def _version_error(self, exc: VersionError, send: Send) -> None:
        if exc.plain:
            body = (exc.message + "\n").encode()
            content_type = b"text/plain; charset=utf-8"
        else:
            body = json.dumps({"message": exc.message}).encode() + b"\n"
            content_type = b"application/json"
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send(self._response_start(400, headers))
        await send({"type": "http.response.body", "body": body})
