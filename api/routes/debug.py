"""Debug router (only while `debug` is on): the actor tree."""

from __future__ import annotations

import os

import msgspec
from quart import Blueprint, Response

from api.context import ctx
from api.http import json_response
from kernel.errors import NotFound

router = Blueprint("debug", __name__)


@router.route("/debug/actors", methods=["GET"])
async def actors() -> Response:
    """Each actor with its state, restarts and last error (the SIGUSR1 dump, as JSON)."""
    supervisor = ctx().supervisor()
    children = supervisor.statistics() if supervisor is not None else []
    return json_response([msgspec.to_builtins(child) for child in children])


@router.route("/debug/actors/<actor>/fault", methods=["POST"])
async def inject_fault(actor: str) -> Response:
    """Crash an actor on purpose (fault-isolation tests): only with PYDOCKERD_TEST_HOOKS=1."""
    if os.environ.get("PYDOCKERD_TEST_HOOKS") != "1":
        raise NotFound("page not found")
    supervisor = ctx().supervisor()
    try:
        if supervisor is None:
            raise KeyError(actor)
        supervisor.inject_fault(actor)
    except KeyError:
        raise NotFound(f"no running actor {actor}") from None
    return Response(b"", status=204)
