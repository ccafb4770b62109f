"""Small helpers every router uses: JSON in and out, query values, filters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
from quart import Response, request

from kernel.errors import InvalidParameter

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def json_response(value: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(value) + b"\n", status=status, content_type="application/json")


def no_content(status: int = 204) -> Response:
    # Always a bytes body: an empty Quart response crashes under trio (DESIGN.md §4).
    return Response(b"", status=status)


async def read_json(kind: type[T], *, allow_empty: bool = True) -> T:
    """Decode the request body into `kind` with dockerd's errors for bad input."""
    body = await request.get_data(cache=False, as_text=False)
    assert isinstance(body, bytes)
    if not body.strip():
        if allow_empty:
            return msgspec.json.decode(b"{}", type=kind)
        raise InvalidParameter("request body is empty")
    content_type = request.headers.get("Content-Type", "")
    if content_type and content_type.split(";")[0].strip() != "application/json":
        raise InvalidParameter(
            f"unsupported Content-Type header ({content_type}): must be 'application/json'"
        )
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.DecodeError as exc:
        raise InvalidParameter(f"invalid JSON: {exc}") from None
    except msgspec.ValidationError as exc:
        raise InvalidParameter(f"invalid JSON: {exc}") from None


def query_bool(name: str, default: bool = False) -> bool:
    """Go's BoolValue: anything but "", "0", "no", "false", "none" is true."""
    value = request.args.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("", "0", "no", "false", "none")


def query_int(name: str, default: int) -> int:
    value = request.args.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidParameter(f"invalid value for {name}: {value!r}") from None


def query_timestamp(name: str) -> int | None:
    """`since`/`until` as the CLI sends them: unix seconds with optional .nanoseconds."""
    raw = request.args.get(name)
    if not raw:
        return None
    seconds, _, fraction = raw.partition(".")
    try:
        return int(seconds) * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])
    except ValueError:
        raise InvalidParameter(f"invalid value for {name}: {raw!r}") from None


def parse_filters(raw: str | None) -> dict[str, list[str]]:
    """Both filter encodings dockerd accepts: {"k":{"v":true}} and the legacy {"k":["v"]}."""
    if not raw:
        return {}
    try:
        decoded = json.loads(raw)
    except ValueError as exc:
        raise InvalidParameter(f"invalid filter: {exc}") from None
    if not isinstance(decoded, Mapping):
        raise InvalidParameter("invalid filter: expected a JSON object")
    filters: dict[str, list[str]] = {}
    for key, values in decoded.items():
        if isinstance(values, Mapping):
            filters[key] = [v for v, on in values.items() if on]
        elif isinstance(values, list) and all(isinstance(v, str) for v in values):
            filters[key] = list(values)
        else:
            raise InvalidParameter(f"invalid filter: bad value for {key!r}")
    return filters


def check_filter_keys(filters: Mapping[str, object], accepted: set[str]) -> None:
    for key in filters:
        if key not in accepted:
            raise InvalidParameter(f"invalid filter '{key}'")
