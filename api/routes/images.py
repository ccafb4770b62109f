"""Image router: list, inspect, history, tag, remove, prune, load, save, import."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, request

from api.context import ctx
from api.http import check_filter_keys, json_response, parse_filters, query_bool
from kernel.errors import DaemonError, InvalidParameter, NotImplementedYet
from kernel.threadpipe import stream_output

if TYPE_CHECKING:
    from actors.images.service import ImagesService

router = Blueprint("images", __name__)

LIST_FILTERS = {"before", "dangling", "label", "reference", "since", "until"}


async def images() -> ImagesService:
    return await ctx().actor("images")  # type: ignore[no-any-return]


def json_lines(messages: Iterable[dict[str, Any]]) -> Response:
    """A chunked `application/json` stream, one message per line, as dockerd writes them."""

    async def lines() -> AsyncIterator[bytes]:
        for message in messages:
            yield json.dumps(message).encode() + b"\r\n"

    return Response(lines(), status=200, content_type="application/json")


def error_message(error: DaemonError) -> dict[str, Any]:
    return {"errorDetail": {"message": error.message}, "error": error.message}


@router.route("/images/json", methods=["GET"])
async def list_images() -> Response:
    filters = parse_filters(request.args.get("filters"))
    check_filter_keys(filters, LIST_FILTERS)
    if request.args.get("filter"):  # the pre-1.25 single reference filter
        filters.setdefault("reference", []).append(request.args["filter"])
    return json_response((await images()).list_images(filters))


@router.route("/images/<path:name>/json", methods=["GET"])
async def inspect(name: str) -> Response:
    return json_response((await images()).inspect(name))


@router.route("/images/<path:name>/history", methods=["GET"])
async def history(name: str) -> Response:
    return json_response((await images()).history(name))


@router.route("/images/<path:name>/tag", methods=["POST"])
async def tag(name: str) -> Response:
    await (await images()).tag(name, request.args.get("repo", ""), request.args.get("tag", ""))
    return Response(b"", status=201)


@router.route("/images/<path:name>", methods=["DELETE"])
async def remove(name: str) -> Response:
    report = await (await images()).remove(
        name, force=query_bool("force"), prune=not query_bool("noprune")
    )
    return json_response(report)


@router.route("/images/prune", methods=["POST"])
async def prune() -> Response:
    filters = parse_filters(request.args.get("filters"))
    check_filter_keys(filters, {"dangling", "label", "until"})
    return json_response(await (await images()).prune(filters))


@router.route("/images/load", methods=["POST"])
async def load() -> Response:
    try:
        messages = await (await images()).load(request.body)  # type: ignore[arg-type]
    except DaemonError as exc:
        return json_lines([error_message(exc)])
    return json_lines({"stream": m + "\n"} for m in messages)


async def _save(names: list[str]) -> Response:
    service = await images()
    targets = service.save_targets(names)  # unknown names fail here, before any byte
    body = stream_output(lambda out: service.save(targets, out))
    return Response(body, status=200, content_type="application/x-tar")


@router.route("/images/get", methods=["GET"])
async def save_many() -> Response:
    names = request.args.getlist("names")
    if not names:
        raise InvalidParameter("no image names given")
    return await _save(names)


@router.route("/images/<path:name>/get", methods=["GET"])
async def save_one(name: str) -> Response:
    return await _save([name])


@router.route("/images/create", methods=["POST"])
async def create() -> Response:
    if request.args.get("fromImage"):
        raise NotImplementedYet("pulling images from a registry is not supported yet")
    source = request.args.get("fromSrc", "")
    if source != "-":
        raise NotImplementedYet("importing from a URL is not supported; use fromSrc=-")
    try:
        image = await (await images()).import_image(
            request.body,  # type: ignore[arg-type]
            repo=request.args.get("repo", ""),
            tag=request.args.get("tag", ""),
            changes=request.args.getlist("changes"),
            message=request.args.get("message", ""),
        )
    except DaemonError as exc:
        return json_lines([error_message(exc)])
    return json_lines([{"status": image.id}])
