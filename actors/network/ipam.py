"""Address management: pool picking for new networks and addresses for endpoints."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from kernel.errors import Forbidden, InvalidParameter, Unavailable

# dockerd's default address pools: 172.17-31.0.0/16, then 192.168.0.0/16 cut into /20s.
DEFAULT_POOLS: tuple[ipaddress.IPv4Network, ...] = (
    *(ipaddress.IPv4Network(f"172.{n}.0.0/16") for n in range(17, 32)),
    *ipaddress.IPv4Network("192.168.0.0/16").subnets(new_prefix=20),
)


def first_free_pool(taken: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    used = list(taken)
    for pool in DEFAULT_POOLS:
        if not any(pool.overlaps(other) for other in used):
            return pool
    raise Unavailable(
        "could not find an available, non-overlapping IPv4 address pool among the defaults "
        "to assign to the network"
    )


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise InvalidParameter(f"invalid subnet {text}: invalid CIDR address") from None


def parse_address(text: str, what: str = "address") -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise InvalidParameter(f"invalid {what} {text}") from None


def check_overlap(subnet: ipaddress.IPv4Network, others: Iterable[ipaddress.IPv4Network]) -> None:
    if any(subnet.overlaps(other) for other in others):
        raise Forbidden("invalid pool request: Pool overlaps with other one on this address space")


def allocate(
    subnet: ipaddress.IPv4Network,
    ip_range: ipaddress.IPv4Network | None,
    gateway: str,
    used: set[str],
    wanted: str = "",
) -> str:
    """The wanted address (must be free and in the subnet) or the lowest free one."""
    if wanted:
        address = parse_address(wanted)
        if address not in subnet:
            raise InvalidParameter(
                "invalid endpoint settings:\n"
                f"no configured subnet or ip-range contain the IP address {wanted}"
            )
        if wanted in used or wanted == gateway:
            raise Forbidden(f"Address already in use: {wanted}")
        return wanted
    for host in (ip_range or subnet).hosts():
        text = str(host)
        if host in subnet and text != gateway and text not in used:
            return text
    raise Unavailable(f"no available IPv4 addresses on this network's address pools: {subnet}")


def mac_for(address: str) -> str:
    """dockerd's classic MAC: 02:42 and the four bytes of the IPv4 address."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address).packed)
