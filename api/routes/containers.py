"""Container router: create, start, stop, kill, wait, remove, inspect, list, logs, attach..."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, request

from api.context import ctx
from api.http import (
    check_filter_keys,
    json_response,
    no_content,
    parse_filters,
    query_bool,
    query_int,
    query_timestamp,
    read_json,
)
from kernel.errors import DaemonError, InvalidParameter

if TYPE_CHECKING:
    from actors.containers.service import ContainersService
    from actors.images.service import ImagesService

router = Blueprint("containers", __name__)


PS_FILTERS = {"ancestor", "before", "expose", "exited", "health", "id", "isolation", "is-task",
              "label", "name", "network", "publish", "since", "status", "volume"}  # fmt: skip


async def containers() -> ContainersService:
    return await ctx().actor("containers")  # type: ignore[no-any-return]


def _optional_int(name: str) -> int | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidParameter(f"invalid value for {name}: {value!r}") from None


@router.route("/containers/create", methods=["POST"])
async def create() -> Response:
    body = await read_json(dict[str, Any], allow_empty=False)
    cid, warnings = await (await containers()).create(request.args.get("name", ""), body)
    return json_response({"Id": cid, "Warnings": warnings}, status=201)


@router.route("/containers/json", methods=["GET"])
async def list_containers() -> Response:
    filters = parse_filters(request.args.get("filters"))
    check_filter_keys(filters, PS_FILTERS)
    return json_response(
        (await containers()).list_containers(
            filters,
            all_containers=query_bool("all"),
            limit=query_int("limit", -1),
            size=query_bool("size"),
        )
    )


@router.route("/containers/<name>/json", methods=["GET"])
async def inspect(name: str) -> Response:
    data = (await containers()).inspect(name)
    if query_bool("size"):
        service = await containers()
        data["SizeRw"] = service.images.rw_size(data["Id"])
    return json_response(data)


@router.route("/containers/<name>/top", methods=["GET"])
async def top(name: str) -> Response:
    return json_response(await (await containers()).top(name, request.args.get("ps_args", "")))


@router.route("/containers/<name>/stats", methods=["GET"])
async def stats(name: str) -> Response:
    """A sample a second while streaming; `stream=0` pairs a fresh sample with the last
    one taken (or one 0.1 s earlier) instead of dockerd's 1-2 s wait; `one-shot=1` answers
    at once without precpu (moby's semantics otherwise)."""
    from actors.containers import stats as cgroup_stats

    service = await containers()
    container = service.store.get(name)
    stream = query_bool("stream", True)
    one_shot = query_bool("one-shot")
    if stream and one_shot:
        raise InvalidParameter("cannot have stream=true and one-shot=true")
    cgroups_path = f"{service.cgroup_parent}/{container.Id}"

    def reading(previous: dict[str, Any] | None) -> dict[str, Any]:
        running = container.State.Running
        current = cgroup_stats.sample(cgroups_path) if running else cgroup_stats.empty_sample()
        current.update(name=container.Name, id=container.Id)
        current["preread"] = previous["read"] if previous else "0001-01-01T00:00:00Z"
        current["precpu_stats"] = (
            previous["cpu_stats"] if previous else {"cpu_usage": {"total_usage": 0}}
        )
        if running:
            cgroup_stats.remember(container.Id, current)
        return current

    network = ctx().actors.get("network")  # read here: no app context while streaming

    async def samples() -> AsyncIterator[bytes]:
        previous = None if stream or one_shot else cgroup_stats.recent(container.Id)
        if previous is None and not stream and not one_shot:
            previous = reading(None)
            await trio.sleep(0.1)
        while True:
            current = reading(previous)
            if network is not None and container.State.Running:
                networks = await network.counters(container.Id)  # per interface, in its netns
                if networks:
                    current["networks"] = networks
            yield json.dumps(current).encode() + b"\n"
            if not stream:
                return
            previous = current
            await trio.sleep(1)

    return Response(samples(), status=200, content_type="application/json")


@router.route("/containers/<name>/changes", methods=["GET"])
async def changes(name: str) -> Response:
    service = await containers()
    container = service.store.get(name)
    return json_response(await service.images.changes(container.Id) or None)


@router.route("/containers/<name>/export", methods=["GET"])
async def export(name: str) -> Response:
    from kernel.threadpipe import stream_output

    service = await containers()
    container = service.store.get(name)
    images: ImagesService = await ctx().actor("images")
    body = stream_output(lambda out: images.export(container.Id, out))
    return Response(body, status=200, content_type="application/x-tar")


@router.route("/commit", methods=["POST"])
async def commit() -> Response:
    service = await containers()
    container = service.store.get(request.args.get("container", ""))
    overrides = await read_json(dict[str, Any])
    config = {k: v for k, v in container.Config.items() if k != "Image"}
    config.update(overrides)
    images: ImagesService = await ctx().actor("images")
    image = await images.commit(
        container.Id,
        container.Image,
        config,
        repo=request.args.get("repo", ""),
        tag=request.args.get("tag", ""),
        changes=request.args.getlist("changes"),
        comment=request.args.get("comment", ""),
        author=request.args.get("author", ""),
    )
    return json_response({"Id": image.id}, status=201)


def _archive_path() -> str:
    path = request.args.get("path", "")
    if not path:
        raise InvalidParameter("path is required")
    return path


@router.route("/containers/<name>/archive", methods=["HEAD", "GET"])
async def archive_get(name: str) -> Response:
    from kernel.threadpipe import stream_output

    service = await containers()
    path = _archive_path()
    header = await service.archive_stat(name, path)  # a missing path is a 404 here
    headers = {"X-Docker-Container-Path-Stat": header}
    if request.method == "HEAD":
        return Response(b"", status=200, headers=headers)
    body = stream_output(service.archive_reader(name, path))
    return Response(body, status=200, content_type="application/x-tar", headers=headers)


@router.route("/containers/<name>/archive", methods=["PUT"])
async def archive_put(name: str) -> Response:
    service = await containers()
    await service.archive_write(name, _archive_path(), request.body)  # type: ignore[arg-type]
    return Response(b"", status=200)


@router.route("/containers/<name>/start", methods=["POST"])
async def start(name: str) -> Response:
    await (await containers()).start(name)
    return no_content()


@router.route("/containers/<name>/stop", methods=["POST"])
async def stop(name: str) -> Response:
    await (await containers()).stop(name, _optional_int("t"), request.args.get("signal", ""))
    return no_content()


@router.route("/containers/<name>/restart", methods=["POST"])
async def restart(name: str) -> Response:
    await (await containers()).restart(name, _optional_int("t"))
    return no_content()


@router.route("/containers/<name>/kill", methods=["POST"])
async def kill(name: str) -> Response:
    await (await containers()).kill(name, request.args.get("signal", "KILL"))
    return no_content()


@router.route("/containers/<name>/pause", methods=["POST"])
async def pause(name: str) -> Response:
    await (await containers()).pause(name)
    return no_content()


@router.route("/containers/<name>/unpause", methods=["POST"])
async def unpause(name: str) -> Response:
    await (await containers()).unpause(name)
    return no_content()


@router.route("/containers/<name>/rename", methods=["POST"])
async def rename(name: str) -> Response:
    new_name = request.args.get("name", "")
    if not new_name:
        raise InvalidParameter("Neither old nor new names may be empty")
    await (await containers()).rename(name, new_name)
    return no_content()


@router.route("/containers/<name>/resize", methods=["POST"])
async def resize(name: str) -> Response:
    await (await containers()).resize(name, query_int("h", 0), query_int("w", 0))
    return Response(b"", status=200)


@router.route("/containers/<name>/update", methods=["POST"])
async def update(name: str) -> Response:
    changes = await read_json(dict[str, Any])
    warnings = await (await containers()).update(name, changes)
    return json_response({"Warnings": warnings})


@router.route("/containers/<name>", methods=["DELETE"])
async def remove(name: str) -> Response:
    if query_bool("link"):
        raise InvalidParameter("links are not supported")
    await (await containers()).remove(name, force=query_bool("force"), volumes=query_bool("v"))
    return no_content()


@router.route("/containers/prune", methods=["POST"])
async def prune() -> Response:
    filters = parse_filters(request.args.get("filters"))
    check_filter_keys(filters, {"label", "until"})
    return json_response(await (await containers()).prune(filters))


@router.route("/containers/<name>/wait", methods=["POST"])
async def wait(name: str) -> Response:
    service = await containers()
    condition = request.args.get("condition", "")
    container = service.store.get(name)  # unknown → 404 before the stream starts
    if condition not in ("", "not-running", "next-exit", "removed"):
        raise InvalidParameter(f"invalid condition: {condition!r}")

    async def result() -> AsyncIterator[bytes]:
        # No Content-Length: the head goes out at once, as `docker run` needs (wire facts §4.1).
        code, error = await service.wait(container.Id, condition)
        yield (
            json.dumps(
                {"StatusCode": code, "Error": {"Message": error} if error else None}
            ).encode()
            + b"\n"
        )

    return Response(result(), status=200, content_type="application/json")


@router.route("/containers/<name>/logs", methods=["GET"])
async def logs(name: str) -> Response:
    from actors.containers.attach import log_stream

    service = await containers()
    tail_text = request.args.get("tail", "all")
    tail = -1 if tail_text in ("all", "") else int(tail_text) if tail_text.isdigit() else -1
    stream = await log_stream(
        service,
        name,
        stdout=query_bool("stdout"),
        stderr=query_bool("stderr"),
        follow=query_bool("follow"),
        tail=tail,
        since_ns=query_timestamp("since") or 0,
        until_ns=query_timestamp("until") or 0,
        timestamps=query_bool("timestamps"),
    )
    tty = service.store.get(name).tty
    content_type = (
        "application/vnd.docker.raw-stream" if tty else "application/vnd.docker.multiplexed-stream"
    )
    return Response(stream, status=200, content_type=content_type)


@router.route("/containers/<name>/attach", methods=["POST"])
async def attach(name: str) -> Response:
    from actors.containers.attach import AttachOptions, attach, parse_detach_keys

    await request.get_data()
    options = AttachOptions(
        stdin=query_bool("stdin"),
        stdout=query_bool("stdout"),
        stderr=query_bool("stderr"),
        logs=query_bool("logs"),
        stream=query_bool("stream"),
        detach_keys=parse_detach_keys(request.args.get("detachKeys", "")),
    )
    hijack = request.scope["extensions"]["docker.hijack"]["take"]
    common = request.scope.get("docker.headers", [])

    async def take(content_type: str) -> Any:
        return await hijack(content_type=content_type, headers=common)

    await attach(await containers(), name, options, take)
    return Response(b"", status=200)  # dropped: the connection was hijacked


@router.route("/containers/<name>/exec", methods=["POST"])
async def exec_create(name: str) -> Response:
    body = await read_json(dict[str, Any], allow_empty=False)
    return json_response({"Id": (await containers()).execs.create(name, body)}, status=201)


@router.route("/exec/<exec_id>/start", methods=["POST"])
async def exec_start(exec_id: str) -> Response:
    service = await containers()
    body = await read_json(dict[str, Any])
    record = service.execs.get(exec_id)  # unknown → 404 before any hijack
    if body.get("Detach"):
        await service.execs.start(record, None)
        return Response(b"", status=200)
    hijack = request.scope["extensions"]["docker.hijack"]["take"]
    content_type = (
        "application/vnd.docker.raw-stream"
        if record.tty
        else "application/vnd.docker.multiplexed-stream"
    )
    stream = await hijack(
        content_type=content_type, headers=request.scope.get("docker.headers", [])
    )
    async with stream:
        try:
            await service.execs.start(record, stream)
        except DaemonError as exc:  # after the 101 an error can only go into the stream
            await stream.send_all(exc.message.encode() + b"\r\n")
    return Response(b"", status=200)  # dropped: the connection was hijacked


@router.route("/exec/<exec_id>/json", methods=["GET"])
async def exec_inspect(exec_id: str) -> Response:
    return json_response((await containers()).execs.get(exec_id).inspect())


@router.route("/exec/<exec_id>/resize", methods=["POST"])
async def exec_resize(exec_id: str) -> Response:
    await (await containers()).execs.resize(exec_id, query_int("h", 0), query_int("w", 0))
    return Response(b"", status=200)
