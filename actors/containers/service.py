"""The containers actor: container records and their state machine on top of containerd.

Requests run in the caller's task under a per-container lock (reads take no lock: they
use the store's snapshot). Exits arrive on the containerd bridge's event topic; after a
(re)connection the actor reconciles with containerd's task list, so an exit missed while
disconnected is still seen. Output copiers run in the actor's own nursery.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal as signals
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import msgspec
import trio

from actors.containerd.bridge import ContainerdBridge, Reconnected
from actors.containerd.errors import AlreadyExists, ContainerdError
from actors.containerd.errors import NotFound as TaskNotFound
from actors.containerd.model import TaskExit, TaskOOM, TaskStatus
from actors.containers import archive, logfile, oci, seccomp
from actors.containers.logfile import LogWriter
from actors.containers.model import Container, State
from actors.containers.mounts import ContainerMounts, rootfs_propagation
from actors.containers.spec import build_spec
from actors.containers.stdio import FifoSet, ProcessIO
from actors.containers.store import ContainerStore
from actors.containers.streams import OutputHub
from actors.events import EventsService
from actors.network import etc
from actors.network.model import empty_settings
from kernel.clock import now_rfc3339, parse_time
from kernel.errors import (
    Conflict,
    InternalError,
    InvalidParameter,
    NotModified,
    Unavailable,
)
from kernel.fsutil import atomic_write
from kernel.threadpipe import run_with_input

if TYPE_CHECKING:
    from actors.network.service import NetworkService
    from actors.volumes.service import VolumesService

log = logging.getLogger("pydockerd.containers")

DEFAULT_STOP_TIMEOUT = 10
LINK_WAIT = 5.0  # seconds a restored container waits for the ones it links to
RESTART_BACKOFF = 0.1
MIN_MEMORY = 6 * 1024 * 1024


class ImageProvider(Protocol):
    """What the containers actor needs from the images actor."""

    async def resolve_for_container(self, ref: str) -> tuple[str, dict[str, Any]]:
        """(image ID, the image's `config` object); NotFound `No such image: REF`."""
        ...

    async def create_rw_layer(self, container_id: str, image_id: str) -> None: ...
    async def mount_rw_layer(self, container_id: str) -> str: ...
    async def unmount_rw_layer(self, container_id: str) -> None: ...
    async def remove_rw_layer(self, container_id: str) -> None: ...
    def rw_size(self, container_id: str) -> int: ...
    def image_size(self, image_id: str) -> int: ...
    def mount_rw_layer_sync(self, container_id: str) -> str: ...
    def unmount_rw_layer_sync(self, container_id: str) -> None: ...
    async def changes(self, container_id: str) -> list[dict[str, object]]: ...

    @property
    def driver_name(self) -> str: ...


@dataclass(eq=False)
class Runtime:
    """What exists only while a container's process runs (never persisted)."""

    io: ProcessIO | None = None
    logger: LogWriter | None = None
    exited: trio.Event = field(default_factory=trio.Event)


class ContainersService:
    def __init__(
        self,
        *,
        root: Path,
        exec_root: Path,
        bridge: ContainerdBridge,
        images: ImageProvider,
        events: EventsService,
        volumes: VolumesService | None = None,
        network: NetworkService | None = None,
        cgroup_parent: str = "/pydockerd",
        default_ulimits: Callable[[], list[dict[str, Any]]] = list,
        live_restore: Callable[[], bool] = lambda: False,
        shutdown_timeout: Callable[[], int] = lambda: 15,
        log_defaults: Callable[[], tuple[str, dict[str, str]]] = lambda: ("json-file", {}),
    ) -> None:
        self.store = ContainerStore(root)
        self.root = root
        self.exec_root = exec_root
        self.bridge = bridge
        self.images = images
        self.events = events
        self.mounts = ContainerMounts(volumes)
        self.network = network
        self.cgroup_parent = cgroup_parent
        self.default_ulimits = default_ulimits
        self.live_restore = live_restore
        self.shutdown_timeout = shutdown_timeout
        self.log_defaults = log_defaults
        self._locks: dict[str, trio.Lock] = {}
        self._runtime: dict[str, Runtime] = {}
        self._hubs: dict[str, OutputHub] = {}  # attach may subscribe before the start
        self._exits: dict[str, int] = {}  # exits seen per container, for `wait`
        self._backoff: dict[str, float] = {}  # the next restart delay per container
        self._restart_waits: set[str] = set()  # containers whose restart delay is running
        self._stopping = False
        self._policies_applied = False
        self._restoring: dict[str, trio.Event] = {}
        self._restore_total = 0
        self._restore_done = False
        self._changed = trio.Event()  # set on every state change (waiters re-check)
        self._nursery: trio.Nursery | None = None
        self._loaded = False
        from actors.containers.execs import ExecStore

        self.execs = ExecStore(self)

    # -- the actor -------------------------------------------------------------

    async def run(self, *, stopping: trio.Event, task_status: trio.TaskStatus[Any]) -> None:
        if not self._loaded:
            self.root.mkdir(parents=True, exist_ok=True)
            self.store.load_all()
            self.mounts.restore(self.store)
            self._loaded = True
            # The containers restore will touch: requests for them wait for theirs only.
            self._restoring = {
                c.Id: trio.Event()
                for c in self.store
                if c.State.Running or self._should_restart(c, daemon_start=True)
            }
            self._restore_total = len(self._restoring)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                subscribed = trio.Event()
                nursery.start_soon(self._monitor, subscribed)
                nursery.start_soon(self.execs.collector)
                await subscribed.wait()
                for cid in self.store.trashed():  # removals a crash cut short
                    nursery.start_soon(self._dispose, cid)
                if self._policies_applied:
                    # A restart after a crash: reattach what runs, find exits we missed. (At
                    # daemon start the restore worker does this, and applies the policies.)
                    nursery.start_soon(self._reconcile)
                else:
                    nursery.start_soon(self.mounts.verify, list(self.store))
                task_status.started(self)
                await stopping.wait()
                self._stopping = True
                if not self.live_restore():
                    with trio.move_on_after(self.shutdown_timeout() + 5):
                        await self._stop_all()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self._detach_all()

    async def _detach_all(self) -> None:
        """Let go of every running container's stdio (the copy tasks died with the nursery).
        After a crash, the restarted actor's reconcile reattaches them like a daemon restart."""
        runtimes, self._runtime = self._runtime, {}
        for runtime in runtimes.values():
            if runtime.logger is not None:
                runtime.logger.close()
            if runtime.io is not None:
                await runtime.io.aclose()
        for hub in self._hubs.values():
            hub.topic.close()
        self._hubs.clear()

    async def _stop_all(self) -> None:
        """Daemon shutdown without live-restore: stop every container, all at once."""
        limit = self.shutdown_timeout()

        async def stop_one(container: Container) -> None:
            timeout = container.Config.get("StopTimeout")
            timeout = DEFAULT_STOP_TIMEOUT if timeout is None else timeout
            try:
                await self.stop(container.Id, min(timeout, limit), manual=False)
            except Exception as exc:
                log.warning("stopping %s at shutdown: %s", container.short_id, exc)

        async with trio.open_nursery() as nursery:
            for container in self.store:
                if container.State.Running:
                    nursery.start_soon(stop_one, container)

    async def _monitor(self, subscribed: trio.Event) -> None:
        """Follow containerd's task events; reconcile after every (re)connection."""
        async with self.bridge.events.subscribe() as events:
            subscribed.set()
            async for event in events:
                if isinstance(event, Reconnected):
                    assert self._nursery is not None
                    self._nursery.start_soon(self._reconcile)
                elif isinstance(event, TaskExit) and event.id == event.container_id:
                    self._spawn(self._handle_exit, event.container_id, event.exit_status)
                elif isinstance(event, TaskOOM):
                    container = self._find(event.container_id)
                    if container is not None:
                        container.State.OOMKilled = True
                        self._publish(container, "oom")

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is None:
            raise Unavailable("containers is not available")
        self._nursery.start_soon(fn, *args)

    def _find(self, cid: str) -> Container | None:
        try:
            return self.store.get(cid)
        except Exception:
            return None

    async def restore(self) -> None:
        """The restore worker's job at daemon start: reattach running containers, mark those
        that exited meanwhile, start those whose policy says so (children first). Requests
        for a container still being restored wait for it; they never wait forever."""
        try:
            await self._reconcile()
        finally:
            for cid in list(self._restoring):
                self._restored(cid)

    async def _reconcile(self) -> None:
        """Match our running containers with containerd's tasks; reattach or mark exited."""
        client = await self.bridge.wait_client()
        tasks = {t.container_id: t for t in await client.list_tasks()}
        for container in self.store:
            if (
                self._policies_applied  # (at load, the policy starts below cover it)
                and container.State.Restarting
                and container.Id not in self._restart_waits
            ):
                self._spawn(self._maybe_restart, container)  # its wait died with a crash
            if not container.State.Running:
                continue
            task = tasks.get(container.Id)
            if task is None:  # it exited while nobody watched (dockerd reports 255)
                self._restored(container.Id)
                self._spawn(self._handle_exit, container.Id, 255)
            elif task.status == TaskStatus.STOPPED:
                self._restored(container.Id)
                self._spawn(self._handle_exit, container.Id, task.exit_status)
            elif container.Id not in self._runtime:
                self._reattach(container, task.status == TaskStatus.PAUSED)
                self._restored(container.Id)
        if not self._policies_applied:
            self._policies_applied = True
            if self.network is not None:  # undo the sandboxes of containers gone meanwhile
                await self.network.reconcile({c.Id for c in self.store if c.State.Running})
            await self._start_by_policy()
            for cid in list(self._restoring):
                self._restored(cid)  # neither running nor to be started after all
            self._restore_done = True

    def _reattach(self, container: Container, paused: bool) -> None:
        """A task that outlived us (daemon restart): reopen its FIFOs and go on logging."""
        fifos = self._fifos(container)
        runtime = Runtime()
        runtime.io = ProcessIO(
            fifos, with_stdin=bool(container.Config.get("OpenStdin")), before_create=False
        )
        runtime.logger = self._logger(container)
        self._runtime[container.Id] = runtime
        container.State.Paused = paused
        container.State.Status = "paused" if paused else "running"
        self.store.refresh(container)
        self._spawn(self._copy_output, container.Id, runtime)
        log.info("reattached to running container %s", container.short_id)

    def hub(self, cid: str) -> OutputHub:
        """The output hub of the container's current (or next) run."""
        hub = self._hubs.get(cid)
        if hub is None:
            hub = self._hubs[cid] = OutputHub()
        return hub

    async def _copy_output(self, cid: str, runtime: Runtime) -> None:
        hub = self.hub(cid)
        assert runtime.io is not None
        try:
            await hub.copy(runtime.io, runtime.logger.write if runtime.logger else None)
        finally:
            if self._hubs.get(cid) is hub:
                del self._hubs[cid]  # the next run gets a fresh hub

    # -- helpers -----------------------------------------------------------------

    async def _settled(self, cid: str) -> None:
        """Wait until the restore is done with this container (if it is not yet)."""
        restoring = self._restoring.get(cid)
        if restoring is not None:
            await restoring.wait()

    @asynccontextmanager
    async def _lock(self, cid: str) -> AsyncIterator[None]:
        await self._settled(cid)
        lock = self._locks.setdefault(cid, trio.Lock())
        async with lock:
            yield

    def _restored(self, cid: str) -> None:
        """The restore is done with this container: let its waiting requests in."""
        event = self._restoring.pop(cid, None)
        if event is not None:
            event.set()

    def statistics(self) -> dict[str, int]:
        """Load figures for /debug/actors (requests hold per-container locks, not a queue)."""
        return {
            "containers": len(self.store),
            "attached": len(self._runtime),
            "restoring": len(self._restoring),
            "waiting_for_locks": sum(
                lock.statistics().tasks_waiting for lock in self._locks.values()
            ),
            "pending_restarts": len(self._restart_waits),
        }

    def restore_progress(self) -> dict[str, Any]:
        return {
            "Containers": self._restore_total,
            "Restored": self._restore_total - len(self._restoring),
            "Done": self._restore_done,
        }

    def _publish(
        self, container: Container, action: str, extra: dict[str, str] | None = None
    ) -> None:
        attributes = {"image": container.image_name(), "name": container.Name.lstrip("/")}
        attributes.update(container.Config.get("Labels") or {})
        attributes.update(extra or {})
        self.events.publish("container", action, container.Id, attributes)

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def fifo_dir(self, cid: str) -> Path:
        """Where the FIFOs of the container's init process and of its execs are."""
        return self.exec_root / "containers" / cid

    def _fifos(self, container: Container) -> FifoSet:
        return FifoSet.for_process(self.fifo_dir(container.Id), "init", terminal=container.tty)

    def _logger(self, container: Container) -> LogWriter | None:
        log_config = container.HostConfig.get("LogConfig") or {}
        return logfile.open_writer(
            log_config.get("Type") or "json-file",
            Path(container.LogPath),
            log_config.get("Config") or {},
        )

    # -- create ------------------------------------------------------------------

    async def create(self, name: str, body: dict[str, Any]) -> tuple[str, list[str]]:
        host_config: dict[str, Any] = body.pop("HostConfig", None) or {}
        networking = body.pop("NetworkingConfig", None) or {}
        config = body
        warnings = validate_host_config(host_config)
        ref = config.get("Image") or ""
        if not ref:
            raise InvalidParameter("no image specified")  # dockerd: config has no image
        image_id, image_config = await self.images.resolve_for_container(ref)
        merge_image_config(config, image_config)
        entrypoint = list(config.get("Entrypoint") or [])
        cmd = list(config.get("Cmd") or [])
        argv = entrypoint + cmd
        if not argv:
            raise InvalidParameter("No command specified")
        mount_points = self.mounts.plan(config, host_config, self.store.get)
        network_settings = (
            self.network.plan(host_config, networking)
            if self.network is not None
            else empty_settings()
        )
        cid = self.store.new_id()
        full_name = self.store.reserve_name(name, cid)
        try:
            directory = self.root / cid
            directory.mkdir(mode=0o710)
            config.setdefault("Hostname", cid[:12])
            if (host_config.get("NetworkMode") or "default") == "host":
                config["Hostname"] = oci.host_hostname()
            host_config.setdefault("NetworkMode", "default")
            self._default_log_config(host_config)
            host_config.setdefault("RestartPolicy", {"Name": "no", "MaximumRetryCount": 0})
            await self.images.create_rw_layer(cid, image_id)
            await self.mounts.create_volumes(cid, mount_points)
            container = Container(
                Id=cid,
                Created=now_rfc3339(),
                Path=argv[0],
                Args=argv[1:],
                Config=config,
                HostConfig=host_config,
                State=State(),
                Image=image_id,
                Name=full_name,
                Driver=self.images.driver_name,
                LogPath=logfile.log_path(directory, host_config["LogConfig"]["Type"]),
                ResolvConfPath=str(directory / "resolv.conf"),
                HostnamePath=str(directory / "hostname"),
                HostsPath=str(directory / "hosts"),
                NetworkSettings=network_settings,
                MountPoints=mount_points,
            )
            container.sync_mounts()
            self._write_etc_files(container)
            self.store.add(container)
        except BaseException:
            self.store.release_name(full_name)
            with trio.CancelScope(shield=True):
                await self.mounts.release(cid, mount_points, remove_anonymous=True)
                try:
                    await self.images.remove_rw_layer(cid)
                except Exception:
                    pass
            shutil.rmtree(self.root / cid, ignore_errors=True)
            raise
        self._publish(container, "create")
        return cid, warnings

    def _default_log_config(self, host_config: dict[str, Any]) -> None:
        """The daemon's --log-driver/--log-opt fill in what the request left out (dockerd)."""
        log_config = host_config.get("LogConfig") or {}
        kind, options = log_config.get("Type") or "", log_config.get("Config") or {}
        if not kind:
            driver, defaults = self.log_defaults()
            kind, options = driver, {**defaults, **options}
        logfile.check_log_config(kind, options)
        host_config["LogConfig"] = {"Type": kind, "Config": options}

    def _write_etc_files(self, container: Container) -> None:
        """/etc/hostname, hosts and resolv.conf, made at create and again at each start
        (before the task: they are bind-mounted, never replaced under a running one)."""
        hostname = container.Config.get("Hostname") or container.short_id
        if self.network is not None:
            hosts, resolv = self.network.etc_files(container)
        else:
            extra = container.HostConfig.get("ExtraHosts") or []
            hosts = etc.hosts_file(hostname, "", [], extra, [])
            resolv = etc.resolv_conf(embedded=False, dns=[], search=[], options=[])
        files = {
            container.HostnamePath: f"{hostname}\n",
            container.HostsPath: hosts,
            container.ResolvConfPath: resolv,
        }
        for name, text in files.items():
            path, data = Path(name), text.encode()
            try:
                if path.read_bytes() == data:
                    continue
            except FileNotFoundError:
                pass
            atomic_write(path, data, durable=False)  # derived: made again at every start

    # -- start -------------------------------------------------------------------

    async def start(self, ref: str) -> None:
        container = self.store.get(ref)
        async with self._lock(container.Id):
            state = container.State
            if state.Paused:
                raise Conflict("cannot start a paused container, try unpause instead")
            if state.Running:
                raise NotModified("container already started")
            if state.Status in ("removing", "dead") or container.RemovalInProgress:
                raise Conflict("container is marked for removal and cannot be started")
            try:
                await self._start_locked(container)
            except Exception:
                # dockerd removes an AutoRemove container whose start failed (the CLI's
                # `run --rm` waits for that removal).
                if container.HostConfig.get("AutoRemove"):
                    self._spawn(self._auto_remove, container)  # once the lock is released
                raise

    async def _start_locked(self, container: Container) -> None:
        client = await self.bridge.wait_client()
        rootfs = Path(await self.images.mount_rw_layer(container.Id))
        runtime = Runtime()
        try:
            volume_mounts = await self.mounts.setup(container, rootfs)
            container.sync_mounts()
            if self.network is not None:  # the sandbox exists before the task
                container.NetworkSettings = await self.network.attach(container)
                self._write_etc_files(container)
            spec = self._spec(container, rootfs, volume_mounts)
            fifos = self._fifos(container)
            with_stdin = bool(container.Config.get("OpenStdin"))
            runtime.io = ProcessIO(fifos, with_stdin=with_stdin, before_create=True)
            runtime.logger = self._logger(container)
            create = partial(
                client.create_and_start,
                container.Id,
                msgspec.json.encode(spec),
                (),
                fifos.stdin if with_stdin else "",
                fifos.stdout,
                fifos.stderr,
                container.tty,
            )
            try:
                pid = await create()
            except AlreadyExists:  # a record left by a crash before the cleanup: replace it
                await _ignore_missing(client.delete_task(container.Id))
                await client.delete_container(container.Id)
                pid = await create()
            runtime.io.release_holds()
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                if runtime.io is not None:
                    await runtime.io.aclose()
                if runtime.logger is not None:
                    runtime.logger.close()
                self.mounts.exited(container.Id)
                await self.mounts.teardown(container)
                await self.images.unmount_rw_layer(container.Id)
                if self.network is not None:
                    container.NetworkSettings = await self.network.release(container)
            if isinstance(exc, ContainerdError | InvalidParameter):
                container.State.Error = exc.message
                container.State.ExitCode = 128
                self.store.save(container)
                if isinstance(exc, ContainerdError) and not isinstance(exc, Unavailable):
                    raise InvalidParameter(
                        f"failed to create task for container: {exc.message}"
                    ) from None
            raise
        self._runtime[container.Id] = runtime
        container.State.set_running(pid)
        container.HasBeenStartedBefore = True
        container.HasBeenManuallyStopped = False
        self.store.save(container)
        self._spawn(self._copy_output, container.Id, runtime)
        self._publish(container, "start")
        self._changed_now()

    def _spec(
        self,
        container: Container,
        rootfs: Path,
        volume_mounts: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        config, host = container.Config, container.HostConfig
        hostname = config.get("Hostname") or container.short_id
        uid, gid, groups = oci.resolve_user(
            rootfs, config.get("User") or "", host.get("GroupAdd") or []
        )
        etc_files = {
            "/etc/resolv.conf": container.ResolvConfPath,
            "/etc/hostname": container.HostnamePath,
            "/etc/hosts": container.HostsPath,
        }
        mounts = [
            {"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate"]}
            for dest, src in etc_files.items()
        ] + (volume_mounts or [])
        spec = build_spec(
            args=[container.Path, *container.Args],
            env=oci.process_env(container, hostname) + self._link_env(container),
            cwd=config.get("WorkingDir") or "/",
            uid=uid,
            gid=gid,
            additional_gids=groups,
            hostname=hostname,
            terminal=container.tty,
            read_only=bool(host.get("ReadonlyRootfs")),
            privileged=bool(host.get("Privileged")),
            cap_add=host.get("CapAdd") or [],
            cap_drop=host.get("CapDrop") or [],
            extra_mounts=mounts,
            namespaces=self._namespaces(host, container.NetworkSettings.get("SandboxKey") or ""),
            resources=oci.resources(host),
            rlimits=oci.rlimits(host, self.default_ulimits()),
            cgroups_path=f"{self.cgroup_parent}/{container.Id}",
            shm_size=host.get("ShmSize") or oci.DEFAULT_SHM_SIZE,
            sysctl=host.get("Sysctls") or {},
        )
        spec["root"]["path"] = str(rootfs)
        security_opts = host.get("SecurityOpt") or []
        profile = seccomp.for_container(
            security_opts, spec["process"]["capabilities"]["bounding"], bool(host.get("Privileged"))
        )
        if profile is not None:
            spec["linux"]["seccomp"] = profile
        spec["process"]["noNewPrivileges"] = seccomp.no_new_privileges(security_opts)
        if propagation := rootfs_propagation(volume_mounts or []):
            spec["linux"]["rootfsPropagation"] = propagation
        return spec

    def _link_env(self, container: Container) -> list[str]:
        """Legacy `--link` on the default bridge: the linked containers' variables."""
        from actors.network.etc import link_env

        env: list[str] = []
        for link in container.HostConfig.get("Links") or []:
            target_name, _, alias = link.partition(":")
            target = self._find(target_name.lstrip("/"))
            address = target.NetworkSettings.get("IPAddress") if target is not None else ""
            if target is None or not address:
                continue
            alias = alias.rsplit("/", 1)[-1] or target.Name.lstrip("/")
            ports = list((target.Config.get("ExposedPorts") or {}).keys())
            env += link_env(alias, container.Name, address, ports, target.Config.get("Env") or [])
        return env

    def _namespaces(self, host: dict[str, Any], sandbox_key: str = "") -> list[dict[str, str]]:
        namespaces = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        mode = host.get("NetworkMode") or "default"
        if mode.startswith("container:"):
            other = self.store.get(mode.split(":", 1)[1])
            if not other.State.Running:
                raise Conflict(f"cannot join network of a non running container: {other.Id}")
            if (other.HostConfig.get("NetworkMode") or "") != "host":
                path = other.NetworkSettings.get("SandboxKey") or f"/proc/{other.State.Pid}/ns/net"
                namespaces.append({"type": "network", "path": path})
        elif mode != "host":
            # The network actor's namespace (made before the task); without it, a new one.
            namespaces.append(
                {"type": "network", "path": sandbox_key} if sandbox_key else {"type": "network"}
            )
        if host.get("PidMode") == "host":
            namespaces = [n for n in namespaces if n["type"] != "pid"]
        if host.get("IpcMode") == "host":
            namespaces = [n for n in namespaces if n["type"] != "ipc"]
        return namespaces

    # -- exits -------------------------------------------------------------------

    async def _handle_exit(self, cid: str, status: int) -> None:
        """The task's init process exited with `status`: record the exit (waiters return at
        once, as with dockerd), then let go of the run under the same lock, so that no start
        or removal overlaps the cleanup."""
        container = self._find(cid)
        if container is None:
            return
        hub = self._hubs.get(cid)
        if hub is not None:
            # The shim closes the FIFOs once it has copied everything: wait for that, bounded.
            with trio.move_on_after(2):
                await hub.done.wait()
        async with self._lock(cid):
            if not container.State.Running:
                return
            self._finish_exit(container, status, "")
            with trio.CancelScope(shield=True):
                await self.mounts.teardown(container)
                if container.HostConfig.get("AutoRemove"):
                    await self._retire(container, volumes=True)
                    return
                await self._release_run(container)
        await self._maybe_restart(container)

    def _finish_exit(self, container: Container, code: int, error: str) -> None:
        runtime = self._runtime.pop(container.Id, None)
        if runtime is not None:
            if runtime.logger is not None:
                runtime.logger.close()
            if runtime.io is not None:
                self._spawn(runtime.io.aclose)
            runtime.exited.set()
        self.mounts.exited(container.Id)
        oom = container.State.OOMKilled
        container.State.set_exited(code, oom=oom, error=error)
        self._exits[container.Id] = self._exits.get(container.Id, 0) + 1
        self.store.save(container)
        self._publish(container, "die", {"exitCode": str(code)})
        self._changed_now()

    async def _release_run(self, container: Container) -> None:
        """What a stopped container keeps no more: its containerd task and record, its
        network sandbox, its mounted rootfs."""
        try:
            client = await self.bridge.wait_client()
            await _ignore_missing(client.delete_task(container.Id))
            await _ignore_missing(client.delete_container(container.Id))
        except Unavailable:
            pass  # the reconcile after the reconnection finds the task stopped
        if self.network is not None:
            try:
                container.NetworkSettings = await self.network.release(container)
                self.store.save(container)
            except Exception as exc:
                log.warning("releasing the network of %s: %s", container.short_id, exc)
        try:
            await self.images.unmount_rw_layer(container.Id)
        except Exception as exc:
            log.warning("unmounting rootfs of %s: %s", container.short_id, exc)

    async def _auto_remove(self, container: Container) -> None:
        try:
            await self.remove(container.Id, force=True, volumes=True)
        except Exception as exc:
            log.error("auto-removing %s: %s", container.short_id, exc)

    async def _retire(self, container: Container, *, volumes: bool) -> None:
        """Remove the container as users see it (under its lock): its network, its name, its
        record and (`volumes`) its anonymous volumes. The record moves to the store's trash
        in one rename; `_dispose` then deletes the rest out of the callers' way."""
        container.RemovalInProgress = True
        container.State.Status = "removing"
        self.store.refresh(container)
        if self.network is not None:
            try:
                await self.network.release(container)
            except Exception as exc:  # the removal goes on: the reconcile at start sweeps
                log.warning("releasing the network of %s: %s", container.short_id, exc)
        self.store.remove(container)
        await self.mounts.release(container.Id, container.MountPoints, remove_anonymous=volumes)
        self._locks.pop(container.Id, None)
        self._exits.pop(container.Id, None)
        self.execs.forget_container(container.Id)
        self._spawn(self._dispose, container.Id)
        self._publish(container, "destroy")
        self._changed_now()

    async def _dispose(self, cid: str) -> None:
        """A removed container's containerd task and record, rootfs and FIFOs. Every step
        may repeat: the trash entry goes last, and the next start finishes what a crash or
        an absent containerd left."""
        with trio.CancelScope(shield=True):
            try:
                client = await self.bridge.wait_client()
                await _ignore_missing(client.delete_task(cid))
                await _ignore_missing(client.delete_container(cid))
                await self.images.unmount_rw_layer(cid)
                await self.images.remove_rw_layer(cid)
            except Exception as exc:
                log.warning("removing what is left of container %s: %s", cid[:12], exc)
                return
            shutil.rmtree(self.fifo_dir(cid), ignore_errors=True)
            self.store.empty_trash(cid)

    # -- restart policies (the restart manager) -----------------------------------------

    def _should_restart(self, container: Container, *, daemon_start: bool = False) -> bool:
        if self._stopping or container.RemovalInProgress or container.State.Running:
            return False
        policy = container.HostConfig.get("RestartPolicy") or {}
        name = policy.get("Name") or "no"
        if name == "always":
            return daemon_start or not container.HasBeenManuallyStopped
        if name == "unless-stopped":
            return not container.HasBeenManuallyStopped
        if name == "on-failure" and not daemon_start and not container.HasBeenManuallyStopped:
            limit = policy.get("MaximumRetryCount") or 0
            return container.State.ExitCode != 0 and (limit == 0 or container.RestartCount < limit)
        return False

    async def _maybe_restart(self, container: Container) -> None:
        """dockerd's back-off: 100 ms doubling, back to 100 ms after 10 s of running."""
        if not self._should_restart(container):
            self._backoff.pop(container.Id, None)
            return
        ran = _seconds_between(container.State.StartedAt, container.State.FinishedAt)
        delay = (
            RESTART_BACKOFF
            if ran >= 10
            else min(self._backoff.get(container.Id, RESTART_BACKOFF / 2) * 2, 60.0)
        )
        self._backoff[container.Id] = delay
        container.State.Restarting, container.State.Status = True, "restarting"
        self.store.save(container)
        self._restart_waits.add(container.Id)
        try:
            await trio.sleep(delay)
        finally:
            self._restart_waits.discard(container.Id)
        async with self._lock(container.Id):
            container.State.Restarting = False
            if not self._should_restart(container):
                container.State.Status = "exited"
                self.store.save(container)
                return
            container.RestartCount += 1
            try:
                await self._start_locked(container)
            except Exception as exc:
                log.error("restarting %s: %s", container.short_id, exc)
                container.State.Status = "exited"
                self.store.save(container)
                return
        self._publish(container, "restart")

    async def _start_by_policy(self) -> None:
        """At daemon start: bring back, all at once, the containers whose policy says they
        should run. One that links to others waits for them first, 5 s at most (dockerd)."""
        chosen = [c for c in self.store if self._should_restart(c, daemon_start=True)]
        started = {c.Id: trio.Event() for c in chosen}

        async def start(container: Container) -> None:
            with trio.move_on_after(LINK_WAIT):
                for child in self._linked(container):
                    if child in started:
                        await started[child].wait()
            self._restored(container.Id)
            try:
                async with self._lock(container.Id):
                    await self._start_locked(container)
            except Exception as exc:
                log.error("starting %s by its restart policy: %s", container.short_id, exc)
            finally:
                started[container.Id].set()

        async with trio.open_nursery() as nursery:
            for container in chosen:
                nursery.start_soon(start, container)

    def _linked(self, container: Container) -> list[str]:
        """IDs of the containers `--link` names (`name:alias` or dockerd's `/name:/x/alias`)."""
        ids = []
        for link in container.HostConfig.get("Links") or []:
            child = self._find(link.split(":")[0].lstrip("/"))
            if child is not None:
                ids.append(child.Id)
        return ids

    # -- stop, kill, wait ---------------------------------------------------------

    async def kill(self, ref: str, signal: str) -> None:
        container = self.store.get(ref)
        signum = parse_signal(signal or "KILL")
        await self._settled(container.Id)
        if not container.State.Running:
            raise Conflict(f"Cannot kill container: {ref}: Container {container.Id} is not running")
        client = await self.bridge.wait_client()
        await client.kill(container.Id, signum)
        self._publish(container, "kill", {"signal": str(signum)})

    async def stop(
        self, ref: str, stop_timeout: int | None, signal: str = "", *, manual: bool = True
    ) -> None:
        container = self.store.get(ref)
        await self._settled(container.Id)
        if not container.State.Running:
            if container.State.Restarting:  # cancels the pending restart
                container.HasBeenManuallyStopped = manual
                return
            raise NotModified("container already stopped")
        runtime = self._runtime.get(container.Id)
        container.HasBeenManuallyStopped = manual
        signum = parse_signal(signal or container.Config.get("StopSignal") or "TERM")
        timeout = stop_timeout
        if timeout is None:
            timeout = container.Config.get("StopTimeout")
            timeout = DEFAULT_STOP_TIMEOUT if timeout is None else timeout
        client = await self.bridge.wait_client()
        if container.State.Paused:
            await client.resume(container.Id)
        try:
            await client.kill(container.Id, signum)
            self._publish(container, "kill", {"signal": str(signum)})
        except TaskNotFound:
            pass
        if runtime is not None and timeout >= 0:
            with trio.move_on_after(timeout):
                await runtime.exited.wait()
        if container.State.Running:
            try:
                await client.kill(container.Id, signals.SIGKILL, all=True)
                self._publish(container, "kill", {"signal": str(int(signals.SIGKILL))})
            except TaskNotFound:
                pass
            if runtime is not None:
                await runtime.exited.wait()
        self._publish(container, "stop")

    async def restart(self, ref: str, stop_timeout: int | None) -> None:
        container = self.store.get(ref)
        if container.State.Running:
            await self.stop(ref, stop_timeout)
        await self.start(container.Id)
        self._publish(container, "restart")

    async def wait(self, ref: str, condition: str) -> tuple[int, str]:
        """Block until the condition holds; (exit code, error text)."""
        container = self.store.get(ref)
        if condition not in ("", "not-running", "next-exit", "removed"):
            raise InvalidParameter(f"invalid condition: {condition!r}")
        if condition == "removed":
            while self.store.get_or_none(container.Id) is not None:
                await self._changed.wait()
        elif condition == "next-exit" or container.State.Running:
            # Count exits rather than watch the runtime: a process can start and exit
            # before this task runs again.
            target = self._exits.get(container.Id, 0) + 1
            while self._exits.get(container.Id, 0) < target:
                await self._changed.wait()
        return container.State.ExitCode, container.State.Error

    # -- stdin ---------------------------------------------------------------------

    async def write_stdin(self, cid: str, data: bytes) -> None:
        """Feed the process's stdin; an attach made before the start waits for it."""
        runtime = self._runtime.get(cid)
        while runtime is None:
            await self._changed.wait()
            runtime = self._runtime.get(cid)
        if runtime.io is not None and runtime.io.stdin is not None:
            try:
                await runtime.io.stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the process is gone or its stdin was closed

    async def close_stdin(self, cid: str) -> None:
        """StdinOnce: the attach's stdin ended, so the process's stdin ends too."""
        runtime = self._runtime.get(cid)
        if runtime is None or runtime.io is None:
            return
        await runtime.io.close_stdin()
        try:
            await (await self.bridge.wait_client()).close_io(cid)
        except ContainerdError:
            pass

    # -- pause, rename, resize, update ----------------------------------------------

    async def pause(self, ref: str) -> None:
        container = self.store.get(ref)
        async with self._lock(container.Id):
            if not container.State.Running:
                raise Conflict(f"Container {container.Id} is not running")
            if container.State.Paused:
                raise Conflict(f"Container {container.Id} is already paused")
            await (await self.bridge.wait_client()).pause(container.Id)
            container.State.Paused, container.State.Status = True, "paused"
            self.store.save(container)
        self._publish(container, "pause")

    async def unpause(self, ref: str) -> None:
        container = self.store.get(ref)
        async with self._lock(container.Id):
            if not container.State.Paused:
                raise Conflict(f"Container {container.Id} is not paused")
            await (await self.bridge.wait_client()).resume(container.Id)
            container.State.Paused, container.State.Status = False, "running"
            self.store.save(container)
        self._publish(container, "unpause")

    @asynccontextmanager
    async def paused(self, ref: str, pause: bool = True) -> AsyncIterator[None]:
        """Freeze a running container for the block (`docker commit`, pause=true by default)."""
        container = self.store.get(ref)
        frozen = pause and container.State.Running and not container.State.Paused
        if frozen:
            await self.pause(container.Id)
        try:
            yield
        finally:
            if frozen:
                with trio.CancelScope(shield=True):
                    await self.unpause(container.Id)

    async def rename(self, ref: str, new_name: str) -> None:
        container = self.store.get(ref)
        async with self._lock(container.Id):
            old = container.Name
            name = self.store.reserve_name(new_name, container.Id)
            if name == old:
                raise Conflict("Renaming a container with the same name as its current name")
            container.Name = name
            self.store.release_name(old)
            self.store.save(container)
            if self.network is not None:
                self.network.rename(container.Id, old.lstrip("/"), name.lstrip("/"))
        self._publish(container, "rename", {"oldName": old})

    async def resize(self, ref: str, height: int, width: int) -> None:
        container = self.store.get(ref)
        if not container.State.Running:
            raise Conflict(f"Container {container.Id} is not running")
        await (await self.bridge.wait_client()).resize_pty(container.Id, width, height)

    async def update(self, ref: str, changes: dict[str, Any]) -> list[str]:
        container = self.store.get(ref)
        async with self._lock(container.Id):
            if "RestartPolicy" in changes and container.HostConfig.get("AutoRemove"):
                name = (changes["RestartPolicy"] or {}).get("Name", "no")
                if name not in ("", "no"):
                    raise InvalidParameter(
                        f"Cannot update container {container.Id}: Restart policy cannot be "
                        "updated because AutoRemove is enabled for the container"
                    )
            warnings = validate_host_config({**container.HostConfig, **changes})
            updated = {
                **container.HostConfig,
                **{k: v for k, v in changes.items() if v is not None},
            }
            if container.State.Running:
                await (await self.bridge.wait_client()).update_resources(
                    container.Id, msgspec.json.encode(oci.resources(updated))
                )
            container.HostConfig = updated
            self.store.save(container)
        self._publish(container, "update")
        return warnings

    async def change_network(
        self, ref: str, change: Callable[[Container], Awaitable[dict[str, Any]]]
    ) -> None:
        """`docker network connect/disconnect`: the network actor computes the new
        NetworkSettings; the record and /etc/hosts follow."""
        container = self.store.get(ref)
        async with self._lock(container.Id):
            container.NetworkSettings = await change(container)
            self.store.save(container)
            if self.network is not None and container.State.Running:
                # Bind-mounted into the container: new content, same inode.
                hosts, _ = self.network.etc_files(container)
                Path(container.HostsPath).write_text(hosts)

    # -- remove ---------------------------------------------------------------------

    async def remove(self, ref: str, *, force: bool, volumes: bool) -> None:
        container = self.store.get(ref)
        if container.State.Running and not force:
            if container.State.Paused:
                raise Conflict(
                    f'cannot remove container "{container.Name}": container is paused '
                    "and must be unpaused first"
                )
            raise Conflict(
                f'cannot remove container "{container.Name}": container is running: '
                "stop the container before removing or force remove"
            )
        if container.State.Running:
            await self.kill_and_wait(container)
        async with self._lock(container.Id):
            if self.store.get_or_none(container.Id) is not None:
                with trio.CancelScope(shield=True):
                    await self._retire(container, volumes=volumes)

    async def kill_and_wait(self, container: Container) -> None:
        runtime = self._runtime.get(container.Id)
        client = await self.bridge.wait_client()
        try:
            await client.kill(container.Id, signals.SIGKILL, all=True)
            self._publish(container, "kill", {"signal": "9"})
        except TaskNotFound:
            pass
        if runtime is not None:
            with trio.move_on_after(15):
                await runtime.exited.wait()

    # -- docker cp ----------------------------------------------------------------------

    async def archive_stat(self, ref: str, path: str) -> str:
        container = self.store.get(ref)
        header: str = await self._with_root(
            container, lambda root: archive.path_stat(root, path, container.Name)
        )
        return header

    def archive_reader(self, ref: str, path: str) -> Callable[[BinaryIO], None]:
        """A function that writes the path as a tar (run it in a thread)."""
        container = self.store.get(ref)

        def write(out: BinaryIO) -> None:
            root = Path(self.images.mount_rw_layer_sync(container.Id))
            try:
                archive.write_tar(root, path, container.Name, out)
            finally:
                self.images.unmount_rw_layer_sync(container.Id)

        return write

    async def archive_write(
        self,
        ref: str,
        path: str,
        body: AsyncIterable[bytes],
        *,
        copy_uid_gid: bool = False,
        no_overwrite_dir_non_dir: bool = False,
    ) -> None:
        """`docker cp` into the container. Entries keep the tar's owners; with `copyUIDGID`
        (`cp -a`) they belong to the container's user, as dockerd."""
        container = self.store.get(ref)
        user = container.Config.get("User") or ""

        def owner_of(root: Path) -> tuple[int, int] | None:
            archive.resolve(root, path, container.Name)  # a 404 before reading the body
            if not (copy_uid_gid and user):
                return None
            uid, gid, _ = oci.resolve_user(root, user, [])
            return uid, gid

        owner = await self._with_root(container, owner_of)

        def extract(source: BinaryIO) -> None:
            root = Path(self.images.mount_rw_layer_sync(container.Id))
            try:
                archive.extract_into(
                    root,
                    path,
                    container.Name,
                    source,
                    owner=owner,
                    no_overwrite_dir_non_dir=no_overwrite_dir_non_dir,
                )
            finally:
                self.images.unmount_rw_layer_sync(container.Id)

        await run_with_input(extract, body)

    async def _with_root(self, container: Container, work: Callable[[Path], Any]) -> Any:
        def run() -> Any:
            root = Path(self.images.mount_rw_layer_sync(container.Id))
            try:
                return work(root)
            finally:
                self.images.unmount_rw_layer_sync(container.Id)

        return await trio.to_thread.run_sync(run)

    # -- reads ----------------------------------------------------------------------

    async def top(self, ref: str, ps_args: str) -> dict[str, Any]:
        """`docker top`: the host's `ps` output, cut down to the container's processes."""
        container = self.store.get(ref)
        if not container.State.Running:
            raise Conflict(f"Container {container.Id} is not running")
        client = await self.bridge.wait_client()
        pids = {process.pid for process in await client.list_pids(container.Id)}
        try:
            args = shlex.split(ps_args or "-ef")
        except ValueError as exc:
            raise InvalidParameter(f"invalid ps arguments: {exc}") from None
        result = await trio.run_process(
            ["ps", *args], capture_stdout=True, capture_stderr=True, check=False
        )
        if result.returncode != 0:
            raise InternalError(f"ps: {result.stderr.decode(errors='replace').strip()}")
        lines = result.stdout.decode(errors="replace").splitlines()
        titles = lines[0].split() if lines else []
        if "PID" not in titles:
            raise InvalidParameter("Couldn't find PID field in ps output")
        pid_at = titles.index("PID")
        processes = []
        for line in lines[1:]:
            fields = line.split(None, len(titles) - 1)
            if len(fields) > pid_at and fields[pid_at].isdigit() and int(fields[pid_at]) in pids:
                processes.append(fields)
        return {"Titles": titles, "Processes": processes}

    def list_containers(
        self, filters: dict[str, list[str]], *, all_containers: bool, limit: int, size: bool
    ) -> list[dict[str, Any]]:
        """`docker ps`: from the snapshot, newest first, without taking any lock."""
        summaries = self.store.summaries()  # newest first
        # As moby's list.go: a status filter, a limit, or before/since list stopped ones too.
        everything = all_containers or limit > 0 or {"status", "before", "since"} & set(filters)
        if not everything:
            summaries = [s for s in summaries if s["State"] in ("running", "paused", "restarting")]
        summaries = [dict(s) for s in summaries if self._matches(s, filters)]
        if limit > 0:
            summaries = summaries[:limit]
        for summary in summaries if size else []:
            try:
                summary["SizeRw"] = self.images.rw_size(summary["Id"])
            except Exception:
                summary["SizeRw"] = 0
            try:
                image = self.images.image_size(summary["ImageID"])
            except Exception:
                image = 0  # the image went (rmi -f)
            summary["SizeRootFs"] = summary["SizeRw"] + image
        return summaries

    def _matches(self, summary: dict[str, Any], filters: dict[str, list[str]]) -> bool:
        container = self.store.get_or_none(summary["Id"])
        if container is None:
            return False
        for key, values in filters.items():
            if not values:
                continue
            if key == "status":
                if summary["State"] not in values:
                    return False
            elif key == "name":
                names = [n.lstrip("/") for n in summary["Names"]]
                if not any(re.search(v.lstrip("/"), n) for v in values for n in names):
                    return False
            elif key == "id":
                if not any(summary["Id"].startswith(v) for v in values):
                    return False
            elif key == "label":
                labels = summary["Labels"]
                for label in values:
                    k, sep, v = label.partition("=")
                    if k not in labels or (sep and labels[k] != v):
                        return False
            elif key == "exited":
                if container.State.Running or str(container.State.ExitCode) not in values:
                    return False
            elif key == "ancestor":
                if not any(
                    v in (summary["Image"], summary["ImageID"])
                    or summary["ImageID"].removeprefix("sha256:").startswith(v)
                    for v in values
                ):
                    return False
            elif key in ("before", "since"):
                # Created times are fixed-width UTC RFC 3339: string order is time order.
                pivot = self.store.get(values[0]).Created
                if key == "before" and not container.Created < pivot:
                    return False
                if key == "since" and not container.Created > pivot:
                    return False
            elif key == "network":
                networks = summary["NetworkSettings"]["Networks"]
                mode = summary["HostConfig"]["NetworkMode"]
                if not any(v in networks or v == mode for v in values):
                    return False
            elif key == "volume":
                if not self.mounts.uses(container, values):
                    return False
            elif key in ("publish", "expose"):
                wanted = {p for v in values for p in _port_set(v)}
                side = "PublicPort" if key == "publish" else "PrivatePort"
                if not any((p.get(side), p.get("Type")) in wanted for p in summary["Ports"]):
                    return False
            elif key == "health":
                if "none" not in values:  # no container has a healthcheck (yet)
                    return False
            elif key == "is-task":
                if values[0] in ("1", "true"):  # no swarm: no task containers
                    return False
            else:
                raise InvalidParameter(f"invalid filter '{key}'")
        return True

    def image_usage(self) -> dict[str, list[tuple[str, bool]]]:
        """Which containers use which image (the images actor asks before deleting)."""
        usage: dict[str, list[tuple[str, bool]]] = {}
        for container in self.store:
            usage.setdefault(container.Image, []).append((container.Id, container.State.Running))
        return usage

    async def prune(self, filters: dict[str, list[str]]) -> dict[str, Any]:
        deleted = []
        for container in self.store:
            if container.State.Running or container.State.Paused:
                continue
            if not self._matches(
                container.summary(), {k: v for k, v in filters.items() if k == "label"}
            ):
                continue
            await self.remove(container.Id, force=False, volumes=False)
            deleted.append(container.Id)
        return {"ContainersDeleted": deleted or None, "SpaceReclaimed": 0}

    def inspect(self, ref: str) -> dict[str, Any]:
        container = self.store.get(ref)
        data = container.inspect()
        data["ExecIDs"] = self.execs.ids_of(container.Id) or None
        return data

    def runtime(self, cid: str) -> Runtime | None:
        return self._runtime.get(cid)

    async def info_fields(self) -> dict[str, Any]:
        states = [c.State for c in self.store]
        running = sum(1 for s in states if s.Running and not s.Paused)
        paused = sum(1 for s in states if s.Paused)
        return {
            "Containers": len(states),
            "ContainersRunning": running,
            "ContainersPaused": paused,
            "ContainersStopped": len(states) - running - paused,
            "Restore": self.restore_progress(),
        }


def merge_image_config(config: dict[str, Any], image: dict[str, Any]) -> None:
    """dockerd's merge of the image's defaults into a new container's Config."""
    if not config.get("User"):
        config["User"] = image.get("User") or ""
    config["Env"] = oci.merge_env(image.get("Env") or [], config.get("Env") or [])
    labels = dict(image.get("Labels") or {})
    labels.update(config.get("Labels") or {})
    config["Labels"] = labels
    if not config.get("Entrypoint"):
        if not config.get("Cmd"):
            config["Cmd"] = image.get("Cmd")
        config["Entrypoint"] = image.get("Entrypoint")
    if not config.get("WorkingDir"):
        config["WorkingDir"] = image.get("WorkingDir") or ""
    if not config.get("StopSignal") and image.get("StopSignal"):
        config["StopSignal"] = image["StopSignal"]
    exposed = dict(image.get("ExposedPorts") or {})
    exposed.update(config.get("ExposedPorts") or {})
    if exposed:
        config["ExposedPorts"] = exposed
    volumes = dict(image.get("Volumes") or {})
    volumes.update(config.get("Volumes") or {})
    if volumes:
        config["Volumes"] = volumes


def validate_host_config(host: dict[str, Any]) -> list[str]:
    """dockerd's checks (daemon/daemon_unix.go verifyPlatformContainerSettings) and texts."""
    warnings: list[str] = []
    memory = host.get("Memory") or 0
    if memory < 0:
        raise InvalidParameter("invalid memory limit: negative value")
    if 0 < memory < MIN_MEMORY:
        raise InvalidParameter("Minimum memory limit allowed is 6MB")
    swap = host.get("MemorySwap") or 0
    if memory and swap > 0 and swap < memory:
        raise InvalidParameter(
            "Minimum memoryswap limit should be larger than memory limit, see usage"
        )
    if not memory and swap > 0:
        raise InvalidParameter(
            "You should always set the Memory limit when using Memoryswap limit, see usage"
        )
    nano = host.get("NanoCpus") or 0
    if nano < 0:
        raise InvalidParameter("Range of CPUs is from 0.01 to available CPUs")
    if nano and (host.get("CpuQuota") or host.get("CpuPeriod")):
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    if nano > (os.cpu_count() or 1) * 1_000_000_000:
        raise InvalidParameter(
            f"Range of CPUs is from 0.01 to {os.cpu_count()}.00, as there are only "
            f"{os.cpu_count()} CPUs available"
        )
    if (host.get("CpuShares") or 0) < 0:
        raise InvalidParameter("invalid CPU shares: negative value")
    if (host.get("PidsLimit") or 0) < -1:
        raise InvalidParameter("invalid PIDs limit")
    policy = host.get("RestartPolicy") or {}
    name = policy.get("Name") or "no"
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise InvalidParameter(f"invalid restart policy '{name}'")
    if name != "on-failure" and policy.get("MaximumRetryCount"):
        raise InvalidParameter(
            "invalid restart policy: maximum retry count can only be used with 'on-failure'"
        )
    if (policy.get("MaximumRetryCount") or 0) < 0:
        raise InvalidParameter("invalid restart policy: maximum retry count cannot be negative")
    if host.get("AutoRemove") and name != "no":
        raise InvalidParameter("can't create 'AutoRemove' container with restart policy")
    seccomp.validate_security_opts(host.get("SecurityOpt") or [])
    return warnings


_SIGNALS = {
    s.name[3:]: int(s)
    for s in signals.Signals
    if s.name.startswith("SIG") and not s.name.startswith("SIG_")
}


def parse_signal(text: str) -> int:
    """Names with or without SIG, or numbers (moby signal.ParseSignal)."""
    raw = str(text).strip().upper()
    if raw.isdigit():
        number = int(raw)
        if number == 0 or number > 64:
            raise InvalidParameter(f"Invalid signal: {text}")
        return number
    name = raw[3:] if raw.startswith("SIG") else raw
    if name not in _SIGNALS:
        raise InvalidParameter(f"Invalid signal: {text}")
    return _SIGNALS[name]


def _port_set(spec: str) -> set[tuple[int, str]]:
    """A ps port filter (`80`, `8080/udp`, `8000-8010/tcp`) as (port, proto) pairs."""
    ports, _, proto = spec.partition("/")
    low, _, high = ports.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise InvalidParameter(f"invalid port filter {spec!r}") from None
    return {(port, proto or "tcp") for port in range(first, last + 1)}


def _seconds_between(start: str, end: str) -> float:
    return ((parse_time(end) or 0) - (parse_time(start) or 0)) / 1e9


async def _ignore_missing(call: Awaitable[Any]) -> None:
    """A containerd deletion whose object is gone already (a repeated cleanup)."""
    try:
        await call
    except TaskNotFound:
        pass
