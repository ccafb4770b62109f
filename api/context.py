"""What the routers reach: the actors' handles and the settings the current app was built with.

Routers get everything through `ctx()`; the daemon's wiring fills an `ApiContext` once and
every app built on reload shares it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from kernel.errors import Unavailable

# The API serves before the actors behind it are up (DESIGN.md §1); a request for one
# that is still starting waits this long.
ACTOR_START_WAIT = 30.0

if TYPE_CHECKING:
    from actors.events import EventsService
    from config import DaemonConfig
    from kernel.supervisor import Supervisor

# An authorization hook: (method, path, user) -> None, or raises Forbidden.
AuthzHook = Callable[[str, str, str], Awaitable[None]]


@dataclass(frozen=True)
class ApiSettings:
    """The part of the configuration baked into one app; a change swaps in a new app."""

    cors_header: str = ""
    debug: bool = False
    authorization_plugins: tuple[str, ...] = ()


@dataclass(eq=False)
class ApiContext:
    events: EventsService
    daemon_id: str
    config: Callable[[], DaemonConfig]
    supervisor: Callable[[], Supervisor | None] = lambda: None
    authz_hooks: list[AuthzHook] = field(default_factory=list)
    # Handles of the domain actors, by name, once each has started.
    actors: dict[str, Any] = field(default_factory=dict)
    _arrived: dict[str, trio.Event] = field(default_factory=dict)

    def register(self, name: str, handle: Any) -> None:
        self.actors[name] = handle
        self._arrived.setdefault(name, trio.Event()).set()

    async def actor(self, name: str) -> Any:
        """The actor's handle; while the daemon is still starting it, wait (bounded)."""
        if name not in self.actors:
            with trio.move_on_after(ACTOR_START_WAIT):
                await self._arrived.setdefault(name, trio.Event()).wait()
        if name not in self.actors:
            raise Unavailable(f"{name} is not available")
        return self.actors[name]


def ctx() -> ApiContext:
    from quart import current_app  # Quart loads after the API serves /_ping

    context = current_app.extensions["pydockerd"]
    assert isinstance(context, ApiContext)
    return context
