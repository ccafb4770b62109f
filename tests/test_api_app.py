"""The API edge and Quart app as ASGI: versions, errors, JSON input, router swap."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import trio
from quart import Blueprint, Response

from actors.events import EventsService
from api.app import create_app
from api.context import ApiContext, ApiSettings
from api.edge import ApiEdge
from api.http import json_response, read_json
from kernel.errors import Conflict


class Body(msgspec.Struct):
    Name: str


test_routes = Blueprint("test_routes", __name__)


@test_routes.route("/test/echo", methods=["POST"])
async def echo() -> Response:
    body = await read_json(Body)
    return json_response({"Name": body.Name})


@test_routes.route("/test/conflict", methods=["POST"])
async def conflict() -> Response:
    raise Conflict('Conflict. The container name "/x" is already in use')


@test_routes.route("/test/slow", methods=["GET"])
async def slow() -> Response:
    await trio.sleep(0.5)
    return json_response({"done": True})


def make_edge(settings: ApiSettings) -> ApiEdge:
    edge = ApiEdge(server="pydockerd/test (linux)")
    edge.swap(build_app(settings))
    return edge


def build_app(settings: ApiSettings) -> Any:
    context = ApiContext(events=EventsService(), daemon_id="test", config=lambda: None)  # type: ignore[arg-type,return-value]
    app = create_app(context, settings)
    app.register_blueprint(test_routes)
    return app


async def call(
    edge: ApiEdge,
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop()
        await trio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    path_only, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers or [(b"host", b"d")],
        "client": None,
        "server": None,
        "extensions": {},
    }
    await edge(scope, receive, send)  # type: ignore[arg-type]
    start = sent[0]
    header_map = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], header_map, payload


async def test_malformed_json_is_400_with_message() -> None:
    edge = make_edge(ApiSettings())
    ct = [(b"host", b"d"), (b"content-type", b"application/json")]
    status, headers, body = await call(edge, "POST", "/v1.47/test/echo", b'{"Name": ', ct)
    assert status == 400
    assert json.loads(body)["message"].startswith("invalid JSON")
    assert headers["api-version"] == "1.47"
    status, _, body = await call(edge, "POST", "/test/echo", b'{"Name": 5}', ct)
    assert status == 400 and "Expected `str`" in json.loads(body)["message"]
    status, _, body = await call(edge, "POST", "/v1.30/test/echo", b'{"Name": "x"}', ct)
    assert status == 200 and json.loads(body) == {"Name": "x"}
    text = [(b"host", b"d"), (b"content-type", b"text/plain")]
    status, _, body = await call(edge, "POST", "/test/echo", b'{"Name": "x"}', text)
    assert status == 400
    assert json.loads(body)["message"] == (
        "unsupported Content-Type header (text/plain): must be 'application/json'"
    )


async def test_error_classes_and_unknown_paths() -> None:
    edge = make_edge(ApiSettings())
    status, headers, body = await call(edge, "POST", "/test/conflict")
    assert status == 409 and "already in use" in json.loads(body)["message"]
    assert headers["ostype"] == "linux"
    status, _, body = await call(edge, "GET", "/v1.47/no/such/path")
    assert status == 404 and json.loads(body) == {"message": "page not found"}
    status, _, body = await call(edge, "DELETE", "/version")  # wrong method: also 404
    assert status == 404 and json.loads(body) == {"message": "page not found"}
    status, _, _ = await call(edge, "OPTIONS", "/anything/at/all")
    assert status == 200


async def test_swap_keeps_in_flight_requests_on_the_old_app() -> None:
    edge = make_edge(ApiSettings())
    results: list[tuple[int, dict[str, str], bytes]] = []
    async with trio.open_nursery() as nursery:

        async def slow_request() -> None:
            results.append(await call(edge, "GET", "/test/slow"))

        nursery.start_soon(slow_request)
        await trio.sleep(0.1)
        edge.swap(build_app(ApiSettings(cors_header="https://new.example")))
        _, new_headers, _ = await call(edge, "GET", "/version")
        assert new_headers["access-control-allow-origin"] == "https://new.example"
    status, old_headers, body = results[0]
    assert status == 200 and json.loads(body) == {"done": True}
    assert "access-control-allow-origin" not in old_headers


async def test_ping_fast_path() -> None:
    edge = ApiEdge(server="pydockerd/test (linux)")  # no app yet: /_ping answers anyway
    status, headers, body = await call(edge, "GET", "/_ping")
    assert status == 200 and body == b"OK"
    assert headers["api-version"] == "1.47" and headers["builder-version"] == "1"
    status, headers, body = await call(edge, "HEAD", "/v1.24/_ping")
    assert status == 200 and body == b""
