"""What the routers reach: the actors' handles and the settings the current app was built with.

Routers get everything through `ctx()`; the daemon's wiring fills an `ApiContext` once and
every app built on reload shares it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    # Handles of actors that come in later issues, by name.
    actors: dict[str, Any] = field(default_factory=dict)


def ctx() -> ApiContext:
    from quart import current_app  # Quart loads after the API serves /_ping

    context = current_app.extensions["pydockerd"]
    assert isinstance(context, ApiContext)
    return context
