"""Network router: create, list, inspect, remove, prune, connect, disconnect."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, request

from api.context import ctx
from api.http import check_filter_keys, json_response, no_content, parse_filters, read_json
from kernel.errors import InvalidParameter

if TYPE_CHECKING:
    from actors.containers.service import ContainersService
    from actors.network.service import NetworkService

router = Blueprint("networks", __name__)

LIST_FILTERS = {"dangling", "driver", "id", "label", "name", "scope", "type"}


async def network() -> NetworkService:
    return await ctx().actor("network")  # type: ignore[no-any-return]


async def containers() -> ContainersService:
    return await ctx().actor("containers")  # type: ignore[no-any-return]


@router.route("/networks", methods=["GET"])
async def list_networks() -> Response:
    filters = parse_filters(request.args.get("filters"))
    check_filter_keys(filters, LIST_FILTERS)
    return json_response((await network()).list_networks(filters))


@router.route("/networks/create", methods=["POST"])
async def create() -> Response:
    body = await read_json(dict[str, Any], allow_empty=False)
    network_id, warning = await (await network()).create(body)
    return json_response({"Id": network_id, "Warning": warning}, status=201)


@router.route("/networks/prune", methods=["POST"])
async def prune() -> Response:
    filters = parse_filters(request.args.get("filters"))
    check_filter_keys(filters, {"label", "until"})
    return json_response(await (await network()).prune(filters))


@router.route("/networks/<ref>", methods=["GET"])
async def inspect(ref: str) -> Response:
    return json_response((await network()).inspect(ref, request.args.get("scope", "")))


@router.route("/networks/<ref>", methods=["DELETE"])
async def remove(ref: str) -> Response:
    await (await network()).remove(ref)
    return no_content()


@router.route("/networks/<ref>/connect", methods=["POST"])
async def connect(ref: str) -> Response:
    body = await read_json(dict[str, Any], allow_empty=False)
    if not body.get("Container"):
        raise InvalidParameter("no container specified")
    service = await network()
    config = body.get("EndpointConfig") or {}
    await (await containers()).change_network(
        body["Container"], lambda container: service.connect(container, ref, config)
    )
    return Response(b"", status=200)


@router.route("/networks/<ref>/disconnect", methods=["POST"])
async def disconnect(ref: str) -> Response:
    body = await read_json(dict[str, Any], allow_empty=False)
    if not body.get("Container"):
        raise InvalidParameter("no container specified")
    service = await network()
    force = bool(body.get("Force"))
    await (await containers()).change_network(
        body["Container"], lambda container: service.disconnect(container, ref, force)
    )
    return Response(b"", status=200)
