"""`docker exec`: extra processes in a running container's task (moby daemon/exec.go).

Exec records live in memory only, as in dockerd: a daemon restart forgets them. Finished
ones stay inspectable for a while, then the collector drops them (dockerd's execCommandGC).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from actors.containerd.errors import ContainerdError
from actors.containers import oci
from actors.containers.attach import frame
from actors.containers.spec import all_capabilities
from actors.containers.stdio import FifoSet, ProcessIO
from kernel.errors import Conflict, InvalidParameter, NotFound

if TYPE_CHECKING:
    from actors.containers.service import ContainersService

log = logging.getLogger("pydockerd.containers")

EXEC_GC_INTERVAL = 300.0  # seconds, as dockerd: an exec that ended is kept 5 to 10 minutes


@dataclass(eq=False)
class Exec:
    id: str
    container_id: str
    cmd: list[str]
    env: list[str]
    user: str
    workdir: str
    tty: bool
    privileged: bool
    attach_stdin: bool
    attach_stdout: bool
    attach_stderr: bool
    detach_keys: str
    running: bool = False
    exit_code: int | None = None
    pid: int = 0
    started: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)
    can_remove: bool = False  # marked by one collection, dropped by the next

    def inspect(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Running": self.running,
            "ExitCode": self.exit_code,
            "ProcessConfig": {
                "tty": self.tty,
                "entrypoint": self.cmd[0],
                "arguments": self.cmd[1:],
                "privileged": self.privileged,
                "user": self.user,
            },
            "OpenStdin": self.attach_stdin,
            "OpenStderr": self.attach_stderr,
            "OpenStdout": self.attach_stdout,
            "CanRemove": self.can_remove,
            "ContainerID": self.container_id,
            "DetachKeys": self.detach_keys,
            "Pid": self.pid,
        }


class ExecStore:
    def __init__(self, service: ContainersService) -> None:
        self.service = service
        self._execs: dict[str, Exec] = {}

    def create(self, ref: str, body: dict[str, Any]) -> str:
        container = self.service.store.get(ref)
        if not container.State.Running:
            raise Conflict(f"Container {container.Id} is not running")
        if container.State.Paused:
            raise Conflict(f"Container {container.Id} is paused, unpause the container before exec")
        cmd = list(body.get("Cmd") or [])
        if not cmd:
            raise InvalidParameter("No exec command specified")
        record = Exec(
            id=secrets.token_hex(32),
            container_id=container.Id,
            cmd=cmd,
            env=list(body.get("Env") or []),
            user=body.get("User") or container.Config.get("User") or "",
            workdir=body.get("WorkingDir") or "",
            tty=bool(body.get("Tty")),
            privileged=bool(body.get("Privileged")),
            attach_stdin=bool(body.get("AttachStdin")),
            attach_stdout=bool(body.get("AttachStdout")),
            attach_stderr=bool(body.get("AttachStderr")),
            detach_keys=body.get("DetachKeys") or "",
        )
        self._execs[record.id] = record
        self.service._publish(container, f"exec_create: {' '.join(cmd)}", {"execID": record.id})
        return record.id

    def ids_of(self, container_id: str) -> list[str]:
        return [r.id for r in self._execs.values() if r.container_id == container_id]

    def forget_container(self, container_id: str) -> None:
        for exec_id in self.ids_of(container_id):
            del self._execs[exec_id]

    def collect(self) -> int:
        """One GC pass: drop what the previous pass marked, mark what is no longer live
        (ended, or never started in a container that stopped). Returns how many went."""
        gone = [r.id for r in self._execs.values() if r.can_remove]
        for exec_id in gone:
            del self._execs[exec_id]
        for record in self._execs.values():
            container = self.service.store.get_or_none(record.container_id)
            started = record.running or record.exit_code is not None
            live = record.running or (
                not started and container is not None and container.State.Running
            )
            record.can_remove = not live
        return len(gone)

    async def collector(self, interval: float = EXEC_GC_INTERVAL) -> None:
        while True:
            await trio.sleep(interval)
            if removed := self.collect():
                log.debug("exec GC: removed %d exec(s)", removed)

    def get(self, exec_id: str) -> Exec:
        record = self._execs.get(exec_id)
        if record is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        return record

    async def start(self, record: Exec, stream: trio.abc.HalfCloseableStream | None) -> None:
        """Start the process; with a stream, copy its stdio until it exits."""
        if record.running or record.exit_code is not None:
            raise Conflict(f"Error: Exec command {record.id} is already running")
        service = self.service
        container = service.store.get(record.container_id)
        if not container.State.Running:
            raise Conflict(f"Container {container.Id} is not running")
        client = await service.bridge.wait_client()
        rootfs = Path(await service.images.mount_rw_layer(container.Id))
        process = service._spec(container, rootfs)["process"]
        uid, gid, groups = oci.resolve_user(
            rootfs, record.user, container.HostConfig.get("GroupAdd") or []
        )
        process.update(
            args=record.cmd,
            env=oci.merge_env(process["env"], record.env),
            cwd=record.workdir or process["cwd"],
            terminal=record.tty,
            user={"uid": uid, "gid": gid, "additionalGids": groups},
        )
        if record.privileged:
            caps = list(all_capabilities())
            process["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
        fifos = FifoSet.for_process(service.fifo_dir(container.Id), record.id, terminal=record.tty)
        io = ProcessIO(fifos, with_stdin=record.attach_stdin, before_create=True)
        try:
            await client.exec_process(
                container.Id,
                record.id,
                msgspec.json.encode(process),
                fifos.stdin if record.attach_stdin else "",
                fifos.stdout,
                fifos.stderr,
                record.tty,
            )
            record.pid = await client.start_task(container.Id, record.id)
        except ContainerdError as exc:
            await io.aclose()
            fifos.remove()
            record.exit_code = 126
            raise Conflict(f"OCI runtime exec failed: {exc.message}") from None
        io.release_holds()
        record.running = True
        record.started.set()
        service._publish(container, f"exec_start: {' '.join(record.cmd)}", {"execID": record.id})
        assert service._nursery is not None
        service._nursery.start_soon(self._reap, record)
        if stream is None:  # detached: drain the output so the process never blocks on it
            service._nursery.start_soon(self._pipe, record, io, fifos, None)
        else:
            await self._pipe(record, io, fifos, stream)

    async def _pipe(
        self,
        record: Exec,
        io: ProcessIO,
        fifos: FifoSet,
        stream: trio.abc.HalfCloseableStream | None,
    ) -> None:
        """Copy stdio between the FIFOs and the client until the shim closes them."""

        sending = trio.Lock()  # stdout and stderr frames share one connection

        async def output(source: trio.lowlevel.FdStream, name: str) -> None:
            try:
                while data := await source.receive_some(65536):
                    if stream is not None:
                        async with sending:
                            await stream.send_all(data if record.tty else frame(name, data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async def stdin() -> None:
            assert io.stdin is not None and stream is not None
            try:
                while data := await stream.receive_some(65536):
                    await io.stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            await io.close_stdin()  # the client's half-close: the process sees EOF
            try:
                client = await self.service.bridge.wait_client()
                await client.close_io(record.container_id, record.id)
            except ContainerdError:
                pass

        async with trio.open_nursery() as nursery:
            if record.attach_stdin and stream is not None:
                nursery.start_soon(stdin)
            async with trio.open_nursery() as outputs:
                outputs.start_soon(output, io.stdout, "stdout")
                if io.stderr is not None:
                    outputs.start_soon(output, io.stderr, "stderr")
            nursery.cancel_scope.cancel()
        with trio.move_on_after(5):
            await record.exited.wait()
        await io.aclose()
        fifos.remove()
        if stream is not None:
            try:
                await stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _reap(self, record: Exec) -> None:
        client = await self.service.bridge.wait_client()
        try:
            status, _ = await client.wait(record.container_id, record.id)
            await client.delete_process(record.container_id, record.id)
        except ContainerdError as exc:
            log.warning("exec %s: %s", record.id[:12], exc.message)
            status = 126
        record.exit_code, record.running = status, False
        record.exited.set()
        container = self.service.store.get_or_none(record.container_id)
        if container is not None:
            attributes = {"execID": record.id, "exitCode": str(status)}
            self.service._publish(container, "exec_die", attributes)

    async def resize(self, exec_id: str, height: int, width: int) -> None:
        """As dockerd: wait (10 s at most) for the process, which the CLI resizes right after
        asking for the start; a size given before it runs would be lost."""
        record = self.get(exec_id)
        with trio.move_on_after(10):
            await record.started.wait()
        if not record.started.is_set():
            raise Conflict("timeout waiting for exec session ready")
        client = await self.service.bridge.wait_client()
        await client.resize_pty(record.container_id, width, height, exec_id=record.id)
