"""Listeners for every `-H` host: unix sockets, TCP (optionally TLS) and systemd's fd://."""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

import trio

from kernel.errors import StartupError

log = logging.getLogger("pydockerd.api")

SD_LISTEN_FDS_START = 3


class ListenerError(StartupError):
    pass


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    ca: str | None  # set: clients must present a certificate signed by it


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """Server context as dockerd's: TLS 1.2+, client certificates verified when a CA is given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
        if files.ca:
            context.load_verify_locations(cafile=files.ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ListenerError(f"could not load TLS certificates: {exc}") from None
    return context


async def open_listeners(
    host: str, *, group: str, tls: ssl.SSLContext | None
) -> list[trio.abc.Listener[trio.abc.Stream]]:
    proto, _, address = host.partition("://")
    if proto == "unix":
        return [await _open_unix(address, group)]
    if proto == "tcp":
        return _open_tcp(address, tls)
    if proto == "fd":
        return _open_fds(address)
    raise ListenerError(f"invalid protocol for {host}: {proto}")


async def _open_unix(path: str, group: str) -> trio.abc.Listener[trio.abc.Stream]:
    sock_path = Path(path)
    sock_path.parent.mkdir(parents=True, exist_ok=True)
    if sock_path.exists() or sock_path.is_symlink():
        if not stat.S_ISSOCK(sock_path.lstat().st_mode):
            raise ListenerError(f"cannot listen on unix://{path}: not a socket")
        if await _answers(path):
            raise ListenerError(f"cannot listen on unix://{path}: another daemon is serving on it")
        sock_path.unlink()  # stale: left by a daemon that died
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        os.chmod(path, 0o660)
        gid = _group_id(group)
        if gid is not None:
            os.chown(path, 0, gid)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def _answers(path: str) -> bool:
    """True when something accepts connections on the unix socket `path`."""
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with trio.move_on_after(1.0):
            await probe.connect(path)
            return True
        return True  # a daemon too busy to accept within a second is still alive
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise ListenerError(f"cannot listen on unix://{path}: {exc}") from None
    finally:
        probe.close()


def _group_id(group: str) -> int | None:
    if not group:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group != "docker":  # dockerd tolerates only its default group missing
            raise ListenerError(f"group {group} not found") from None
        log.warning("could not change group of the socket to docker: group docker not found")
        return None


def _open_tcp(address: str, tls: ssl.SSLContext | None) -> list[trio.abc.Listener[trio.abc.Stream]]:
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise ListenerError(f"invalid address tcp://{address}") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"cannot listen on tcp://{address}: {exc}") from None
    if tls is None:
        log.warning(
            "Binding to IP address without --tlsverify is insecure and gives root access "
            "on this machine to everyone who has access to your network. host=tcp://%s",
            address,
        )
    listener: trio.abc.Listener[trio.abc.Stream] = trio.SocketListener(
        trio.socket.from_stdlib_socket(sock)
    )
    if tls is not None:
        listener = trio.SSLListener(listener, tls, https_compatible=False)
    return [listener]


def _open_fds(address: str) -> list[trio.abc.Listener[trio.abc.Stream]]:
    """Sockets systemd passed us (LISTEN_PID/LISTEN_FDS); `fd://N` picks one."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        raise ListenerError(
            "no sockets found via socket activation: make sure the service was started by systemd"
        )
    count = int(os.environ.get("LISTEN_FDS", "0"))
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
    if address:
        wanted = int(address)
        if wanted not in fds:
            raise ListenerError("too few socket activated files passed in by systemd")
        fds = [wanted]
    if not fds:
        raise ListenerError(
            "no sockets found via socket activation: make sure the service was started by systemd"
        )
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
    for fd in fds:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
    return listeners
