"""Networking cost: `docker run` on the default bridge against `--network none`, and the
userland proxy's throughput for a published TCP port (pydockerd only: the dockerd column
would need a bridge of its own beside a possible docker0)."""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import time
import urllib.request

from bench.engines import start_engine
from tests.daemon import free_subnet
from tests.fixtures.busybox import archive_bytes

IMAGE = "busybox:latest"
BIG_MB = 200


def measure() -> dict[str, float]:
    bridge = f"pyb{secrets.token_hex(4)}"
    extra = ("--bridge", bridge, "--bip", f"{free_subnet()[1]}/24")
    try:
        with start_engine("pydockerd", extra=extra) as (engine, _):
            env = {**os.environ, "DOCKER_HOST": f"unix://{engine.sock}"}

            def docker(*args: str) -> str:
                return subprocess.run(
                    ["docker", *args], env=env, capture_output=True, check=True, text=True
                ).stdout

            data, _ = archive_bytes()
            subprocess.run(["docker", "load"], env=env, input=data, capture_output=True, check=True)
            out: dict[str, float] = {}
            runs: dict[str, list[float]] = {"none": [], "bridge": []}
            for n in range(22):  # interleaved, so a noisy neighbour hits both alike
                for mode in ("none", "bridge"):
                    start = time.perf_counter()
                    docker("run", "--rm", "--network", mode, IMAGE, "true")
                    if n >= 2:  # the first two rounds warm up
                        runs[mode].append(time.perf_counter() - start)
            for mode, times in runs.items():
                out[f"run_{mode}_s"] = statistics.median(times)
            out["bridge_extra_ms"] = (out["run_bridge_s"] - out["run_none_s"]) * 1e3
            script = (f"mkdir /www && dd if=/dev/zero of=/www/big bs=1M count={BIG_MB} "
                      "2>/dev/null && exec httpd -f -p 80 -h /www")  # fmt: skip
            docker("run", "-d", "--name", "bench-web", "-p", "127.0.0.1:0:80", IMAGE,
                   "sh", "-c", script)  # fmt: skip
            try:
                port = docker("port", "bench-web", "80").strip()
                deadline = time.monotonic() + 30
                while True:
                    try:
                        start = time.perf_counter()
                        with urllib.request.urlopen(f"http://{port}/big", timeout=60) as reply:
                            size = 0
                            while chunk := reply.read(1 << 20):
                                size += len(chunk)
                        elapsed = time.perf_counter() - start
                        if size == BIG_MB << 20:
                            break
                    except OSError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError("the published port never served the file")
                    time.sleep(0.2)
                out["proxy_mbps"] = BIG_MB / elapsed
            finally:
                docker("rm", "-f", "bench-web")
            return out
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
