"""Start-up to first /_ping, and /_ping throughput with 8 keep-alive unix clients."""

from __future__ import annotations

import selectors
import socket
import time

from bench.engines import Engine

REQUEST = b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"


def ping_throughput(
    engine: Engine, *, clients: int = 8, seconds: float = 5.0
) -> tuple[float, float]:
    """(requests per second, engine CPU microseconds per request); one request in flight each."""
    selector = selectors.DefaultSelector()
    socks = []
    for _ in range(clients):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(engine.sock)
        sock.setblocking(False)
        socks.append(sock)
        selector.register(sock, selectors.EVENT_READ, bytearray())
    done = 0
    cpu_before = engine.cpu_seconds()
    start = time.perf_counter()
    for sock in socks:
        sock.send(REQUEST)
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for key, _ in selector.select(timeout=1):
            buffer: bytearray = key.data
            sock = key.fileobj  # type: ignore[assignment]
            buffer += sock.recv(65536)
            # Each response is complete once its 2-byte body follows the header block.
            while (end := buffer.find(b"\r\n\r\n")) != -1 and len(buffer) >= end + 6:
                del buffer[: end + 6]
                done += 1
                sock.send(REQUEST)
    elapsed = time.perf_counter() - start
    cpu = engine.cpu_seconds() - cpu_before
    for sock in socks:
        sock.close()
    return done / elapsed, cpu / max(done, 1) * 1e6
