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
