"""Plain values the containerd bridge hands out (flavour-neutral).

Frozen msgspec Structs mirror the protobuf messages we use, so callers never
touch generated code; the `from_pb`/`to_pb` helpers are the only translation.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec
from google.protobuf.any_pb2 import Any as PbAny
from google.protobuf.timestamp_pb2 import Timestamp

from actors.containerd.proto import (
    containers_pb2,
    runc_options_pb2,
    task_events_pb2,
    task_types_pb2,
    types_pb2,
)

# containerd resolves Any payloads by these exact type URLs (its typeurl registry
# does not strip a "type.googleapis.com/" prefix), so we set them by hand.
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options"
RUNC_RUNTIME = "io.containerd.runc.v2"


class Mount(msgspec.Struct, frozen=True):
    """A rootfs mount for `CreateTaskRequest.rootfs` (the shim mounts it at
    `<bundle>/rootfs`, so the spec's root.path is then `rootfs`)."""

    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()


class RuncOptions(msgspec.Struct, frozen=True):
    """`containerd.runc.v1.Options`: runtime options for the runc v2 shim."""

    binary_name: str = ""
    root: str = ""  # runc state dir; the shim's default is /run/containerd/runc
    systemd_cgroup: bool = False
    no_pivot_root: bool = False
    no_new_keyring: bool = False
    shim_cgroup: str = ""
    io_uid: int = 0  # owner of the FIFOs the shim opens
    io_gid: int = 0


class RawAny(msgspec.Struct, frozen=True):
    """An undecoded `google.protobuf.Any` (metrics, ListPids info)."""

    type_url: str
    value: bytes


class TaskStatus(enum.IntEnum):
    UNKNOWN = 0
    CREATED = 1
    RUNNING = 2
    STOPPED = 3
    PAUSED = 4
    PAUSING = 5


class Exit(NamedTuple):
    exit_status: int
    exited_at: datetime


class Process(msgspec.Struct, frozen=True):
    """`containerd.v1.types.Process`: a task's init process or an exec."""

    container_id: str
    id: str
    pid: int
    status: TaskStatus
    stdin: str
    stdout: str
    stderr: str
    terminal: bool
    exit_status: int
    exited_at: datetime


class ProcessInfo(msgspec.Struct, frozen=True):
    pid: int
    info: RawAny | None  # containerd.runc.v1.ProcessDetails for exec processes


class ContainerRecord(msgspec.Struct, frozen=True):
    id: str
    labels: Mapping[str, str]
    runtime: str
    spec: bytes  # the OCI runtime spec JSON, as given at create


# Task events (package containerd.events, topics /tasks/*).


class TaskIO(msgspec.Struct, frozen=True):
    stdin: str
    stdout: str
    stderr: str
    terminal: bool


class TaskCreate(msgspec.Struct, frozen=True):
    container_id: str
    bundle: str
    rootfs: tuple[Mount, ...]
    io: TaskIO
    checkpoint: str
    pid: int


class TaskStart(msgspec.Struct, frozen=True):
    container_id: str
    pid: int


class TaskDelete(msgspec.Struct, frozen=True):
    container_id: str
    pid: int
    exit_status: int
    exited_at: datetime
    id: str


class TaskExit(msgspec.Struct, frozen=True):
    container_id: str
    id: str  # the exec ID, or the container ID for the init process
    pid: int
    exit_status: int
    exited_at: datetime


class TaskOOM(msgspec.Struct, frozen=True):
    container_id: str


class TaskExecAdded(msgspec.Struct, frozen=True):
    container_id: str
    exec_id: str


class TaskExecStarted(msgspec.Struct, frozen=True):
    container_id: str
    exec_id: str
    pid: int


class TaskPaused(msgspec.Struct, frozen=True):
    container_id: str


class TaskResumed(msgspec.Struct, frozen=True):
    container_id: str


class TaskCheckpointed(msgspec.Struct, frozen=True):
    container_id: str
    checkpoint: str


TaskEvent = (
    TaskCreate
    | TaskStart
    | TaskDelete
    | TaskExit
    | TaskOOM
    | TaskExecAdded
    | TaskExecStarted
    | TaskPaused
    | TaskResumed
    | TaskCheckpointed
)

# Event type URL (the bare proto full name) -> (protobuf class, Struct class).
_EVENTS: dict[str, tuple[Any, type[TaskEvent]]] = {
    f"containerd.events.{cls.__name__}": (getattr(task_events_pb2, cls.__name__), cls)
    for cls in (
        TaskCreate,
        TaskStart,
        TaskDelete,
        TaskExit,
        TaskOOM,
        TaskExecAdded,
        TaskExecStarted,
        TaskPaused,
        TaskResumed,
        TaskCheckpointed,
    )
}


def timestamp(t: Timestamp) -> datetime:
    dt: datetime = t.ToDatetime(tzinfo=UTC)
    return dt


def _value(v: Any) -> Any:
    if isinstance(v, Timestamp):
        return timestamp(v)
    if isinstance(v, types_pb2.Mount):
        return mount_from_pb(v)
    if isinstance(v, task_events_pb2.TaskIO):
        return TaskIO(v.stdin, v.stdout, v.stderr, v.terminal)
    if isinstance(v, str | int | bool):
        return v
    return tuple(_value(x) for x in v)  # repeated field


def decode_event(event: PbAny) -> TaskEvent | None:
    """Decode one envelope payload; None for a type we do not know."""
    known = _EVENTS.get(event.type_url.rsplit("/", 1)[-1])
    if known is None:
        return None
    pb_cls, cls = known
    pb = pb_cls.FromString(event.value)
    return cls(**{f: _value(getattr(pb, f)) for f in cls.__struct_fields__})


def mount_from_pb(m: types_pb2.Mount) -> Mount:
    return Mount(m.type, m.source, m.target, tuple(m.options))


def mount_to_pb(m: Mount) -> types_pb2.Mount:
    return types_pb2.Mount(type=m.type, source=m.source, target=m.target, options=m.options)


def process_from_pb(p: task_types_pb2.Process, container_id: str) -> Process:
    # containerd 1.6 leaves Process.container_id empty (it sets only `id`: the
    # container ID for a task, the exec ID for an exec), so the caller says.
    return Process(
        container_id=p.container_id or container_id,
        id=p.id,
        pid=p.pid,
        status=TaskStatus(p.status),
        stdin=p.stdin,
        stdout=p.stdout,
        stderr=p.stderr,
        terminal=p.terminal,
        exit_status=p.exit_status,
        exited_at=timestamp(p.exited_at),
    )


def container_from_pb(c: containers_pb2.Container) -> ContainerRecord:
    return ContainerRecord(
        id=c.id, labels=dict(c.labels), runtime=c.runtime.name, spec=c.spec.value
    )


def raw_any(a: PbAny) -> RawAny:
    return RawAny(a.type_url, a.value)


def pack(type_url: str, value: bytes) -> PbAny:
    return PbAny(type_url=type_url, value=value)


def runc_options_any(o: RuncOptions) -> PbAny:
    pb = runc_options_pb2.Options(**msgspec.structs.asdict(o))
    return pack(RUNC_OPTIONS_TYPE_URL, pb.SerializeToString())
