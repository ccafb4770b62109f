"""Debug router (only while `debug` is on): the actor tree."""

from __future__ import annotations

import msgspec
from quart import Blueprint, Response

from api.context import ctx
from api.http import json_response

router = Blueprint("debug", __name__)


@router.route("/debug/actors", methods=["GET"])
async def actors() -> Response:
    """Each actor with its state, restarts and last error (the SIGUSR1 dump, as JSON)."""
    supervisor = ctx().supervisor()
    children = supervisor.statistics() if supervisor is not None else []
    return json_response([msgspec.to_builtins(child) for child in children])
