"""Container lifecycle latency, list/inspect speed, memory, and a containerd floor."""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

from bench.engines import Engine
from kernel.unixhttp import UnixHTTPConnection
from tests.fixtures.busybox import archive_bytes

IMAGE = "busybox:latest"
NAN = float("nan")


class EngineConnection(UnixHTTPConnection):
    """A keep-alive HTTP/1.1 connection over the engine's unix socket."""

    def get(self, url: str) -> bytes:
        self.request("GET", url)
        response = self.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status} {body[:200]!r}")
        return body


def api(engine: Engine) -> docker.APIClient:
    return docker.APIClient(base_url=f"unix://{engine.sock}", version="1.41", timeout=120)


def cli(engine: Engine, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DOCKER_HOST": f"unix://{engine.sock}"}
    result = subprocess.run(["docker", *args], env=env, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.decode(errors='replace')}")
    return result


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return NAN


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def lifecycle(client: docker.APIClient, cmd: list[str] | None = None) -> None:
    """create + start + wait + delete of one `true` container over the API."""
    host_config = client.create_host_config(network_mode="none")
    cid = client.create_container(IMAGE, cmd or ["true"], host_config=host_config)["Id"]
    client.start(cid)
    client.wait(cid)
    client.remove_container(cid)


def create_many(engine: Engine, count: int, cmd: list[str], *, start: bool) -> list[str]:
    local = threading.local()

    def one(_: int) -> str:
        if not hasattr(local, "client"):
            local.client = api(engine)
        client: docker.APIClient = local.client
        host_config = client.create_host_config(network_mode="none")
        cid: str = client.create_container(IMAGE, cmd, host_config=host_config)["Id"]
        if start:
            client.start(cid)
        return cid

    with ThreadPoolExecutor(10) as pool:
        return list(pool.map(one, range(count)))


def remove_all(engine: Engine) -> None:
    client = api(engine)
    ids = [c["Id"] for c in client.containers(all=True)]
    local = threading.local()

    def one(cid: str) -> None:
        if not hasattr(local, "client"):
            local.client = api(engine)
        local.client.remove_container(cid, force=True)

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(one, ids))
    client.close()


def list_rate(
    engine: Engine, url: str, *, threads: int = 8, seconds: float = 3.0
) -> tuple[float, float]:
    """(requests/s, engine CPU ms per request) of GET url with `threads` keep-alive clients."""
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> None:
        conn = EngineConnection(engine.sock)
        while time.perf_counter() < deadline:
            conn.get(url)
            counts[index] += 1
        conn.close()

    cpu_before = engine.cpu_seconds()
    start = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    elapsed = time.perf_counter() - start
    cpu = engine.cpu_seconds() - cpu_before
    done = sum(counts)
    return done / elapsed, cpu / max(done, 1) * 1e3


def busybox_rootfs(directory: Path) -> Path:
    """The busybox fixture's one layer, extracted to directory/rootfs."""
    data, _ = archive_bytes()
    rootfs = directory / "rootfs"
    rootfs.mkdir()
    with tarfile.open(fileobj=io.BytesIO(data)) as outer:
        member = next(m for m in outer.getmembers() if m.name.endswith("/layer.tar"))
        layer = outer.extractfile(member)
        assert layer is not None
        with tarfile.open(fileobj=layer) as inner:
            inner.extractall(rootfs, filter="tar")
    return rootfs


def ctr_floor(engine: Engine, runs: int = 10) -> float:
    """Median seconds of `ctr run --rm --rootfs DIR ... true` on pydockerd's own containerd."""
    sock = str(engine.root / "exec" / "containerd" / "containerd.sock")
    ctr = shutil.which("ctr") or "/usr/bin/ctr"
    namespace = "bench-floor"
    directory = Path(tempfile.mkdtemp(prefix="bench-floor-", dir="/tmp"))
    try:
        rootfs = busybox_rootfs(directory)
        times = []
        for n in range(runs):
            argv = [ctr, "-a", sock, "-n", namespace, "run", "--rm", "--env", "PATH=/bin:/usr/bin",
                    "--rootfs", str(rootfs), f"floor-{n}", "true"]  # fmt: skip
            start = time.perf_counter()
            result = subprocess.run(argv, capture_output=True, timeout=60, check=False)
            elapsed = time.perf_counter() - start
            if result.returncode != 0:
                print(f"ctr floor failed: {result.stderr.decode(errors='replace').strip()}")
                return NAN
            times.append(elapsed)
        subprocess.run([ctr, "-a", sock, "namespaces", "remove", namespace],
                       capture_output=True, check=False)  # fmt: skip
        return statistics.median(times)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"ctr floor failed: {exc}")
        return NAN
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def ctr_exec_floor(engine: Engine, cid: str, runs: int = 10) -> float:
    """Median seconds of `ctr task exec ... true` into the same running container."""
    sock = str(engine.root / "exec" / "containerd" / "containerd.sock")
    ctr = shutil.which("ctr") or "/usr/bin/ctr"
    times = []
    for n in range(runs):
        argv = [ctr, "-a", sock, "-n", "pydockerd", "task", "exec", "--exec-id", f"floor{n}",
                cid, "true"]  # fmt: skip
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, timeout=60, check=False)
        if result.returncode != 0:
            print(f"ctr exec floor failed: {result.stderr.decode(errors='replace').strip()}")
            return NAN
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(engine: Engine) -> dict[str, float]:
    data, _ = archive_bytes()
    client = api(engine)
    client.load_image(data)
    out: dict[str, float] = {}
    try:
        time.sleep(1)
        out["rss_idle_mb"] = rss_mb(engine.proc.pid)

        # (a) the CLI's `docker run --rm`, wall clock
        cli(engine, "run", "--rm", "--network", "none", IMAGE, "true")  # warm up
        out["run_s"] = statistics.median(
            timed(lambda: cli(engine, "run", "--rm", "--network", "none", IMAGE, "true"))
            for _ in range(10)
        )
        # (b) the same lifecycle over raw HTTP
        lifecycle(client)
        out["lifecycle_s"] = statistics.median(timed(lambda: lifecycle(client)) for _ in range(10))

        # (c) 50 lifecycles, 10 at a time
        local = threading.local()

        def one(_: int) -> None:
            if not hasattr(local, "client"):
                local.client = api(engine)
            lifecycle(local.client)

        start = time.perf_counter()
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(one, range(50)))
        out["parallel50_s"] = time.perf_counter() - start

        # (d) list with 200 created containers; (e) inspect
        ids = create_many(engine, 200, ["true"], start=False)
        conn = EngineConnection(engine.sock)
        listed = json.loads(conn.get("/containers/json?all=1"))
        if len(listed) != 200:
            raise RuntimeError(f"listed {len(listed)} containers, expected 200")
        out["list_ms"] = (
            statistics.median(timed(lambda: conn.get("/containers/json?all=1")) for _ in range(50))
            * 1e3
        )
        out["list_rps"], out["list_cpu_ms"] = list_rate(engine, "/containers/json?all=1")
        inspect_url = f"/containers/{ids[0]}/json"
        conn.get(inspect_url)
        out["inspect_ms"] = (
            statistics.median(timed(lambda: conn.get(inspect_url)) for _ in range(50)) * 1e3
        )
        conn.close()
        remove_all(engine)

        # (f) docker exec latency, and the stats endpoint with stream=0
        no_network = client.create_host_config(network_mode="none")
        cid = client.create_container(IMAGE, ["sleep", "1000"], host_config=no_network)["Id"]
        client.start(cid)
        cli(engine, "exec", cid, "true")  # warm up
        out["exec_s"] = statistics.median(
            timed(lambda: cli(engine, "exec", cid, "true")) for _ in range(10)
        )
        conn = EngineConnection(engine.sock)
        stats_url = f"/containers/{cid}/stats?stream=0"
        conn.get(stats_url)
        out["stats_s"] = statistics.median(timed(lambda: conn.get(stats_url)) for _ in range(5))
        conn.close()
        if engine.name == "pydockerd":
            out["ctr_exec_floor_s"] = ctr_exec_floor(engine, cid)
        create_many(engine, 9, ["sleep", "1000"], start=True)
        cli(engine, "stats", "--no-stream")  # warm up
        out["stats_ten_s"] = statistics.median(
            timed(lambda: cli(engine, "stats", "--no-stream")) for _ in range(3)
        )
        remove_all(engine)

        # (g) memory with 50 running containers
        create_many(engine, 50, ["sleep", "1000"], start=True)
        time.sleep(1)
        out["rss_50_mb"] = rss_mb(engine.proc.pid)
        remove_all(engine)
    finally:
        try:
            remove_all(engine)
        finally:
            client.close()
    if engine.name == "pydockerd":
        out["ctr_floor_s"] = ctr_floor(engine)
    return out
