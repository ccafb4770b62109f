"""The network actor's records: networks (Engine API shape) and sandboxes (what to undo)."""

from __future__ import annotations

from typing import Any

import msgspec

BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
MTU_OPTION = "com.docker.network.driver.mtu"
ICC_OPTION = "com.docker.network.bridge.enable_icc"
MASQUERADE_OPTION = "com.docker.network.bridge.enable_ip_masquerade"
PREDEFINED = ("bridge", "host", "none")


class Network(msgspec.Struct, kw_only=True):
    """A network as `docker network inspect` shows it (minus Containers, derived)."""

    Name: str
    Id: str
    Created: str
    Scope: str = "local"
    Driver: str = "bridge"
    EnableIPv4: bool = True
    EnableIPv6: bool = False
    IPAM: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"Driver": "default", "Options": None, "Config": []}
    )
    Internal: bool = False
    Attachable: bool = False
    Ingress: bool = False
    ConfigFrom: dict[str, str] = msgspec.field(default_factory=lambda: {"Network": ""})
    ConfigOnly: bool = False
    Options: dict[str, str] = msgspec.field(default_factory=dict)
    Labels: dict[str, str] = msgspec.field(default_factory=dict)
    # Ours, not shown: whether the user chose the subnet (only then may endpoints pick --ip).
    configured_subnet: bool = False

    def view(self) -> dict[str, Any]:
        """The Engine API object (without Containers)."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        data.pop("configured_subnet")
        return data

    @property
    def bridge(self) -> str:
        """The bridge device (bridge driver only)."""
        return self.Options.get(BRIDGE_NAME_OPTION) or f"br-{self.Id[:12]}"

    @property
    def pool(self) -> dict[str, Any]:
        configs = self.IPAM.get("Config") or [{}]
        return dict(configs[0])

    @property
    def user_defined(self) -> bool:
        return self.Name not in PREDEFINED


class Endpoint(msgspec.Struct, kw_only=True):
    """One veth pair of a sandbox on one network."""

    network_id: str
    endpoint_id: str
    host_if: str
    ifname: str
    address: str
    prefixlen: int
    gateway: str
    mac: str
    aliases: list[str] = []
    dns_names: list[str] = []
    links: list[str] = []  # "name:alias" of a user network: names only this container resolves


class PortBinding(msgspec.Struct, frozen=True):
    proto: str
    container_port: int
    host_ip: str
    host_port: int


class Sandbox(msgspec.Struct, kw_only=True):
    """A container's network namespace and everything made for it.

    Written before the kernel objects are made, so a crash half way still says what to undo.
    """

    container_id: str
    name: str
    hostname: str
    netns: str = ""  # our own bind-mounted namespace ("" for host mode and container:)
    endpoints: list[Endpoint] = []
    ports: list[PortBinding] = []
    dns: list[str] = []  # --dns: where the embedded server forwards (else the host's)


def empty_settings() -> dict[str, Any]:
    """NetworkSettings of a container without a sandbox (created, stopped, `none`)."""
    return {
        "Bridge": "",
        "SandboxID": "",
        "SandboxKey": "",
        "Ports": {},
        "HairpinMode": False,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "SecondaryIPAddresses": None,
        "SecondaryIPv6Addresses": None,
        "EndpointID": "",
        "Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPAddress": "",
        "IPPrefixLen": 0,
        "IPv6Gateway": "",
        "MacAddress": "",
        "Networks": {},
    }
