"""Kernel work for the network actor: namespaces, bridges, veth pairs, addresses, routes.

Every function here is synchronous and blocking: the actor runs them in worker threads
(`trio.to_thread.run_sync`). A thread that must work inside a container's namespace
setns()es into it and always returns to its own before the thread is given back.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from kernel.fsutil import is_mount_point

if TYPE_CHECKING:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

_libc = ctypes.CDLL(None, use_errno=True)


def _iproute() -> IPRoute:
    """pyroute2 (~6 MiB) loads on first use: a daemon with `-b none` may never need it."""
    from pyroute2 import IPRoute

    return IPRoute()


def _netlink_error() -> type[NetlinkError]:
    from pyroute2.netlink.exceptions import NetlinkError

    return NetlinkError  # type: ignore[no-any-return]  # (pyroute2 has no types)


class NoBridge(OSError):
    """The bridge an endpoint should join is gone."""


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


@contextmanager
def entered(netns: str) -> Iterator[None]:
    """Run the body with this thread inside the network namespace at `netns`."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(target, CLONE_NEWNET), f"setns {netns}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            _check(_libc.setns(own, CLONE_NEWNET), "setns back")
    finally:
        os.close(own)


def create_netns(path: str) -> None:
    """A new network namespace kept alive by a bind mount of its nsfs file at `path`
    (as libnetwork does), with `lo` up. Idempotent."""
    if os.path.exists(path) and is_mount_point(path):
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).touch(mode=0o444)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare")
        try:
            _check(
                _libc.mount(b"/proc/thread-self/ns/net", path.encode(), None, MS_BIND, None),
                f"mount {path}",
            )
            _loopback_up()
        finally:
            _check(_libc.setns(own, CLONE_NEWNET), "setns back")
    finally:
        os.close(own)


def _loopback_up() -> None:
    """`lo` up in this thread's namespace, by ioctl: a `--network none` start needs no
    netlink socket (nor pyroute2)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack_from("16xH", fcntl.ioctl(sock, SIOCGIFFLAGS, _ifreq(0)))[0]
        fcntl.ioctl(sock, SIOCSIFFLAGS, _ifreq(flags | IFF_UP))


def _ifreq(flags: int) -> bytes:
    """`struct ifreq` for `lo` with ifr_flags (40 bytes: name, then a 24-byte union)."""
    return struct.pack("16sH22x", b"lo", flags)


def delete_netns(path: str) -> None:
    if _libc.umount2(path.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (
        errno.EINVAL,
        errno.ENOENT,
    ):
        code = ctypes.get_errno()
        raise OSError(code, f"umount {path}: {os.strerror(code)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _index(ip: IPRoute, name: str) -> int | None:
    found = ip.link_lookup(ifname=name)
    return int(found[0]) if found else None


def ensure_bridge(name: str, gateway: str, prefixlen: int, mtu: int) -> None:
    """The bridge device up with the gateway address on it; created when missing.

    (With br_netfilter loaded and a FORWARD policy of DROP, traffic between two containers on
    it needs the ACCEPT rule `--iptables` adds: the bridge's own `nf_call_iptables` cannot
    exempt it, the kernel ORs that switch with the namespace's sysctl.)
    """
    with _iproute() as ip:
        index = _index(ip, name)
        if index is None:
            ip.link("add", ifname=name, kind="bridge")
            index = _index(ip, name)
            assert index is not None
        else:  # never put an address on somebody's non-bridge device
            (link,) = ip.get_links(index)
            if link.get(("linkinfo", "kind")) != "bridge":
                raise FileExistsError(errno.EEXIST, f"device {name} exists and is not a bridge")
        addresses = {a.get("address") for a in ip.get_addr(index=index, family=2)}
        if gateway and gateway not in addresses:
            ip.addr("add", index=index, address=gateway, prefixlen=prefixlen)
        ip.link("set", index=index, state="up", mtu=mtu)


def bridge_address(name: str) -> tuple[str, int] | None:
    """The first IPv4 address of an existing device (for `-b` without `--bip`)."""
    with _iproute() as ip:
        index = _index(ip, name)
        if index is None:
            return None
        for addr in ip.get_addr(index=index, family=2):
            return str(addr.get("address")), int(addr["prefixlen"])
    return None


def delete_link(name: str) -> None:
    with _iproute() as ip:
        try:
            ip.link("del", ifname=name)
        except _netlink_error() as exc:
            if exc.code != errno.ENODEV:
                raise


def routed_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks the host already routes or has addresses in (pool picking)."""
    nets: list[ipaddress.IPv4Network] = []
    with _iproute() as ip:
        for route in ip.get_routes(family=2, table=254):
            dst = route.get("dst")
            if dst:
                nets.append(ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False))
        for addr in ip.get_addr(family=2):
            nets.append(
                ipaddress.IPv4Network(f"{addr.get('address')}/{addr['prefixlen']}", strict=False)
            )
    return nets


def add_endpoint(
    *,
    netns: str,
    bridge: str,
    host_if: str,
    ifname: str,
    address: str,
    prefixlen: int,
    gateway: str,
    mac: str,
    mtu: int,
    default_route: bool,
    hairpin: bool = False,
) -> None:
    """A veth pair: `host_if` up on the bridge, its peer made directly inside the
    namespace as `ifname` (one netlink request: moving and renaming a device afterwards
    costs ~20 ms more). `hairpin`: frames may leave by the port they came in (a container
    reaching its own published port through iptables DNAT, without the userland proxy)."""
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _iproute() as ip:
            bridge_index = _index(ip, bridge)
            if bridge_index is None:
                raise NoBridge(errno.ENODEV, f"bridge {bridge} does not exist")
            ip.link(
                "add",
                ifname=host_if,
                kind="veth",
                master=bridge_index,
                mtu=mtu,
                state="up",
                peer={"ifname": ifname, "net_ns_fd": fd, "address": mac, "mtu": mtu},
            )
    finally:
        os.close(fd)
    try:
        if hairpin:
            with _iproute() as ip:
                ip.brport("set", index=_index(ip, host_if), mode=1)
        with entered(netns), _iproute() as ip:
            index = _index(ip, ifname)
            ip.addr("add", index=index, address=address, prefixlen=prefixlen)
            ip.link("set", index=index, state="up")
            if default_route and gateway:
                ip.route("add", dst="default", gateway=gateway)
    except BaseException:
        delete_link(host_if)
        raise


def remove_endpoint(netns: str, host_if: str, ifname: str) -> None:
    """Delete the pair from the host side (or, when the host side is gone, from inside)."""
    delete_link(host_if)
    if os.path.exists(netns) and is_mount_point(netns):
        with entered(netns), _iproute() as ip:
            try:
                ip.link("del", ifname=ifname)
            except _netlink_error() as exc:
                if exc.code != errno.ENODEV:
                    raise
