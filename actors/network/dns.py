"""The embedded DNS server of user-defined networks, at 127.0.0.11:53 inside each
container's network namespace (no iptables needed).

The sockets are created by a thread that has entered the namespace; a socket stays in the
namespace it was made in, so the daemon then serves it from trio like any other. Names of
containers on the container's networks are answered here; the rest is forwarded to the
host's (or --dns) servers from the host's namespace, with a quick SERVFAIL on failure.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import trio

from actors.network import netlink
from actors.network.etc import EMBEDDED_DNS

FORWARD_TIMEOUT = 2.0
TTL = 600
TYPE_A = 1
TYPE_AAAA = 28

Lookup = Callable[[str], list[str]]


def open_sockets(netns: str) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets bound at 127.0.0.11:53 inside the namespace (blocking: a
    thread). Bound before the container starts, so its first query finds them."""
    with netlink.entered(netns):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.bind((EMBEDDED_DNS, 53))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((EMBEDDED_DNS, 53))
        tcp.listen(64)
    except OSError:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


def parse_question(query: bytes) -> tuple[str, int, int] | None:
    """(name, qtype, offset after the question) of a standard query, or None."""
    if len(query) < 12:
        return None
    _, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    labels = []
    at = 12
    while at < len(query):
        length = query[at]
        if length == 0:
            at += 1
            break
        if length & 0xC0:
            return None
        labels.append(query[at + 1 : at + 1 + length].decode("ascii", "replace"))
        at += 1 + length
    if at + 4 > len(query):
        return None
    qtype = struct.unpack("!H", query[at : at + 2])[0]
    return ".".join(labels), qtype, at + 4


def answer(query: bytes, end: int, addresses: list[str], rcode: int = 0) -> bytes:
    """A response that repeats the question and answers with A records."""
    qid, flags = struct.unpack("!HH", query[:4])
    flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode  # QR AA RD RA
    header = struct.pack("!HHHHHH", qid, flags, 1, len(addresses), 0, 0)
    records = b"".join(
        struct.pack("!HHHIH", 0xC00C, TYPE_A, 1, TTL, 4) + socket.inet_aton(a) for a in addresses
    )
    return header + query[12:end] + records


def servfail(query: bytes) -> bytes:
    parsed = parse_question(query)
    end = parsed[2] if parsed else 12
    qid, flags = struct.unpack("!HH", query[:4]) if len(query) >= 4 else (0, 0)
    return struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x0100) | 0x0080 | 2,
                       1 if parsed else 0, 0, 0, 0) + query[12:end]  # fmt: skip


async def _forward(query: bytes, servers: list[str]) -> bytes:
    for server in servers:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            with trio.move_on_after(FORWARD_TIMEOUT / max(len(servers), 1)):
                try:
                    await sock.connect((server, 53))
                    await sock.send(query)
                    return await sock.recv(65535)
                except OSError:
                    continue
    return servfail(query)


async def resolve(query: bytes, lookup: Lookup, servers: Callable[[], list[str]]) -> bytes | None:
    parsed = parse_question(query)
    if parsed is None:
        return None
    name, qtype, end = parsed
    found = lookup(name) if name and "." not in name.rstrip(".") else []
    if found:
        return answer(query, end, found if qtype == TYPE_A else [])
    return await _forward(query, servers())


async def serve(
    sockets: tuple[socket.socket, socket.socket],
    lookup: Lookup,
    servers: Callable[[], list[str]],
) -> None:
    udp_raw, tcp_raw = sockets
    udp = trio.socket.from_stdlib_socket(udp_raw)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(tcp_raw))

    async def reply_udp(query: bytes, client: tuple[str, int]) -> None:
        response = await resolve(query, lookup, servers)
        if response is not None:
            try:
                await udp.sendto(response, client)
            except OSError:
                pass

    async def handle_tcp(stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            async with stream:
                with trio.move_on_after(10):
                    while True:
                        while (
                            len(buffer) < 2 or len(buffer) < 2 + struct.unpack("!H", buffer[:2])[0]
                        ):
                            chunk = await stream.receive_some(65535)
                            if not chunk:
                                return
                            buffer += chunk
                        size = struct.unpack("!H", buffer[:2])[0]
                        query, buffer = buffer[2 : 2 + size], buffer[2 + size :]
                        response = await resolve(query, lookup, servers)
                        if response is None:
                            return
                        await stream.send_all(struct.pack("!H", len(response)) + response)
        except (OSError, trio.BrokenResourceError):
            pass

    with udp:
        async with listener, trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handle_tcp, [listener])
            while True:
                try:
                    query, client = await udp.recvfrom(65535)
                except OSError:
                    continue
                nursery.start_soon(reply_udp, query, client)
