"""System router: /version, /info, /events, /system/df (/_ping lives on the edge)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from quart import Blueprint, Response, request

from api.context import ctx
from api.hostinfo import host_facts
from api.http import check_filter_keys, json_response, parse_filters, query_timestamp
from api.versioning import API_VERSION, MIN_API_VERSION
from kernel import VERSION
from kernel.clock import now_rfc3339
from kernel.errors import InvalidParameter

router = Blueprint("system", __name__)

PLATFORM_NAME = "pydockerd"
PYTHON_VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"

EVENT_FILTERS = {
    "config", "container", "daemon", "event", "image", "label", "network",
    "node", "plugin", "scope", "secret", "service", "type", "volume",
}  # fmt: skip


def _component_versions() -> list[dict[str, Any]]:
    """containerd/runc versions, from the actors that know them (empty until they exist)."""
    components: list[dict[str, Any]] = []
    for handle in ctx().actors.values():
        versions = getattr(handle, "component_versions", None)
        if versions is not None:
            components.extend(versions())
    return components


@router.route("/version", methods=["GET"])
async def version() -> Response:
    facts = host_facts()
    engine = {
        "ApiVersion": API_VERSION,
        "Arch": facts.goarch,
        "BuildTime": "",
        "Experimental": "false",
        "GitCommit": "",
        "GoVersion": PYTHON_VERSION,
        "KernelVersion": facts.kernel_version,
        "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux",
    }
    return json_response(
        {
            "Platform": {"Name": PLATFORM_NAME},
            "Components": [
                {"Name": "Engine", "Version": VERSION, "Details": engine},
                *_component_versions(),
            ],
            "Version": VERSION,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": PYTHON_VERSION,
            "Os": "linux",
            "Arch": facts.goarch,
            "KernelVersion": facts.kernel_version,
            "BuildTime": "",
        }
    )


@router.route("/info", methods=["GET"])
async def info() -> Response:
    context = ctx()
    cfg = context.config()
    facts = host_facts()
    fields: dict[str, Any] = {
        "ID": context.daemon_id,
        "Containers": 0,
        "ContainersRunning": 0,
        "ContainersPaused": 0,
        "ContainersStopped": 0,
        "Images": 0,
        "Driver": cfg.storage_driver or "",
        "DriverStatus": [],
        "Plugins": {
            "Volume": [],
            "Network": [],
            "Authorization": list(cfg.authorization_plugins) or None,
            "Log": [],
        },
        "MemoryLimit": facts.memory_limit,
        "SwapLimit": facts.swap_limit,
        "CpuCfsPeriod": facts.cpu_cfs_period,
        "CpuCfsQuota": facts.cpu_cfs_quota,
        "CPUShares": facts.cpu_shares,
        "CPUSet": facts.cpuset,
        "PidsLimit": facts.pids_limit,
        "OomKillDisable": facts.oom_kill_disable,
        "IPv4Forwarding": facts.ipv4_forwarding,
        "BridgeNfIptables": facts.bridge_nf_iptables,
        "BridgeNfIp6tables": facts.bridge_nf_ip6tables,
        "Debug": cfg.debug,
        "NFd": _open_fds(),
        "NGoroutines": 0,
        "SystemTime": now_rfc3339(),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": facts.cgroup_version,
        "NEventsListener": context.events.subscriber_count,
        "KernelVersion": facts.kernel_version,
        "OperatingSystem": facts.operating_system,
        "OSVersion": facts.os_version,
        "OSType": "linux",
        "Architecture": facts.architecture,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": _registry_config(
            list(cfg.insecure_registries), list(cfg.registry_mirrors)
        ),
        "NCPU": facts.ncpu,
        "MemTotal": facts.mem_total,
        "GenericResources": None,
        "DockerRootDir": str(cfg.data_root),
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": socket.gethostname(),
        "Labels": list(cfg.labels),
        "ExperimentalBuild": False,
        "ServerVersion": VERSION,
        "ClusterStore": cfg.cluster_store or "",
        "ClusterAdvertise": cfg.cluster_advertise or "",
        "Runtimes": {"runc": {"path": "runc"}},
        "DefaultRuntime": "runc",
        "Swarm": {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "inactive",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": None,
        },
        "LiveRestoreEnabled": cfg.live_restore,
        "Isolation": "",
        "InitBinary": "",
        "ContainerdCommit": {"ID": ""},
        "RuncCommit": {"ID": ""},
        "InitCommit": {"ID": ""},
        "SecurityOptions": [],
        "Warnings": _warnings(cfg),
        "Containerd": {
            "Address": cfg.containerd or "",
            "Namespaces": {"Containers": cfg.containerd_namespace, "Plugins": ""},
        },
    }
    # Actors that exist contribute what they own (counts, driver status, versions).
    for handle in context.actors.values():
        contribute = getattr(handle, "info_fields", None)
        if contribute is not None:
            fields.update(await contribute())
    return json_response(fields)


def _registry_config(insecure: list[str], mirrors: list[str]) -> dict[str, Any]:
    cidrs = [r for r in insecure if "/" in r and r.split("/")[-1].isdigit()]
    cidrs = cidrs or ["::1/128", "127.0.0.0/8"]
    index_configs: dict[str, Any] = {
        "docker.io": {"Name": "docker.io", "Mirrors": mirrors, "Secure": True, "Official": True}
    }
    for registry in insecure:
        if registry not in cidrs:
            index_configs[registry] = {
                "Name": registry,
                "Mirrors": [],
                "Secure": False,
                "Official": False,
            }
    return {
        "AllowNondistributableArtifactsCIDRs": None,
        "AllowNondistributableArtifactsHostnames": None,
        "InsecureRegistryCIDRs": cidrs,
        "IndexConfigs": index_configs,
        "Mirrors": mirrors,
    }


def _warnings(cfg: Any) -> list[str]:
    warnings: list[str] = []
    for host in cfg.hosts:
        if host.startswith("tcp://") and not cfg.tlsverify:
            warnings.append(
                f"WARNING: API is accessible on {host} without encryption.\n"
                "         Access to the remote API is equivalent to root access on the host. "
                "Refer\n         to the 'Docker daemon attack surface' section in the "
                "documentation for\n         more information: "
                "https://docs.docker.com/go/attack-surface/"
            )
    return warnings


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


@router.route("/events", methods=["GET"])
async def events() -> Response:
    filters = parse_filters(request.args.get("filters"))
    check_filter_keys(filters, EVENT_FILTERS)
    since = query_timestamp("since")
    until = query_timestamp("until")
    if since is not None and until is not None and until < since:
        raise InvalidParameter("`since` time should be before `until` time")
    service = ctx().events
    encoder = msgspec.json.Encoder()

    async def stream() -> AsyncIterator[bytes]:
        async with service.open_stream(since_ns=since, until_ns=until, filters=filters) as evs:
            async for event in evs:
                yield encoder.encode(event) + b"\n"

    return Response(stream(), status=200, content_type="application/json")


@router.route("/system/df", methods=["GET"])
async def system_df() -> Response:
    """Disk usage as `docker system df` shows it (volumes and build cache come later)."""
    context = ctx()
    images_service = await context.actor("images")
    containers_service = await context.actor("containers")
    containers = containers_service.list_containers({}, all_containers=True, limit=-1, size=True)
    using: dict[str, int] = {}
    for container in containers:
        using[container["ImageID"]] = using.get(container["ImageID"], 0) + 1
    images = images_service.list_images({})
    for image in images:
        image["Containers"] = using.get(image["Id"], 0)
    return json_response(
        {
            "LayersSize": sum(image["Size"] for image in images),
            "Images": images,
            "Containers": containers,
            "Volumes": [],
            "BuildCache": [],
        }
    )
