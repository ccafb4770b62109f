"""Volume router: list, create, inspect, remove, prune."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from quart import Blueprint, Response, request

from api.context import ctx
from api.http import json_response, no_content, parse_filters, query_bool, read_json
from api.versioning import version_key
from kernel.errors import InvalidParameter

if TYPE_CHECKING:
    from actors.volumes.service import VolumesService

router = Blueprint("volumes", __name__)


class CreateBody(msgspec.Struct, rename="pascal"):
    name: str = ""
    driver: str = ""
    driver_opts: dict[str, str] | None = None
    labels: dict[str, str] | None = None


async def volumes() -> VolumesService:
    return await ctx().actor("volumes")  # type: ignore[no-any-return]


@router.route("/volumes", methods=["GET"])
async def list_volumes() -> Response:
    filters = parse_filters(request.args.get("filters"))
    listed, warnings = await (await volumes()).list_volumes(filters)
    return json_response({"Volumes": listed, "Warnings": warnings or None})


@router.route("/volumes/create", methods=["POST"])
async def create() -> Response:
    body = await read_json(CreateBody)
    volume = await (await volumes()).create(body.name, body.driver, body.driver_opts, body.labels)
    return json_response(volume, status=201)


@router.route("/volumes/<name>", methods=["GET"])
async def inspect(name: str) -> Response:
    return json_response((await volumes()).get(name))


@router.route("/volumes/<name>", methods=["DELETE"])
async def remove(name: str) -> Response:
    await (await volumes()).remove(name, force=query_bool("force"))
    return no_content()


@router.route("/volumes/prune", methods=["POST"])
async def prune() -> Response:
    filters = parse_filters(request.args.get("filters"))
    all_volumes = True
    # API 1.42 on: only anonymous volumes, unless the `all` filter says otherwise.
    version = str(request.scope.get("docker.api_version") or "1.47")
    if version_key(version) >= version_key("1.42"):
        values: list[str] = filters.pop("all", [])
        all_volumes = False
        for value in values:
            if value.lower() in ("1", "true"):
                all_volumes = True
            elif value.lower() not in ("0", "false"):
                raise InvalidParameter(f"invalid filter 'all={value}': invalid value")
    else:
        filters.pop("all", None)
    report: dict[str, Any] = await (await volumes()).prune(filters, all_volumes=all_volumes)
    return json_response(report)
