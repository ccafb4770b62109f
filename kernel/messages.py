"""The message base every actor's requests, replies and events derive from."""

from __future__ import annotations

import msgspec


class Msg(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Frozen and tagged, so a message matches with `match` and encodes with its type name."""


class ActorFailed(Msg, frozen=True):
    """A crash reported as data: which actor, what exception, and where."""

    actor: str
    error_type: str
    error: str
    traceback: str
