"""Restore: cold start with stopped containers on disk, and live-restored running ones."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import urllib.parse
from pathlib import Path

from bench.containers import EngineConnection, api, create_many, remove_all
from bench.engines import Engine, start_engine
from tests.daemon import remove_root
from tests.fixtures.busybox import archive_bytes

STOPPED_COUNTS = tuple(int(n) for n in os.environ.get("BENCH_STOPPED", "0,200,1000").split(","))
RUNNING_COUNTS = tuple(int(n) for n in os.environ.get("BENCH_RUNNING", "20,200").split(","))


def _count(engine: Engine, running_only: bool) -> int:
    query = "all=1"
    if running_only:
        query += "&filters=" + urllib.parse.quote(json.dumps({"status": ["running"]}))
    conn = EngineConnection(engine.sock)
    try:
        return len(json.loads(conn.get(f"/containers/json?{query}")))
    except (OSError, RuntimeError):
        return -1  # the containers router is not there yet
    finally:
        conn.close()


def _until_listed(engine: Engine, count: int, *, running_only: bool, timeout: float = 300) -> float:
    """Seconds from the engine's spawn until the listing shows `count` containers."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if _count(engine, running_only) >= count:
            return time.perf_counter() - engine.started_at
        time.sleep(0.005)
    raise RuntimeError(f"{engine.name}: {count} containers never showed")


def _prepared_root(name: str, count: int, *, running: bool, extra: tuple[str, ...]) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"bench-restore-{name}-", dir="/tmp"))
    with start_engine(name, root, extra=extra, keep_root=True) as (engine, _):
        client = api(engine)
        client.load_image(archive_bytes()[0])
        client.close()
        if count:
            cmd = ["sleep", "100000"] if running else ["true"]
            create_many(engine, count, cmd, start=running)
    return root


def measure(name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for count in STOPPED_COUNTS:
        root = _prepared_root(name, count, running=False, extra=())
        try:
            pings, full = [], []
            for _ in range(3):
                with start_engine(name, root, keep_root=True) as (engine, first_ping):
                    pings.append(first_ping)
                    full.append(_until_listed(engine, count, running_only=False))
            out[f"ping_{count}_s"] = statistics.median(pings)
            out[f"restored_{count}_s"] = statistics.median(full)
        finally:
            remove_root(root)
    live = ("--live-restore",)
    for count in RUNNING_COUNTS:
        root = _prepared_root(name, count, running=True, extra=live)
        try:
            with start_engine(name, root, extra=live, keep_root=True) as (engine, _):
                out[f"live_{count}_s"] = _until_listed(engine, count, running_only=True)
                remove_all(engine)
        finally:
            remove_root(root)
    return out
