"""The API actor: owns the HTTP server, its listeners and the app behind the edge.

It serves `/_ping` as soon as its listeners are bound; the Quart app (whose import is
the most expensive part of start-up) is built in the background, and requests for other
routes wait for it. A reload swaps in a new app when the settings baked into it change,
and adds or removes listeners when `hosts` or the TLS files change.
"""

from __future__ import annotations

import importlib
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import trio

from api.asgi import ASGIApp
from api.context import ApiContext, ApiSettings
from api.edge import ApiEdge
from api.h1server import H1Server
from api.listeners import ListenerError, TlsFiles, open_listeners, tls_context
from kernel import VERSION

log = logging.getLogger("pydockerd.api")


@dataclass(frozen=True)
class ListenConfig:
    """What the listeners are made from; any change re-opens the affected ones."""

    hosts: tuple[str, ...]
    group: str
    tls: TlsFiles | None


class ApiService:
    """The API actor's handle."""

    def __init__(self, context: ApiContext, settings: ApiSettings, listen: ListenConfig) -> None:
        self.context = context
        self.settings = settings
        self.listen = listen
        self.edge = ApiEdge(server=f"pydockerd/{VERSION} (linux)")
        self.server: H1Server | None = None
        self._nursery: trio.Nursery | None = None
        self._hosts: dict[str, trio.CancelScope] = {}
        self.ready = trio.Event()  # set once the first app serves every route

    async def _build_app(self, settings: ApiSettings) -> None:
        # Importing Quart costs ~0.5 s; a thread keeps the loop (and /_ping) answering.
        await trio.to_thread.run_sync(importlib.import_module, "api.app")
        from api.app import create_app

        self.edge.swap(cast(ASGIApp, create_app(self.context, settings)))
        self.settings = settings
        self.ready.set()

    async def apply_settings(self, settings: ApiSettings) -> None:
        """Swap in an app built with `settings`; in-flight requests finish on the old one."""
        if settings != self.settings or self.edge.app is None:
            await self._build_app(settings)

    @staticmethod
    def check_listen(listen: ListenConfig) -> ssl.SSLContext | None:
        """Validate TLS files before anything changes (reload is all-or-nothing)."""
        return tls_context(listen.tls) if listen.tls is not None else None

    async def apply_listen(self, listen: ListenConfig) -> None:
        """Open new hosts first, then close removed ones; untouched hosts keep their connections."""
        tls = self.check_listen(listen)
        reopen_all = (listen.group, listen.tls) != (self.listen.group, self.listen.tls)
        wanted = set(listen.hosts)
        for host in listen.hosts:
            if host in self._hosts and not (reopen_all and host.startswith("tcp://")):
                continue
            if host in self._hosts:
                self._hosts.pop(host).cancel()
            await self._serve_host(host, listen.group, tls)
        for host in list(self._hosts):
            if host not in wanted:
                self._hosts.pop(host).cancel()
                log.info("stopped listening on %s", host)
        self.listen = listen

    async def _serve_host(self, host: str, group: str, tls: ssl.SSLContext | None) -> None:
        assert self._nursery is not None and self.server is not None
        listeners = await open_listeners(host, group=group, tls=tls)
        scope = trio.CancelScope()
        self._hosts[host] = scope
        server = self.server

        async def serve(*, task_status: trio.TaskStatus[None]) -> None:
            with scope:
                async with trio.open_nursery() as nursery:
                    for listener in listeners:
                        await nursery.start(server.serve_listener, listener)
                    task_status.started()
            for listener in listeners:
                await listener.aclose()
            if host.startswith("unix://"):  # as Go does: a closed unix listener leaves no file
                Path(host.removeprefix("unix://")).unlink(missing_ok=True)

        await self._nursery.start(serve)
        log.info("API listen on %s", host)

    async def run(self, *, stopping: trio.Event, task_status: trio.TaskStatus[ApiService]) -> None:
        self.server = H1Server(self.edge, graceful_timeout=10.0, fast_lane=self.edge.fast_lane)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.server.run)
            try:
                tls = self.check_listen(self.listen)
                for host in self.listen.hosts:
                    await self._serve_host(host, self.listen.group, tls)
            except ListenerError:
                self.server.drain()
                raise
            nursery.start_soon(self._build_app, self.settings)
            task_status.started(self)
            await stopping.wait()
            self.drain()
            with trio.move_on_after(15):
                await self.server.stopped.wait()
            nursery.cancel_scope.cancel()

    def drain(self) -> None:
        """Close every listener and let in-flight requests finish (bounded by the server)."""
        for scope in self._hosts.values():
            scope.cancel()
        self._hosts.clear()
        if self.server is not None:
            self.server.drain()

    @property
    def hosts(self) -> Sequence[str]:
        return list(self._hosts)
