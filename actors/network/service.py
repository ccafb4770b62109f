"""The network actor: networks, IPAM, a network namespace per container, veth pairs on
bridges, published ports (userland proxy) and the embedded DNS server.

State lives in two kinds of records under `<data-root>/network/`: `networks/<id>.json`
(one per network, Engine API shape) and `sandboxes/<container id>.json` (a container's
namespace, endpoints and ports). A sandbox record is written *before* the kernel objects
it names are made, so whatever a crash leaves behind can be undone: at daemon start the
sandboxes of containers that are no longer running are torn down (`reconcile`), those of
running (live-restored) containers keep their addresses, proxies and DNS.

Kernel work (pyroute2, setns) runs in worker threads (`netlink.py`); one lock serialises
changes, which take a few tens of milliseconds.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import trio

from actors.network import dns, etc, ipam, netlink, proxy
from actors.network.iptables import Firewall
from actors.network.model import (
    BRIDGE_NAME_OPTION,
    ICC_OPTION,
    MASQUERADE_OPTION,
    MTU_OPTION,
    PREDEFINED,
    Endpoint,
    Network,
    PortBinding,
    Sandbox,
    empty_settings,
)
from kernel.clock import now_rfc3339
from kernel.errors import Conflict, Forbidden, InternalError, InvalidParameter, NotFound
from kernel.fsutil import atomic_write

if TYPE_CHECKING:
    from actors.containers.model import Container
    from actors.events import EventsService

T = TypeVar("T")

log = logging.getLogger("pydockerd.network")

DEFAULT_BRIDGE = "pydocker0"
REAP_GRACE = 1.0  # the kernel deletes a freed namespace's veths well within this


def _endpoint_settings(network: Network, config: dict[str, Any] | None) -> dict[str, Any]:
    """An EndpointSettings object before the container runs (no addresses yet)."""
    config = config or {}
    return {
        "IPAMConfig": config.get("IPAMConfig") or None,
        "Links": config.get("Links") or None,
        "Aliases": config.get("Aliases") or None,
        "MacAddress": config.get("MacAddress") or "",
        "DriverOpts": config.get("DriverOpts") or None,
        "GwPriority": 0,
        "NetworkID": network.Id,
        "EndpointID": "",
        "Gateway": "",
        "IPAddress": "",
        "IPPrefixLen": 0,
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "DNSNames": None,
    }


def _clear_endpoint(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        **settings,
        "EndpointID": "",
        "Gateway": "",
        "IPAddress": "",
        "IPPrefixLen": 0,
        "MacAddress": "",
        "DNSNames": None,
    }


TOP_LEVEL = ("EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "MacAddress")


def _port_key(key: str) -> tuple[int, str]:
    port, _, proto = key.partition("/")
    try:
        return int(port), proto or "tcp"
    except ValueError:
        raise InvalidParameter(f"invalid port specification: {key!r}") from None


def wanted_ports(config: dict[str, Any], host: dict[str, Any]) -> list[tuple[PortBinding, int]]:
    """-p and -P as bindings to make, each with the last host port of its range; host
    port 0 means an ephemeral one."""
    bindings: dict[str, list[dict[str, str]]] = dict(host.get("PortBindings") or {})
    if host.get("PublishAllPorts"):
        for key in config.get("ExposedPorts") or {}:
            bindings.setdefault(key, [{"HostIp": "", "HostPort": ""}])
    out: list[tuple[PortBinding, int]] = []
    for key, entries in bindings.items():
        port, proto = _port_key(key)
        for entry in entries or [{}]:
            text = entry.get("HostPort") or "0"
            first, _, last = text.partition("-")
            if not first.isdigit() or not (last or first).isdigit():
                raise InvalidParameter(f"invalid port specification: {text!r}")
            binding = PortBinding(proto, port, entry.get("HostIp") or "", int(first))
            out.append((binding, int(last or first)))
    return out


class NetworkService:
    def __init__(
        self,
        *,
        data_root: Path,
        exec_root: Path,
        events: EventsService,
        bridge: str = "",
        bip: str = "",
        mtu: int = 1500,
        dns: Callable[[], tuple[list[str], list[str], list[str]]] = lambda: ([], [], []),
        firewall: Firewall | None = None,
        userland_proxy: bool = True,
    ) -> None:
        self.root = data_root / "network"
        self.netns_dir = exec_root / "netns"
        self.events = events
        self.bridge_name = bridge or DEFAULT_BRIDGE
        self.bip = bip
        self.mtu = mtu or 1500
        self.daemon_dns = dns  # (--dns, --dns-search, --dns-opt)
        self.firewall = firewall  # --iptables
        # Without iptables DNAT the proxy is the only way in, whatever --userland-proxy says.
        self.userland_proxy = userland_proxy or firewall is None
        self.networks: dict[str, Network] = {}
        self.sandboxes: dict[str, Sandbox] = {}
        self._restored: set[str] = set()  # sandboxes found on disk at start
        # Proxies per container: their scope, and an event set once their sockets are closed.
        self._serving: dict[str, tuple[trio.CancelScope, trio.Event]] = {}
        self._dns: dict[str, trio.CancelScope] = {}  # embedded DNS per container
        self._lock = trio.Lock()
        self._bridges_up: set[str] = set()  # ensured since start: not checked per container
        self._nursery: trio.Nursery | None = None
        self._loaded = False

    # -- the actor -------------------------------------------------------------

    async def run(self, *, stopping: trio.Event, task_status: trio.TaskStatus[Any]) -> None:
        if not self._loaded:
            await trio.to_thread.run_sync(self._load)
            self._loaded = True
        if self.firewall is not None:  # our chains flushed, rebuilt below from the records
            await trio.to_thread.run_sync(self.firewall.start)
        await self._ensure_predefined()
        for network in list(self.networks.values()):
            if network.Driver == "bridge" and network.user_defined:
                try:
                    await self._ensure_bridge(network)
                except OSError as exc:  # its containers will fail to start, with this error
                    log.error("network %s: bridge %s: %s", network.Name, network.bridge, exc)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for sandbox in self.sandboxes.values():
                self._serve(sandbox, [])  # live-restored containers keep their ports
                try:
                    await self._publish(sandbox)
                except OSError as exc:
                    log.error("iptables rules of %s: %s", sandbox.name, exc)
                try:
                    await self._start_dns(sandbox)
                except OSError as exc:  # its container may be gone: reconcile decides
                    log.warning("embedded DNS server of %s: %s", sandbox.name, exc)
            task_status.started(self)
            await stopping.wait()
            nursery.cancel_scope.cancel()
        self._nursery = None
        self._serving.clear()
        self._dns.clear()

    def _load(self) -> None:
        for network in self._records("networks", Network):
            self.networks[network.Id] = network
        for sandbox in self._records("sandboxes", Sandbox):
            self.sandboxes[sandbox.container_id] = sandbox
            self._restored.add(sandbox.container_id)

    def _records(self, kind: str, record_type: type[T]) -> list[T]:
        """Every readable record under `<root>/<kind>/`; a broken one is logged and skipped."""
        directory = self.root / kind
        directory.mkdir(parents=True, exist_ok=True)
        records = []
        for path in directory.glob("*.json"):
            try:
                records.append(msgspec.json.decode(path.read_bytes(), type=record_type))
            except (OSError, msgspec.DecodeError) as exc:
                log.error("skipping record %s: %s", path, exc)
        return records

    def _save_network(self, network: Network) -> None:
        atomic_write(self.root / "networks" / f"{network.Id}.json", msgspec.json.encode(network))

    def _save_sandbox(self, sandbox: Sandbox) -> None:
        path = self.root / "sandboxes" / f"{sandbox.container_id}.json"
        # What it records (namespace, veths, ports) is kernel state a reboot erases too.
        atomic_write(path, msgspec.json.encode(sandbox), durable=False)

    async def _ensure_predefined(self) -> None:
        by_name = {n.Name: n for n in self.networks.values()}
        if self.bridge_name == "none":  # `-b none`: no default bridge network at all
            if "bridge" in by_name:
                gone = self.networks.pop(by_name.pop("bridge").Id)
                (self.root / "networks" / f"{gone.Id}.json").unlink(missing_ok=True)
            for name, driver in (("host", "host"), ("none", "null")):
                if name not in by_name:
                    network = Network(
                        Name=name, Id=secrets.token_hex(32), Created=now_rfc3339(), Driver=driver
                    )
                    by_name[name] = self.networks[network.Id] = network
                    await trio.to_thread.run_sync(self._save_network, network)
            return
        for name, driver in (("bridge", "bridge"), ("host", "host"), ("none", "null")):
            if name not in by_name:
                network = Network(
                    Name=name, Id=secrets.token_hex(32), Created=now_rfc3339(), Driver=driver
                )
                by_name[name] = self.networks[network.Id] = network
        bridge = by_name["bridge"]
        subnet, gateway = await trio.to_thread.run_sync(self._default_pool)
        bridge.IPAM = {
            "Driver": "default",
            "Options": None,
            "Config": [{"Subnet": str(subnet), "Gateway": gateway}],
        }
        bridge.Options = {
            "com.docker.network.bridge.default_bridge": "true",
            ICC_OPTION: "true",
            MASQUERADE_OPTION: "true",
            "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
            BRIDGE_NAME_OPTION: self.bridge_name,
            MTU_OPTION: str(self.mtu),
        }
        await self._ensure_bridge(bridge)
        for network in by_name.values():
            if network.Name in PREDEFINED:
                await trio.to_thread.run_sync(self._save_network, network)

    def _default_pool(self) -> tuple[ipaddress.IPv4Network, str]:
        """--bip; else the address the bridge device already has; else the first free pool."""
        if self.bip:
            iface = ipaddress.IPv4Interface(self.bip)
            return iface.network, str(iface.ip)
        existing = netlink.bridge_address(self.bridge_name)
        if existing is not None:
            iface = ipaddress.IPv4Interface(f"{existing[0]}/{existing[1]}")
            return iface.network, str(iface.ip)
        taken = netlink.routed_networks() + [
            ipaddress.IPv4Network(n.pool["Subnet"])
            for n in self.networks.values()
            if n.user_defined and n.pool.get("Subnet")
        ]
        pool = ipam.first_free_pool(taken)
        return pool, str(pool[1])

    async def _ensure_bridge(self, network: Network) -> None:
        pool = network.pool
        prefix = ipaddress.IPv4Network(pool["Subnet"]).prefixlen
        mtu = int(network.Options.get(MTU_OPTION) or self.mtu)
        await trio.to_thread.run_sync(
            netlink.ensure_bridge, network.bridge, pool["Gateway"], prefix, mtu
        )
        self._bridges_up.add(network.bridge)
        firewall = self.firewall
        if firewall is not None and not firewall.owns(f"network:{network.Id}"):
            options = network.Options
            await trio.to_thread.run_sync(
                lambda: firewall.add_network(
                    f"network:{network.Id}", network.bridge, pool["Subnet"],
                    internal=network.Internal,
                    icc=options.get(ICC_OPTION, "true").lower() != "false",
                    masquerade=options.get(MASQUERADE_OPTION, "true").lower() != "false",
                )
            )  # fmt: skip

    async def _forget_network(self, network: Network) -> None:
        await trio.to_thread.run_sync(netlink.delete_link, network.bridge)
        if self.firewall is not None:
            await trio.to_thread.run_sync(self.firewall.remove, f"network:{network.Id}")

    # -- lookups ---------------------------------------------------------------

    def get(self, ref: str) -> Network:
        """By name, full ID or unique ID prefix (dockerd's order); NotFound otherwise."""
        for network in self.networks.values():
            if network.Name == ref:
                return network
        if ref in self.networks:
            return self.networks[ref]
        matches = [n for n in self.networks.values() if ref and n.Id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidParameter(f"network {ref} is ambiguous ({len(matches)} matches found)")
        raise NotFound(f"network {ref} not found")

    def _endpoints_on(self, network_id: str) -> list[tuple[Sandbox, Endpoint]]:
        return [
            (sandbox, endpoint)
            for sandbox in self.sandboxes.values()
            for endpoint in sandbox.endpoints
            if endpoint.network_id == network_id
        ]

    def inspect(self, ref: str, scope: str = "") -> dict[str, Any]:
        network = self.get(ref)
        if scope and scope != network.Scope:
            raise NotFound(f"network {ref} not found")
        data = network.view()
        data["Containers"] = {
            sandbox.container_id: {
                "Name": sandbox.name,
                "EndpointID": endpoint.endpoint_id,
                "MacAddress": endpoint.mac,
                "IPv4Address": f"{endpoint.address}/{endpoint.prefixlen}",
                "IPv6Address": "",
            }
            for sandbox, endpoint in self._endpoints_on(network.Id)
        }
        return data

    def list_networks(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        out = []
        for network in self.networks.values():
            if self._matches(network, filters):
                data = network.view()
                data["Containers"] = {}
                out.append(data)
        return sorted(out, key=lambda n: n["Created"])

    def _matches(self, network: Network, filters: dict[str, list[str]]) -> bool:
        for key, values in filters.items():
            if not values:
                continue
            if key == "name" and not any(v in network.Name for v in values):
                return False
            if key == "id" and not any(network.Id.startswith(v) for v in values):
                return False
            if key == "driver" and network.Driver not in values:
                return False
            if key == "scope" and network.Scope not in values:
                return False
            if key == "type":
                kind = "custom" if network.user_defined else "builtin"
                if any(v not in ("custom", "builtin") for v in values):
                    bad = next(v for v in values if v not in ("custom", "builtin"))
                    raise InvalidParameter(f"invalid filter: 'type'='{bad}'")
                if kind not in values:
                    return False
            if key == "label":
                for label in values:
                    k, sep, v = label.partition("=")
                    if k not in network.Labels or (sep and network.Labels[k] != v):
                        return False
            if key == "dangling":
                dangling = values[0].lower() in ("true", "1")
                unused = network.user_defined and not self._endpoints_on(network.Id)
                if dangling != unused:
                    return False
        return True

    # -- networks ----------------------------------------------------------------

    async def create(self, body: dict[str, Any]) -> tuple[str, str]:
        """`docker network create`; (ID, warning)."""
        name = body.get("Name") or ""
        if not name:
            raise InvalidParameter("network name is empty")  # dockerd: invalid name
        driver = body.get("Driver") or "bridge"
        if driver in ("host", "null") or name in PREDEFINED:
            raise Forbidden(f"{name} is a pre-defined network and cannot be created")
        if driver != "bridge":
            raise NotFound(f'plugin "{driver}" not found')
        if body.get("Ingress"):
            raise Forbidden("ingress networks need swarm mode, which is not supported")
        async with self._lock:
            if any(n.Name == name for n in self.networks.values()):
                raise Conflict(f"network with name {name} already exists")
            network = Network(
                Name=name,
                Id=secrets.token_hex(32),
                Created=now_rfc3339(),
                Internal=bool(body.get("Internal")),
                Attachable=bool(body.get("Attachable")),
                EnableIPv6=bool(body.get("EnableIPv6")),
                Options=dict(body.get("Options") or {}),
                Labels=dict(body.get("Labels") or {}),
            )
            network.IPAM = await self._plan_ipam(network, body.get("IPAM") or {})
            network.configured_subnet = any(
                c.get("Subnet") and ":" not in c["Subnet"]
                for c in (body.get("IPAM") or {}).get("Config") or []
            )
            if any(
                n.Driver == "bridge" and n.bridge == network.bridge for n in self.networks.values()
            ):
                raise Forbidden(f"bridge name {network.bridge} already in use")
            try:
                await self._ensure_bridge(network)
            except FileExistsError as exc:
                raise Forbidden(
                    f"bridge name {network.bridge} is not available: {exc.strerror}"
                ) from None
            except OSError as exc:  # iptables refused a rule: no half-made network
                with trio.CancelScope(shield=True):
                    await self._forget_network(network)
                raise InternalError(f"failed to create network {name}: {exc}") from None
            try:
                await trio.to_thread.run_sync(self._save_network, network)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._forget_network(network)
                raise
            self.networks[network.Id] = network
        self.events.publish("network", "create", network.Id, {"name": name, "type": "bridge"})
        return network.Id, ""

    async def _plan_ipam(self, network: Network, spec: dict[str, Any]) -> dict[str, Any]:
        configs = spec.get("Config") or []
        # IPv6 pools are kept as given (shown by inspect) but not used: no IPv6 addressing.
        v6 = [dict(c) for c in configs if ":" in (c.get("Subnet") or "")]
        v4 = [dict(c) for c in configs if ":" not in (c.get("Subnet") or "")]
        if len(v4) > 1:
            raise InvalidParameter("only one IPv4 pool per network is supported")
        config = v4[0] if v4 else {}
        others = [
            ipaddress.IPv4Network(n.pool["Subnet"])
            for n in self.networks.values()
            if n.Driver == "bridge" and n.pool.get("Subnet")
        ]
        if config.get("Subnet"):
            subnet = ipam.parse_subnet(config["Subnet"])
            ipam.check_overlap(subnet, others)
        else:
            if config.get("IPRange") or config.get("Gateway"):
                raise InvalidParameter("invalid pool request: ip-range or gateway without subnet")
            routed = await trio.to_thread.run_sync(netlink.routed_networks)
            subnet = ipam.first_free_pool(others + routed)
        gateway = config.get("Gateway") or str(subnet[1])
        if ipam.parse_address(gateway, "gateway") not in subnet:
            raise InvalidParameter(f"no matching subnet for gateway {gateway}")
        out: dict[str, Any] = {"Subnet": str(subnet), "Gateway": gateway}
        if config.get("IPRange"):
            ip_range = ipam.parse_subnet(config["IPRange"])
            if not ip_range.subnet_of(subnet):
                raise InvalidParameter(f"no matching subnet for range {config['IPRange']}")
            out["IPRange"] = str(ip_range)
        aux = dict(config.get("AuxiliaryAddresses") or {})
        for address in aux.values():
            if ipam.parse_address(address) not in subnet:
                raise InvalidParameter(f"no matching subnet for aux-address {address}")
        if aux:
            out["AuxiliaryAddresses"] = aux  # reserved: never given to an endpoint
        return {"Driver": spec.get("Driver") or "default", "Options": spec.get("Options") or {},
                "Config": [out, *v6]}  # fmt: skip

    async def remove(self, ref: str) -> None:
        network = self.get(ref)
        if not network.user_defined:
            raise Forbidden(f"{network.Name} is a pre-defined network and cannot be removed")
        async with self._lock:
            active = self._endpoints_on(network.Id)
            if active:
                sandbox = active[0][0]
                raise Forbidden(
                    f"error while removing network: network {network.Name} has active "
                    f'endpoints (name:"{sandbox.name}" id:"{sandbox.container_id[:12]}")'
                )
            await self._forget_network(network)
            (self.root / "networks" / f"{network.Id}.json").unlink(missing_ok=True)
            del self.networks[network.Id]
        self.events.publish(
            "network", "destroy", network.Id, {"name": network.Name, "type": "bridge"}
        )

    async def prune(self, filters: dict[str, list[str]]) -> dict[str, Any]:
        deleted = []
        for network in list(self.networks.values()):
            labels = {k: v for k, v in filters.items() if k == "label"}
            if not network.user_defined or not self._matches(network, labels):
                continue
            if self._endpoints_on(network.Id):
                continue
            try:
                await self.remove(network.Id)
            except (Forbidden, NotFound):
                continue
            deleted.append(network.Name)
        return {"NetworksDeleted": deleted or None}

    # -- containers: create ---------------------------------------------------------

    def plan(self, host: dict[str, Any], networking: dict[str, Any]) -> dict[str, Any]:
        """NetworkSettings of a new container: which networks, with what settings."""
        settings = empty_settings()
        mode = host.get("NetworkMode") or "default"
        if mode.startswith("container:"):
            if host.get("PortBindings") or host.get("PublishAllPorts"):
                raise InvalidParameter(
                    "conflicting options: port publishing and the container type network mode"
                )
            return settings
        endpoints: dict[str, Any] = dict(networking.get("EndpointsConfig") or {})
        primary = mode
        if mode == "default":
            primary = "none" if self.bridge_name == "none" else "bridge"
        wanted = [(primary, endpoints.pop(mode, None) or endpoints.pop(primary, None))]
        wanted += list(endpoints.items())
        for ref, config in wanted:
            try:
                network = self.get(ref)
            except NotFound:
                # As dockerd: a missing network fails the start, not the create (a 404
                # here would make the CLI try to pull the image).
                settings["Networks"][ref] = {**_endpoint_settings(Network(Name=ref, Id="",
                                             Created=""), config), "NetworkID": ""}  # fmt: skip
                continue
            self._check_endpoint_config(network, config or {})
            settings["Networks"][network.Name] = _endpoint_settings(network, config)
        if mode == "host" and (host.get("PortBindings") or host.get("PublishAllPorts")):
            host.pop("PortBindings", None)  # dockerd discards them (with a warning)
        return settings

    def _check_endpoint_config(self, network: Network, config: dict[str, Any]) -> None:
        ipam_config = config.get("IPAMConfig") or {}
        if not network.user_defined:
            if ipam_config.get("IPv4Address") or ipam_config.get("IPv6Address"):
                raise InvalidParameter(
                    "user specified IP address is supported on user defined networks only"
                )
            if config.get("Aliases") and network.Name == "bridge":
                raise InvalidParameter(
                    "network-scoped alias is supported only for containers in user defined networks"
                )
        address = ipam_config.get("IPv4Address")
        if address and not network.configured_subnet:
            raise InvalidParameter(
                "user specified IP address is supported only when connecting to networks with "
                "user configured subnets"
            )
        if address:
            subnet = ipaddress.IPv4Network(network.pool["Subnet"])
            ip_range = network.pool.get("IPRange")
            if ipam.parse_address(address) not in (
                ipaddress.IPv4Network(ip_range) if ip_range else subnet
            ):
                raise InvalidParameter(
                    "invalid endpoint settings:\n"
                    f"no configured subnet or ip-range contain the IP address {address}"
                )

    # -- containers: start and stop -----------------------------------------------------

    async def attach(self, container: Container) -> dict[str, Any]:
        """Before the task is created: namespace, endpoints, ports, DNS. Returns the
        container's NetworkSettings with its addresses (SandboxKey: the namespace)."""
        settings: dict[str, Any] = {**empty_settings(), **container.NetworkSettings}
        mode = container.HostConfig.get("NetworkMode") or "default"
        if mode == "host" or mode.startswith("container:"):
            return settings  # the host's namespace, or the other container's
        async with self._lock:
            if container.Id in self.sandboxes:  # a start that failed half way
                await self._teardown(self.sandboxes.pop(container.Id))
            sandbox = Sandbox(
                container_id=container.Id,
                name=container.Name.lstrip("/"),
                hostname=container.Config.get("Hostname") or container.short_id,
                netns=str(self.netns_dir / container.Id),
                dns=list(container.HostConfig.get("Dns") or []),
            )
            for name, endpoint_settings in settings["Networks"].items():
                try:  # by name first: a network re-created under its name still serves
                    network = self.get(name)
                except NotFound:
                    try:
                        network = self.get(endpoint_settings.get("NetworkID") or name)
                    except NotFound as exc:
                        raise NotFound(f"failed to set up container networking: {exc}") from None
                if network.Driver == "bridge":
                    endpoint = self._new_endpoint(container, network, sandbox, endpoint_settings)
                    sandbox.endpoints.append(endpoint)
            self.sandboxes[container.Id] = sandbox
            try:
                await trio.to_thread.run_sync(self._save_sandbox, sandbox)
                await trio.to_thread.run_sync(netlink.create_netns, sandbox.netns)
                for endpoint in sandbox.endpoints:
                    await self._plumb(sandbox, endpoint)
                sockets = await self._bind_ports(container, sandbox)
                if sandbox.ports:
                    await trio.to_thread.run_sync(self._save_sandbox, sandbox)
                self._serve(sandbox, sockets)
                await self._publish(sandbox)
                await self._start_dns(sandbox)
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await self._teardown(self.sandboxes.pop(container.Id))
                if isinstance(exc, OSError):
                    raise InternalError(f"network setup failed: {exc}") from None
                raise
        self._publish_endpoints("connect", sandbox)
        return self._settings(container, settings, sandbox)

    def _publish_endpoints(self, action: str, sandbox: Sandbox) -> None:
        """dockerd's `network connect`/`disconnect` events at a container's start and exit."""
        for endpoint in sandbox.endpoints:
            network = self.networks.get(endpoint.network_id)
            if network is not None:
                self.events.publish(
                    "network", action, network.Id,
                    {"container": sandbox.container_id, "name": network.Name, "type": "bridge"},
                )  # fmt: skip

    def _new_endpoint(
        self, container: Container, network: Network, sandbox: Sandbox, config: dict[str, Any]
    ) -> Endpoint:
        pool = network.pool
        subnet = ipaddress.IPv4Network(pool["Subnet"])
        used = {
            e.address for s in self.sandboxes.values() for e in s.endpoints
            if e.network_id == network.Id
        } | {e.address for e in sandbox.endpoints if e.network_id == network.Id}  # fmt: skip
        used |= set((pool.get("AuxiliaryAddresses") or {}).values())
        wanted = (config.get("IPAMConfig") or {}).get("IPv4Address") or ""
        ip_range = ipaddress.IPv4Network(pool["IPRange"]) if pool.get("IPRange") else None
        address = ipam.allocate(subnet, ip_range, pool["Gateway"], used, wanted)
        endpoint_id = secrets.token_hex(32)
        taken = {e.ifname for e in sandbox.endpoints}  # a disconnect can leave a gap
        ifname = next(f"eth{n}" for n in range(len(taken) + 1) if f"eth{n}" not in taken)
        aliases = list(config.get("Aliases") or [])
        names = [sandbox.name, *aliases, container.short_id] if network.user_defined else []
        return Endpoint(
            network_id=network.Id,
            endpoint_id=endpoint_id,
            host_if=f"veth{endpoint_id[:7]}",
            ifname=ifname,
            address=address,
            prefixlen=subnet.prefixlen,
            gateway=pool["Gateway"],
            mac=config.get("MacAddress") or ipam.mac_for(address),
            aliases=aliases,
            dns_names=list(dict.fromkeys(names)),
            links=[link for link in config.get("Links") or [] if network.user_defined],
        )

    async def _plumb(self, sandbox: Sandbox, endpoint: Endpoint) -> None:
        network = self.networks[endpoint.network_id]
        if network.bridge not in self._bridges_up:
            await self._ensure_bridge(network)
        try:
            await self._add_endpoint(sandbox, endpoint, network)
        except netlink.NoBridge:  # deleted behind our back: it comes back
            await self._ensure_bridge(network)
            await self._add_endpoint(sandbox, endpoint, network)

    async def _add_endpoint(self, sandbox: Sandbox, endpoint: Endpoint, network: Network) -> None:
        await trio.to_thread.run_sync(
            lambda: netlink.add_endpoint(
                netns=sandbox.netns,
                bridge=network.bridge,
                host_if=endpoint.host_if,
                ifname=endpoint.ifname,
                address=endpoint.address,
                prefixlen=endpoint.prefixlen,
                gateway=endpoint.gateway,
                mac=endpoint.mac,
                mtu=int(network.Options.get(MTU_OPTION) or self.mtu),
                # The first endpoint routes; an internal network never does.
                default_route=endpoint.ifname == "eth0" and not network.Internal,
                hairpin=not self.userland_proxy,  # DNAT back to the sender, as dockerd
            )
        )

    async def _bind_ports(self, container: Container, sandbox: Sandbox) -> list[Any]:
        bindings = wanted_ports(container.Config, container.HostConfig)
        if not bindings or not sandbox.endpoints:
            return []
        sockets: list[Any] = []
        made: list[PortBinding] = []
        try:
            for binding, last in bindings:
                sock = await trio.to_thread.run_sync(self._bind_first_free, binding, last)
                sockets.append(sock)
                made.append(
                    PortBinding(
                        binding.proto,
                        binding.container_port,
                        binding.host_ip or "0.0.0.0",
                        sock.getsockname()[1],
                    )
                )
        except OSError as exc:
            for sock in sockets:
                sock.close()
            endpoint = sandbox.endpoints[0]
            raise InternalError(
                f"driver failed programming external connectivity on endpoint {sandbox.name} "
                f"({endpoint.endpoint_id}): Error starting userland proxy: {exc.strerror}"
            ) from None
        sandbox.ports = made
        return sockets

    def _bind_first_free(self, binding: PortBinding, last: int) -> Any:
        """The first host port of a range (`-p 8000-8010:80`) that binds."""
        listen = self.userland_proxy  # else the socket only holds the port (DNAT serves it)
        for host_port in range(binding.host_port, max(last, binding.host_port) + 1):
            try:
                return proxy.bind(binding.proto, binding.host_ip, host_port, listen)
            except OSError:
                if host_port >= last:
                    raise
        raise AssertionError("unreachable")

    def _serve(self, sandbox: Sandbox, sockets: list[Any]) -> None:
        """Run the sandbox's proxies (and DNS server) in the actor's nursery until released.
        `sockets` are the bound ones; after a restart they are bound again here."""
        assert self._nursery is not None
        if not sandbox.endpoints or not sandbox.ports:
            return
        scope, closed = trio.CancelScope(), trio.Event()
        self._serving[sandbox.container_id] = (scope, closed)
        target_ip = sandbox.endpoints[0].address
        if not sockets:
            for binding in sandbox.ports:
                try:
                    sockets.append(
                        proxy.bind(
                            binding.proto, binding.host_ip, binding.host_port, self.userland_proxy
                        )
                    )
                except OSError as exc:
                    log.error("re-binding a published port of %s: %s", sandbox.name, exc)
                    sockets.append(None)

        async def serve() -> None:
            try:
                with scope:
                    if not self.userland_proxy:  # DNAT serves them: the sockets only hold ports
                        await trio.sleep_forever()
                    async with trio.open_nursery() as nursery:
                        for binding, sock in zip(sandbox.ports, sockets, strict=True):
                            if sock is None:
                                continue
                            forward = proxy.serve_tcp if binding.proto == "tcp" else proxy.serve_udp
                            nursery.start_soon(forward, sock, (target_ip, binding.container_port))
            finally:  # also when released before this task ever ran
                for sock in sockets:
                    if sock is not None:
                        sock.close()
                closed.set()

        self._nursery.start_soon(serve)

    async def _start_dns(self, sandbox: Sandbox) -> None:
        """The embedded DNS server, for containers on a user-defined network."""
        if sandbox.container_id in self._dns or not self._uses_dns(sandbox):
            return
        assert self._nursery is not None
        sockets = await trio.to_thread.run_sync(dns.open_sockets, sandbox.netns)
        scope = self._dns[sandbox.container_id] = trio.CancelScope()
        dns_servers = sandbox.dns or self.daemon_dns()[0]

        async def serve() -> None:
            try:
                with scope:
                    await dns.serve(
                        sockets, self._resolver(sandbox), lambda: etc.forward_servers(dns_servers)
                    )
            finally:  # the sockets hold the namespace alive: never leak them
                for sock in sockets:
                    sock.close()

        self._nursery.start_soon(serve)

    def _uses_dns(self, sandbox: Sandbox) -> bool:
        return any(
            self.networks[e.network_id].user_defined
            for e in sandbox.endpoints
            if e.network_id in self.networks
        )

    def _resolver(self, sandbox: Sandbox) -> Callable[[str], list[str]]:
        """Names a container can resolve: containers sharing one of its user networks."""

        def lookup(name: str) -> list[str]:
            name = name.rstrip(".").lower()
            for link in (link for e in sandbox.endpoints for link in e.links):
                target, _, alias = link.partition(":")  # a link's alias: this container only
                if name == (alias or target).lower():
                    name = target.lstrip("/").lower()
            mine = {
                e.network_id for e in sandbox.endpoints
                if e.network_id in self.networks and self.networks[e.network_id].user_defined
            }  # fmt: skip
            found = []
            for other in self.sandboxes.values():
                for endpoint in other.endpoints:
                    if endpoint.network_id in mine and name in (
                        n.lower() for n in endpoint.dns_names
                    ):
                        found.append(endpoint.address)
            return found

        return lookup

    def _settings(
        self, container: Container, settings: dict[str, Any], sandbox: Sandbox
    ) -> dict[str, Any]:
        settings = dict(settings)
        settings["SandboxID"] = sandbox.container_id
        settings["SandboxKey"] = sandbox.netns
        networks = dict(settings.get("Networks") or {})
        for endpoint in sandbox.endpoints:
            network = self.networks[endpoint.network_id]
            entry = dict(networks.get(network.Name) or _endpoint_settings(network, None))
            entry.update(
                NetworkID=network.Id,
                EndpointID=endpoint.endpoint_id,
                Gateway=endpoint.gateway,
                IPAddress=endpoint.address,
                IPPrefixLen=endpoint.prefixlen,
                MacAddress=endpoint.mac,
                DNSNames=endpoint.dns_names or None,
            )
            networks[network.Name] = entry
            if network.Name == "bridge":  # the deprecated top-level fields: default bridge only
                settings.update({k: entry[k] for k in TOP_LEVEL})
                settings["Bridge"] = network.bridge
        settings["Networks"] = networks
        ports: dict[str, Any] = {key: None for key in container.Config.get("ExposedPorts") or {}}
        for binding in sandbox.ports:
            key = f"{binding.container_port}/{binding.proto}"
            ports[key] = [
                *(ports.get(key) or []),
                {"HostIp": binding.host_ip, "HostPort": str(binding.host_port)},
            ]
        settings["Ports"] = ports
        return settings

    async def release(self, container: Container) -> dict[str, Any]:
        """At exit: undo the sandbox; returns NetworkSettings without addresses."""
        async with self._lock:
            sandbox = self.sandboxes.pop(container.Id, None)
            if sandbox is not None:
                with trio.CancelScope(shield=True):
                    await self._teardown(sandbox)
                self._publish_endpoints("disconnect", sandbox)
        settings: dict[str, Any] = {**container.NetworkSettings}
        for key in ("SandboxID", "SandboxKey", "Bridge", *TOP_LEVEL):
            settings[key] = 0 if key == "IPPrefixLen" else ""
        settings["Ports"] = {}
        settings["Networks"] = {
            name: _clear_endpoint(entry) for name, entry in (settings.get("Networks") or {}).items()
        }
        return settings

    async def _publish(self, sandbox: Sandbox) -> None:
        """--iptables: DNAT and ACCEPT rules for the sandbox's published ports."""
        if self.firewall is None or not sandbox.ports or not sandbox.endpoints:
            return
        endpoint = sandbox.endpoints[0]  # where the proxy forwards too
        network = self.networks.get(endpoint.network_id)
        if network is None or network.Internal:  # dockerd publishes nothing there either
            return
        rules = [
            rule
            for b in sandbox.ports
            for rule in self.firewall.port_rules(
                network.bridge, endpoint.address, b.proto, b.container_port, b.host_ip,
                b.host_port,
            )
        ]  # fmt: skip
        await trio.to_thread.run_sync(self.firewall.add, f"container:{sandbox.container_id}", rules)

    async def _teardown(self, sandbox: Sandbox) -> None:
        if self.firewall is not None:
            try:
                await trio.to_thread.run_sync(
                    self.firewall.remove, f"container:{sandbox.container_id}"
                )
            except OSError as exc:
                log.warning("removing the iptables rules of %s: %s", sandbox.name, exc)
        dns_scope = self._dns.pop(sandbox.container_id, None)
        if dns_scope is not None:
            dns_scope.cancel()
        serving = self._serving.pop(sandbox.container_id, None)
        if serving is not None:  # the host ports are free again before a restart binds them
            serving[0].cancel()
            with trio.move_on_after(2):
                await serving[1].wait()
        # Unmounting the namespace of a container whose processes are gone frees it, and
        # the kernel deletes its veth pairs (~20 ms later, off our path); a reaper then
        # deletes whatever is still there. Deleting each pair first would cost ~25 ms each.
        if sandbox.netns:
            try:
                await trio.to_thread.run_sync(netlink.delete_netns, sandbox.netns)
            except OSError as exc:
                log.warning("removing the namespace of %s: %s", sandbox.name, exc)
        host_ifs = [endpoint.host_if for endpoint in sandbox.endpoints]
        if host_ifs and self._nursery is not None:
            self._nursery.start_soon(self._reap, host_ifs)
        elif host_ifs:
            await self._reap(host_ifs, grace=0)
        path = self.root / "sandboxes" / f"{sandbox.container_id}.json"
        await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))

    async def _reap(self, host_ifs: list[str], grace: float = REAP_GRACE) -> None:
        try:
            await trio.sleep(grace)
        finally:  # at shutdown: at once
            with trio.CancelScope(shield=True):
                for name in host_ifs:
                    try:
                        await trio.to_thread.run_sync(netlink.delete_link, name)
                    except OSError as exc:
                        log.warning("removing %s: %s", name, exc)

    async def reconcile(self, running: set[str]) -> None:
        """Once, after the containers actor restored: sandboxes found on disk whose
        container no longer runs are undone (stale veths and namespaces)."""
        async with self._lock:
            for cid in list(self._restored):
                self._restored.discard(cid)
                if cid not in running and cid in self.sandboxes:
                    log.info("removing the stale network sandbox of %s", cid[:12])
                    await self._teardown(self.sandboxes.pop(cid))

    # -- containers: connect and disconnect ---------------------------------------------

    async def connect(
        self, container: Container, ref: str, config: dict[str, Any]
    ) -> dict[str, Any]:
        """`docker network connect`; returns the container's new NetworkSettings."""
        network = self.get(ref)
        settings: dict[str, Any] = {**empty_settings(), **container.NetworkSettings}
        mode = container.HostConfig.get("NetworkMode") or "default"
        if mode == "host" or mode.startswith("container:"):
            raise Forbidden(
                "container sharing network namespace with another container or host cannot "
                "be connected to any other network"
            )
        if mode == "none" or network.Name == "none":
            raise Forbidden(
                "container cannot be connected to multiple networks with one of the networks "
                "in private (none) mode"
            )
        if network.Name == "host":
            raise Forbidden(
                "container cannot be disconnected from host network or connected to host network"
            )
        if network.Name in settings["Networks"]:
            raise Forbidden(
                f"endpoint with name {container.Name.lstrip('/')} already exists in network "
                f"{network.Name}"
            )
        self._check_endpoint_config(network, config)
        settings["Networks"] = {
            **settings["Networks"],
            network.Name: _endpoint_settings(network, config),
        }
        async with self._lock:
            sandbox = self.sandboxes.get(container.Id)
            if sandbox is not None and container.State.Running:
                endpoint = self._new_endpoint(container, network, sandbox, config)
                sandbox.endpoints.append(endpoint)
                await trio.to_thread.run_sync(self._save_sandbox, sandbox)
                try:
                    await self._plumb(sandbox, endpoint)
                except BaseException:
                    sandbox.endpoints.remove(endpoint)
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(self._save_sandbox, sandbox)
                    raise
                await self._start_dns(sandbox)
                settings = self._settings(container, settings, sandbox)
        self.events.publish(
            "network", "connect", network.Id,
            {"container": container.Id, "name": network.Name, "type": "bridge"},
        )  # fmt: skip
        return settings

    async def disconnect(self, container: Container, ref: str, force: bool) -> dict[str, Any]:
        network = self.get(ref)
        settings: dict[str, Any] = {**empty_settings(), **container.NetworkSettings}
        if network.Name not in settings["Networks"]:
            if force:
                return settings
            raise Forbidden(f"container {container.Id} is not connected to network {network.Name}")
        if network.Name in ("host", "none"):
            raise Forbidden(
                "container cannot be disconnected from host network or connected to host network"
            )
        networks = dict(settings["Networks"])
        del networks[network.Name]
        settings["Networks"] = networks
        if network.Name == "bridge":  # the deprecated top-level fields mirror it
            settings.update({k: 0 if k == "IPPrefixLen" else "" for k in TOP_LEVEL})
        async with self._lock:
            sandbox = self.sandboxes.get(container.Id)
            if sandbox is not None:
                gone = [e for e in sandbox.endpoints if e.network_id == network.Id]
                sandbox.endpoints = [e for e in sandbox.endpoints if e.network_id != network.Id]
                await trio.to_thread.run_sync(self._save_sandbox, sandbox)
                for endpoint in gone:
                    await trio.to_thread.run_sync(
                        netlink.remove_endpoint, sandbox.netns, endpoint.host_if, endpoint.ifname
                    )
        self.events.publish(
            "network", "disconnect", network.Id,
            {"container": container.Id, "name": network.Name, "type": "bridge"},
        )  # fmt: skip
        return settings

    # -- files and stats -----------------------------------------------------------------

    def etc_files(self, container: Container) -> tuple[str, str]:
        """(/etc/hosts, /etc/resolv.conf) for the container as it is now."""
        mode = container.HostConfig.get("NetworkMode") or ""
        if mode == "host":
            return etc.host_files(container.HostConfig.get("ExtraHosts") or [])
        sandbox = self.sandboxes.get(container.Id)
        if mode.startswith("container:"):  # the other container's addresses and resolver
            ref = mode.split(":", 1)[1]
            sandbox = next(
                (s for s in self.sandboxes.values()
                 if ref in (s.name, s.container_id) or s.container_id.startswith(ref)),
                None,
            )  # fmt: skip
        endpoints = sandbox.endpoints if sandbox is not None else []
        addresses = [e.address for e in endpoints]
        links = []
        for link in container.HostConfig.get("Links") or []:
            target, _, alias = link.partition(":")
            target = target.lstrip("/")
            alias = alias.rsplit("/", 1)[-1] or target
            for other in self.sandboxes.values():
                if other.name == target or other.container_id.startswith(target):
                    bridge = [
                        e.address for e in other.endpoints
                        if self.networks.get(e.network_id, None) is not None
                        and self.networks[e.network_id].Name == "bridge"
                    ]  # fmt: skip
                    if bridge:
                        names = dict.fromkeys([alias, target, other.hostname])
                        links.append((bridge[0], list(names)))
        hosts = etc.hosts_file(
            container.Config.get("Hostname") or container.short_id,
            container.Config.get("Domainname") or "",
            addresses,
            container.HostConfig.get("ExtraHosts") or [],
            links,
        )
        embedded = sandbox is not None and self._uses_dns(sandbox)
        dns, search, options = self.daemon_dns()
        resolv = etc.resolv_conf(
            embedded=embedded,
            dns=container.HostConfig.get("Dns") or dns,
            search=container.HostConfig.get("DnsSearch") or search,
            options=container.HostConfig.get("DnsOptions") or options,
        )
        return hosts, resolv

    def rename(self, cid: str, old: str, new: str) -> None:
        """The embedded DNS answers to the new name from now on."""
        sandbox = self.sandboxes.get(cid)
        if sandbox is None:
            return
        sandbox.name = new
        for endpoint in sandbox.endpoints:
            endpoint.dns_names = [new if n == old else n for n in endpoint.dns_names]
        self._save_sandbox(sandbox)
