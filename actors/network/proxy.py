"""The userland proxy: host ip:port → container ip:port, TCP and UDP, in trio."""

from __future__ import annotations

import errno
import socket

import trio

UDP_IDLE = 90.0  # a UDP "connection" is forgotten after this long without traffic


def bind(proto: str, host_ip: str, host_port: int, listen: bool = True) -> socket.socket:
    """The listening socket, bound now so a taken port fails the container's start
    (not listening when iptables DNAT serves the port: it only holds the port)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if proto == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host_ip or "0.0.0.0", host_port))
        if proto == "tcp" and listen:
            sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise OSError(
            exc.errno,
            f"listen {proto}4 {host_ip or '0.0.0.0'}:{host_port}: bind: {reason}",
        ) from None
    return sock


async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def serve_tcp(sock: socket.socket, target: tuple[str, int]) -> None:
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    async def handle(client: trio.SocketStream) -> None:
        try:
            async with client:
                upstream = await trio.open_tcp_stream(*target)
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, upstream)
                    nursery.start_soon(_pump, upstream, client)
        except OSError:
            pass  # the container refused or went away: the client sees the close

    async with listener:
        await trio.serve_listeners(handle, [listener])


async def serve_udp(sock: socket.socket, target: tuple[str, int]) -> None:
    front = trio.socket.from_stdlib_socket(sock)
    peers: dict[tuple[str, int], trio.socket.SocketType] = {}

    async def replies(upstream: trio.socket.SocketType, client: tuple[str, int]) -> None:
        try:
            while True:
                with trio.move_on_after(UDP_IDLE) as idle:
                    data = await upstream.recv(65535)
                if idle.cancelled_caught:
                    return
                await front.sendto(data, client)
        except OSError:
            pass
        finally:
            peers.pop(client, None)
            upstream.close()

    with front:
        async with trio.open_nursery() as nursery:
            while True:
                data, client = await front.recvfrom(65535)
                upstream = peers.get(client)
                if upstream is None:
                    upstream = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    await upstream.connect(target)
                    peers[client] = upstream
                    nursery.start_soon(replies, upstream, client)
                try:
                    await upstream.send(data)
                except OSError:
                    pass
