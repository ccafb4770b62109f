"""Cost of the trio -> asyncio bridge: containerd Version through our trio client
versus a native asyncio grpclib call on the same socket."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import trio
import trio_asyncio
from google.protobuf.empty_pb2 import Empty
from grpclib.client import Channel

from actors.containerd.client import DEFAULT_NAMESPACE, open_containerd_client
from actors.containerd.managed import open_managed_containerd
from actors.containerd.proto import version_grpc

CALLS = 1000
ROUNDS = 3


async def _native(socket_path: str, calls: int) -> float:
    """µs per Version call on a plain asyncio loop (channel built as _aio.py does)."""
    channel = Channel(path=socket_path)
    stub = version_grpc.VersionStub(channel)
    metadata = {"containerd-namespace": DEFAULT_NAMESPACE}
    try:
        for _ in range(50):
            await stub.Version(Empty(), metadata=metadata, timeout=120.0)
        best = float("inf")
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for _ in range(calls):
                await stub.Version(Empty(), metadata=metadata, timeout=120.0)
            best = min(best, (time.perf_counter() - start) / calls * 1e6)
        return best
    finally:
        channel.close()


async def _trio_main(root: Path, calls: int) -> dict[str, float]:
    async with (
        trio_asyncio.open_loop(),
        open_managed_containerd(root / "data", root / "exec") as managed,
    ):
        async with open_containerd_client(managed.socket_path) as client:
            for _ in range(50):
                await client.version()
            rounds = []
            for _ in range(ROUNDS):
                start = time.perf_counter()
                for _ in range(calls):
                    await client.version()
                rounds.append((time.perf_counter() - start) / calls * 1e6)
        bridged = min(rounds)
        # The native baseline on its own asyncio loop, in a worker thread, same containerd.
        native: float = await trio.to_thread.run_sync(
            lambda: asyncio.run(_native(managed.socket_path, calls))
        )
    return {
        "bridge_us": bridged,
        "native_us": native,
        "bridge_overhead_us": bridged - native,
        "bridge_median_round_us": statistics.median(rounds),
    }


def measure(calls: int = CALLS) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="bench-bridge-", dir="/tmp"))
    try:
        return trio.run(_trio_main, root, calls)
    finally:
        shutil.rmtree(root, ignore_errors=True)
