"""The daemon's wiring: which actors run, in what order, and how a reload reaches them."""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
import traceback
import uuid
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

import config
from actors import events as events_actor
from actors import signals
from actors.api import ApiService, ListenConfig
from actors.events import EventsService
from api.context import ApiContext, ApiSettings
from api.listeners import ListenerError, TlsFiles
from kernel import logs, memory
from kernel.fsutil import atomic_write
from kernel.sdnotify import notify
from kernel.supervisor import ChildSpec, Supervisor

if TYPE_CHECKING:
    from actors.containerd.bridge import ContainerdBridge
    from actors.containers.service import ContainersService
    from actors.images.service import ImagesService
    from actors.network.service import NetworkService
    from actors.stats.collector import StatsCollector
    from actors.volumes.service import VolumesService

log = logging.getLogger("pydockerd.daemon")

DATA_DIRS = ("containers", "image", "volumes", "network", "trust", "tmp")
# The modules of the actors after containerd: loaded in a thread while containerd boots, so
# each actor finds its module ready instead of importing it in turn.
LATER_ACTOR_MODULES = (
    "actors.images.service",
    "actors.network.service",
    "actors.volumes.service",
    "actors.containers.service",
    "actors.stats.collector",
)


def _preload_modules() -> None:
    for name in LATER_ACTOR_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # the actor's own import reports it properly
            return


def prepare_roots(cfg: config.DaemonConfig) -> str:
    """Create the data-root layout and return the engine ID (kept across restarts)."""
    data_root = Path(cfg.data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    os.chmod(data_root, 0o711)
    for name in DATA_DIRS:
        (data_root / name).mkdir(mode=0o700, exist_ok=True)
    Path(cfg.exec_root).mkdir(parents=True, mode=0o700, exist_ok=True)
    id_file = data_root / "engine-id"
    try:
        return id_file.read_text().strip()
    except FileNotFoundError:
        engine_id = str(uuid.uuid4())
        atomic_write(id_file, engine_id.encode(), mode=0o600)
        return engine_id


def api_settings(cfg: config.DaemonConfig) -> ApiSettings:
    return ApiSettings(
        cors_header=cfg.api_cors_header,
        debug=cfg.debug,
        authorization_plugins=tuple(cfg.authorization_plugins),
    )


def listen_config(cfg: config.DaemonConfig) -> ListenConfig:
    tls = None
    if cfg.tls or cfg.tlsverify:
        tls = TlsFiles(
            cert=str(cfg.tlscert),
            key=str(cfg.tlskey),
            ca=str(cfg.tlscacert) if cfg.tlsverify else None,
        )
    return ListenConfig(hosts=tuple(cfg.hosts), group=cfg.group, tls=tls)


class Daemon:
    def __init__(self, options: config.Options, cfg: config.DaemonConfig) -> None:
        self.options = options
        self.cfg = cfg
        self.daemon_id = prepare_roots(cfg)
        self.events = EventsService(
            journal_file=Path(cfg.data_root) / "events.jsonl", journal_size=cfg.events_journal_size
        )
        self.supervisor: Supervisor | None = None
        self.context = ApiContext(
            events=self.events,
            daemon_id=self.daemon_id,
            config=lambda: self.cfg,
            supervisor=lambda: self.supervisor,
        )
        self.api = ApiService(self.context, api_settings(cfg), listen_config(cfg))
        self.containerd: ContainerdBridge | None = None
        self.images: ImagesService | None = None
        self.volumes: VolumesService | None = None
        self.containers: ContainersService | None = None
        self.stats: StatsCollector | None = None
        self.network: NetworkService | None = None
        self._reload_lock = trio.Lock()

    def children(self) -> list[ChildSpec]:
        return [
            ChildSpec(
                id="signals",
                start=partial(
                    signals.run, on_stop=self.stop, on_reload=self.reload, on_dump=self.dump
                ),
                shutdown=1.0,
            ),
            ChildSpec(id="events", start=partial(events_actor.run, self.events), shutdown=1.0),
            # The API starts early so /_ping answers at once; requests for the actors
            # below wait for them briefly. At stop it is drained first (see `stop`).
            ChildSpec(id="api", start=self.api.run, shutdown=20.0),
            ChildSpec(id="containerd", start=self._run_containerd, shutdown=15.0),
            ChildSpec(id="images", start=self._run_images, shutdown=5.0),
            ChildSpec(id="volumes", start=self._run_volumes, shutdown=5.0),
            ChildSpec(id="network", start=self._run_network, shutdown=10.0),
            ChildSpec(id="containers", start=self._run_containers, shutdown=30.0),
            ChildSpec(id="restore", start=self._run_restore, restart="temporary", shutdown=1.0),
            ChildSpec(id="stats", start=self._run_stats, shutdown=1.0),
        ]

    async def _run_containerd(self, *, stopping: trio.Event, task_status: Any) -> None:
        if self.containerd is None:
            threading.Thread(target=_preload_modules, name="preload", daemon=True).start()
            # grpclib and protobuf load in a thread while the API already answers /_ping.
            bridge = await trio.to_thread.run_sync(
                importlib.import_module, "actors.containerd.bridge"
            )
            self.containerd = bridge.ContainerdBridge(
                address=self.cfg.containerd,
                namespace=self.cfg.containerd_namespace,
                data_root=Path(self.cfg.data_root),
                exec_root=Path(self.cfg.exec_root),
            )
            self.context.register("containerd", self.containerd)
        await self.containerd.run(stopping=stopping, task_status=task_status)

    async def _run_images(self, *, stopping: trio.Event, task_status: Any) -> None:
        if self.images is None:
            module = await trio.to_thread.run_sync(importlib.import_module, "actors.images.service")
            self.images = await trio.to_thread.run_sync(
                module.ImagesService, Path(self.cfg.data_root), self.cfg.storage_driver
            )
            self.context.register("images", self.images)
        assert self.images is not None
        await self.images.run(stopping=stopping, task_status=task_status)

    async def _run_volumes(self, *, stopping: trio.Event, task_status: Any) -> None:
        if self.volumes is None:
            module = await trio.to_thread.run_sync(
                importlib.import_module, "actors.volumes.service"
            )
            self.volumes = module.VolumesService(
                Path(self.cfg.data_root) / "volumes",
                self.events,
                plugin_dirs=lambda: tuple(self.cfg.plugin_dirs),
            )
            self.context.register("volumes", self.volumes)
        assert self.volumes is not None
        await self.volumes.run(stopping=stopping, task_status=task_status)

    async def _run_network(self, *, stopping: trio.Event, task_status: Any) -> None:
        if self.network is None:
            module = await trio.to_thread.run_sync(
                importlib.import_module, "actors.network.service"
            )
            self.network = module.NetworkService(
                data_root=Path(self.cfg.data_root),
                exec_root=Path(self.cfg.exec_root),
                events=self.events,
                bridge=self.cfg.bridge,
                bip=self.cfg.bip,
                mtu=self.cfg.mtu,
                firewall=module.Firewall(masquerade=self.cfg.ip_masq,
                                         userland_proxy=self.cfg.userland_proxy)
                if self.cfg.iptables else None,
                userland_proxy=self.cfg.userland_proxy,
            )  # fmt: skip
            self.context.register("network", self.network)
        assert self.network is not None
        await self.network.run(stopping=stopping, task_status=task_status)

    async def _run_containers(self, *, stopping: trio.Event, task_status: Any) -> None:
        if self.containers is None:
            assert self.containerd is not None and self.images is not None
            assert self.volumes is not None
            module = await trio.to_thread.run_sync(
                importlib.import_module, "actors.containers.service"
            )
            self.containers = module.ContainersService(
                root=Path(self.cfg.data_root) / "containers",
                exec_root=Path(self.cfg.exec_root),
                bridge=self.containerd,
                images=self.images,
                volumes=self.volumes,
                events=self.events,
                network=self.network,
                cgroup_parent=f"/{self.cfg.containerd_namespace}",
                default_ulimits=lambda: [
                    {"Name": u.name, "Soft": u.soft, "Hard": u.hard}
                    for u in self.cfg.default_ulimits.values()
                ],
                live_restore=lambda: self.cfg.live_restore,
                shutdown_timeout=lambda: self.cfg.shutdown_timeout,
                log_defaults=lambda: (self.cfg.log_driver, dict(self.cfg.log_opts)),
            )
            self.images.container_usage = self.containers.image_usage
            self.context.register("containers", self.containers)
        assert self.containers is not None
        await self.containers.run(stopping=stopping, task_status=task_status)

    async def _run_restore(self, *, stopping: trio.Event, task_status: Any) -> None:
        """The restore worker: brings the containers back, then ends (a temporary actor)."""
        assert self.containers is not None
        task_status.started(None)
        await self.containers.restore()

    async def _run_stats(self, *, stopping: trio.Event, task_status: Any) -> None:
        if self.stats is None:
            assert self.containerd is not None
            module = await trio.to_thread.run_sync(
                importlib.import_module, "actors.stats.collector"
            )
            self.stats = module.StatsCollector(self.containerd)
            self.context.register("stats", self.stats)
        assert self.stats is not None
        await self.stats.run(stopping=stopping, task_status=task_status)

    async def run(self) -> None:
        """Serve until stopped; raise what made the daemon fail."""
        import trio_asyncio  # grpclib (containerd) needs one asyncio loop around everything

        supervisor = Supervisor(self.children())
        self.supervisor = supervisor
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            log.info("Daemon has completed initialization")
            self.events.publish("daemon", "start", self.daemon_id, {"name": os.uname().nodename})
            notify("READY=1")
            memory.trim()  # the imports and the restore freed much of what they took

    def stop(self) -> None:
        """Stop accepting API requests first, then stop the actors in reverse order."""
        notify("STOPPING=1")
        # Event streams would hold the API drain open: end them first.
        self.events.publish("daemon", "shutdown", self.daemon_id, {"name": os.uname().nodename})
        self.events.close()
        self.api.drain()
        if self.supervisor is not None:
            self.supervisor.stop()

    async def reload(self) -> None:
        """SIGHUP: re-read daemon.json and apply it whole, or keep the running configuration."""
        async with self._reload_lock:
            notify("RELOADING=1")
            try:
                await self._reload()
            finally:
                notify("READY=1")

    async def _reload(self) -> None:
        try:
            new, diff = config.reload(self.cfg, self.options)
            listen = listen_config(new)
            ApiService.check_listen(listen)
        except (config.ConfigError, ListenerError) as exc:
            log.error("Error reloading configuration, keeping the running one: %s", exc)
            return
        old = self.cfg
        try:
            if listen != self.api.listen:
                await self.api.apply_listen(listen)
        except (ListenerError, OSError) as exc:
            log.error("Error reloading configuration, keeping the running one: %s", exc)
            await self.api.apply_listen(listen_config(old))
            return
        self.cfg = new
        logs.set_level(level=new.log_level, debug=new.debug)
        self.events.resize(new.events_journal_size)
        await self.api.apply_settings(api_settings(new))
        log.info(
            "Reloaded configuration: applied live: %s; needs a restart: %s",
            ", ".join(sorted(diff.live)) or "nothing",
            ", ".join(sorted(diff.restart)) or "nothing",
        )
        attributes = {
            "name": os.uname().nodename,
            "debug": str(new.debug).lower(),
            "labels": str(list(new.labels)),
            "applied": ",".join(sorted(diff.live)),
            "needs-restart": ",".join(sorted(diff.restart)),
        }
        self.events.publish("daemon", "reload", self.daemon_id, attributes)

    async def dump(self) -> None:
        """SIGUSR1: write the actor tree and every task's stack to a file in exec-root."""
        lines = [f"pydockerd actor dump at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"]
        if self.supervisor is not None:
            for child in self.supervisor.statistics():
                lines.append(
                    f"actor {child.id}: state={child.state} restarts={child.restarts} "
                    f"last_error={child.last_error}"
                )
        lines.append("")
        _dump_task(trio.lowlevel.current_root_task(), lines, 0)
        path = Path(self.cfg.exec_root) / f"pydockerd-dump-{int(time.time())}.log"
        atomic_write(path, "\n".join(lines).encode() + b"\n")
        log.info("actor tree and task stacks written to %s", path)


def _dump_task(task: Any, lines: list[str], depth: int) -> None:
    indent = "  " * depth
    lines.append(f"{indent}task {task.name}")
    for frame, lineno in task.iter_await_frames():
        summary = traceback.FrameSummary(frame.f_code.co_filename, lineno, frame.f_code.co_name)
        lines.append(f"{indent}  at {summary.name} ({summary.filename}:{summary.lineno})")
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            _dump_task(child, lines, depth + 1)
