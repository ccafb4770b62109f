"""The Quart app: middlewares, error mapping and one router per resource."""

from __future__ import annotations

import logging

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from api.context import ApiContext, ApiSettings
from api.http import json_response
from kernel.errors import DaemonError

log = logging.getLogger("pydockerd.api")


def create_app(context: ApiContext, settings: ApiSettings) -> QuartTrio:
    app = QuartTrio("pydockerd")
    app.extensions["pydockerd"] = context
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["MAX_CONTENT_LENGTH"] = None
    app.url_map.strict_slashes = False

    from api.routes import containers, images, networks, system, volumes

    for module in (system, images, containers, volumes, networks):
        app.register_blueprint(module.router)
    if settings.debug:  # a reload that turns debug on or off swaps this in or out
        from api.routes import debug

        app.register_blueprint(debug.router)
    _install_middlewares(app, context, settings)
    _install_error_handlers(app)
    return app


def _install_middlewares(app: QuartTrio, context: ApiContext, settings: ApiSettings) -> None:
    @app.before_request
    async def user_agent_and_authz() -> Response | None:
        if settings.debug:
            log.debug(
                "Calling %s %s (user agent %r)",
                request.method,
                request.path,
                request.headers.get("User-Agent", ""),
            )
        if request.method == "OPTIONS":
            return Response(b"", status=200)  # dockerd answers any OPTIONS with 200
        for hook in context.authz_hooks:
            await hook(request.method, request.path, request.headers.get("User-Agent", ""))
        return None

    if settings.cors_header:

        @app.after_request
        async def cors(response: Response) -> Response:
            response.headers["Access-Control-Allow-Origin"] = settings.cors_header
            response.headers["Access-Control-Allow-Headers"] = (
                "Origin, X-Requested-With, Content-Type, Accept, X-Registry-Auth"
            )
            response.headers["Access-Control-Allow-Methods"] = (
                "HEAD, GET, POST, DELETE, PUT, OPTIONS"
            )
            return response


def _install_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(DaemonError)
    async def daemon_error(error: DaemonError) -> Response:
        if error.status >= 500:
            log.error("Handler for %s %s returned error: %s", request.method, request.path, error)
        else:
            log.debug("Handler for %s %s returned error: %s", request.method, request.path, error)
        if error.status == 304:  # Not Modified carries no body (HTTP forbids one)
            return Response(b"", status=304)
        return json_response({"message": error.message}, status=error.status)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        code = error.code or 500
        if code in (404, 405):
            return json_response({"message": "page not found"}, status=404)
        return json_response({"message": error.description or str(error)}, status=code)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        if isinstance(error, trio.Cancelled):  # pragma: no cover - Cancelled is a BaseException
            raise error
        log.exception("Handler for %s %s failed", request.method, request.path)
        return json_response({"message": f"{type(error).__name__}: {error}"}, status=500)
