"""The events actor: the daemon's event journal and its broadcast topic.

Every actor publishes through `EventsService.publish` (never blocks); `/events` replays
matching events from the journal, then follows the topic live.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

from kernel.fsutil import atomic_write
from kernel.topic import Topic

JOURNAL_SIZE = 10_000  # events kept for `since` (dockerd keeps 256, in memory only)
log = logging.getLogger("pydockerd.events")


class Actor(msgspec.Struct, frozen=True, rename="pascal"):
    id: str
    attributes: dict[str, str] = {}


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """One event as `/events` encodes it (dockerd's events.Message)."""

    Type: str
    Action: str
    Actor: Actor
    time: int
    timeNano: int
    scope: str = "local"
    # Deprecated fields dockerd still fills for container and image events.
    status: str = ""
    id: str = ""
    from_: str = msgspec.field(default="", name="from")


Filters = Mapping[str, Sequence[str]]
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def _matches_one(values: Sequence[str], *candidates: str) -> bool:
    return not values or any(c and c in values for c in candidates)


def matches(event: Event, filters: Filters) -> bool:
    """dockerd's events filter: every given key must match; values of one key are ORed."""
    attrs = event.Actor.attributes
    kind = event.Type
    if not _matches_one(filters.get("type", ()), kind):
        return False
    if not _matches_one(filters.get("event", ()), event.Action, event.Action.split(":")[0]):
        return False
    if not _matches_one(filters.get("scope", ()), event.scope):
        return False
    labels = filters.get("label", ())
    for label in labels:
        key, _, value = label.partition("=")
        if key not in attrs or (value and attrs[key] != value):
            return False
    per_type = {
        "container": ("container", attrs.get("name", "")),
        "image": ("image", attrs.get("name", "")),
        "network": ("network", attrs.get("name", "")),
        "volume": ("volume", ""),
        "daemon": ("daemon", attrs.get("name", "")),
        "plugin": ("plugin", attrs.get("name", "")),
    }
    for filter_key, (event_type, name) in per_type.items():
        wanted = filters.get(filter_key, ())
        if wanted:
            if kind != event_type and not (filter_key == "image" and kind == "container"):
                return False
            image = attrs.get("image", "") if kind == "container" else ""
            if not _matches_one(wanted, event.Actor.id, name, image):
                return False
    return True


class EventsService:
    """The events actor's handle; its state outlives actor restarts.

    With a `journal_file`, every event is appended to it as a JSON line, so `--since`
    still answers after a daemon restart (beyond dockerd, whose 256 events live in
    memory). The file keeps the last `journal_size` events: past twice that, it is
    rewritten (atomically) with the newest half.
    """

    def __init__(
        self, *, journal_file: Path | None = None, journal_size: int = JOURNAL_SIZE
    ) -> None:
        self._journal: deque[Event] = deque(maxlen=journal_size)
        self._topic: Topic[Event] = Topic(buffer=1024)
        self._file = journal_file
        self._lines = 0
        if journal_file is not None:
            self._load(journal_file)

    def _load(self, path: Path) -> None:
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                self._journal.append(_decoder.decode(line))
            except msgspec.DecodeError:
                continue  # a torn last line after a crash
        self._lines = len(lines)

    def resize(self, journal_size: int) -> None:
        """Keep the newest `journal_size` events from now on (a live reload)."""
        if journal_size != self._journal.maxlen:
            self._journal = deque(self._journal, maxlen=journal_size)

    def _append(self, event: Event) -> None:
        if self._file is None:
            return
        try:
            if self._lines >= 2 * (self._journal.maxlen or JOURNAL_SIZE):
                data = b"".join(_encoder.encode(e) + b"\n" for e in self._journal)
                atomic_write(self._file, data, mode=0o600)
                self._lines = len(self._journal)
            else:
                with open(self._file, "ab") as journal:
                    journal.write(_encoder.encode(event) + b"\n")
                self._lines += 1
        except OSError as exc:  # a full disk must not stop the daemon
            log.error("cannot write the events journal: %s", exc)

    def publish(
        self, kind: str, action: str, actor_id: str, attributes: Mapping[str, str] | None = None
    ) -> Event:
        now = time.time_ns()
        attrs = dict(attributes or {})
        legacy: dict[str, Any] = {}
        if kind in ("container", "image"):
            legacy = {"status": action, "id": actor_id, "from_": attrs.get("image", "")}
        event = Event(
            Type=kind,
            Action=action,
            Actor=Actor(id=actor_id, attributes=attrs),
            time=now // 1_000_000_000,
            timeNano=now,
            **legacy,
        )
        self._journal.append(event)
        self._append(event)
        self._topic.publish(event)
        return event

    def history(
        self, *, since_ns: int | None, until_ns: int | None, filters: Filters
    ) -> list[Event]:
        return [
            e
            for e in self._journal
            if (since_ns is None or e.timeNano >= since_ns)
            and (until_ns is None or e.timeNano <= until_ns)
            and matches(e, filters)
        ]

    @asynccontextmanager
    async def open_stream(
        self, *, since_ns: int | None, until_ns: int | None, filters: Filters
    ) -> AsyncIterator[AsyncIterator[Event]]:
        """Replay the journal from `since`, then follow live events until `until` (if given)."""
        async with self._topic.subscribe() as live:
            # Subscribed before reading the journal: nothing falls between the two.
            # Without `since` only live events flow, as with dockerd.
            past = (
                []
                if since_ns is None
                else self.history(since_ns=since_ns, until_ns=until_ns, filters=filters)
            )

            async def events() -> AsyncIterator[Event]:
                last = past[-1].timeNano if past else -1
                for event in past:
                    yield event
                if until_ns is not None and until_ns <= time.time_ns():
                    return
                deadline = _deadline(until_ns)
                while True:
                    # No yield inside the cancel scope: the scope wraps one receive only.
                    received: Event | None = None
                    with trio.move_on_at(deadline):
                        try:
                            received = await live.receive()
                        except trio.EndOfChannel:  # the daemon is shutting down
                            return
                    if received is None or (until_ns is not None and received.timeNano > until_ns):
                        return
                    if received.timeNano > last and matches(received, filters):
                        yield received

            yield events()

    def close(self) -> None:
        self._topic.close()

    @property
    def subscriber_count(self) -> int:
        return self._topic.subscriber_count


def _deadline(until_ns: int | None) -> float:
    if until_ns is None:
        return float("inf")
    return trio.current_time() + max(0.0, (until_ns - time.time_ns()) / 1e9)


async def run(
    service: EventsService, *, stopping: trio.Event, task_status: trio.TaskStatus[EventsService]
) -> None:
    task_status.started(service)
    await stopping.wait()
