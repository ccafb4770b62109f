"""`make bench`: every figure next to dockerd's, measured in the same run when installed.

python -m bench [ping] [images] [containers] [bridge] [network]   (default: all groups)
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench import bridge, containers, images, network, restore
from bench.engines import dockerd_available, start_engine
from bench.ping import ping_throughput

RUNS = 5
NAN = float("nan")

Row = tuple[str, str, str]  # label, result key, goal


def measure_ping(name: str) -> dict[str, float]:
    starts = []
    for _ in range(RUNS):
        with start_engine(name) as (_engine, first_ping):
            starts.append(first_ping)
    with start_engine(name) as (engine, _):
        ping_throughput(engine, seconds=1.0)  # warm up
        rate, cpu_us = ping_throughput(engine)
    return {"start_s": statistics.median(starts), "ping_rps": rate, "ping_cpu_us": cpu_us}


_archive: list[Path] = []


def big_archive() -> Path:
    """The ~100 MB image archive, written once per run (removed by main)."""
    if not _archive:
        directory = Path(tempfile.mkdtemp(prefix="bench-images-", dir="/tmp"))
        _archive.append(images.build_archive(directory))
    return _archive[0]


def measure_images(name: str) -> dict[str, float]:
    with start_engine(name) as (engine, _):
        return images.measure(engine, big_archive())


def measure_containers(name: str) -> dict[str, float]:
    with start_engine(name) as (engine, _):
        return containers.measure(engine)


def add_run_shares(results: dict[str, dict[str, float]]) -> None:
    """What each engine adds to `docker run` over containerd's floor (measured once, on
    pydockerd's containerd: both engines run the same containerd and runc)."""
    floor = results["pydockerd"].get("ctr_floor_s", NAN)
    for out in results.values():
        if "run_s" in out:
            out["run_share_s"] = out["run_s"] - floor


def restore_rows() -> list[Row]:
    """The issue's goals: first /_ping under 0.25 s at every count; at 1,000 stopped
    containers both the first /_ping and the full restore ahead of dockerd."""
    rows: list[Row] = []
    for count in restore.STOPPED_COUNTS:
        ahead = ", ahead of dockerd" if count >= 1000 else ""
        rows.append((f"first /_ping, {count} stopped on disk (s)", f"ping_{count}_s",
                     f"goal < 0.25 s{ahead}"))  # fmt: skip
        rows.append((f"  all {count} listed (s)", f"restored_{count}_s",
                     "goal: ahead of dockerd" if count >= 1000 else ""))  # fmt: skip
    for count in restore.RUNNING_COUNTS:
        rows.append((f"{count} live-restored all running (s)", f"live_{count}_s", ""))
    return rows


def measure_bridge(name: str) -> dict[str, float]:
    return bridge.measure() if name == "pydockerd" else {}


def measure_network(name: str) -> dict[str, float]:
    return network.measure() if name == "pydockerd" else {}


GROUPS: dict[str, tuple[Callable[[str], dict[str, float]], list[Row]]] = {
    "ping": (
        measure_ping,
        [
            ("start to first /_ping (s, median of 5)", "start_s", "goal < 0.25 s"),
            ("/_ping req/s, 8 keep-alive unix clients", "ping_rps", "goal >= 10k"),
            ("daemon CPU per /_ping (us)", "ping_cpu_us", ""),
        ],
    ),
    "images": (
        measure_images,
        [
            ("docker load -i, 100 MB random (MB/s)", "load_mbps", "goal >= dockerd"),
            ("docker save -o, 100 MB random (MB/s)", "save_mbps", "goal >= dockerd"),
        ],
    ),
    "containers": (
        measure_containers,
        [
            ("docker run --rm true (s, median of 10)", "run_s", "goal < 0.09 s"),
            ("  containerd floor: ctr run --rm (s)", "ctr_floor_s", "floor for the row above"),
            ("  the engine's own share: run - floor (s)", "run_share_s", "goal < dockerd's / 2"),
            ("API create+start+wait+rm (s, median 10)", "lifecycle_s", "goal <= dockerd"),
            ("50 lifecycles, 10 threads (s total)", "parallel50_s", "goal <= dockerd"),
            ("GET /containers/json, 200 (ms, median)", "list_ms", "goal <= dockerd"),
            ("GET /containers/json, 200, 8 thr (req/s)", "list_rps", "goal >= dockerd"),
            ("daemon CPU per list request (ms)", "list_cpu_ms", "goal <= dockerd"),
            ("GET /containers/{id}/json (ms, median)", "inspect_ms", "goal <= dockerd"),
            ("docker exec c true (s, median of 10)", "exec_s", "goal <= dockerd"),
            (
                "  containerd floor: ctr task exec (s)",
                "ctr_exec_floor_s",
                "floor for the row above",
            ),
            ("GET /containers/{id}/stats?stream=0 (s)", "stats_s", "goal < dockerd (1-2 s)"),
            ("docker stats --no-stream, 10 running (s)", "stats_ten_s", "goal < 1 s"),
            ("idle RSS, 0 containers (MB)", "rss_idle_mb", "goal <= dockerd"),
            ("RSS, 50 running containers (MB)", "rss_50_mb", "goal <= dockerd"),
        ],
    ),
    "restore": (restore.measure, restore_rows()),
    "bridge": (
        measure_bridge,
        [
            ("containerd Version via trio bridge (us)", "bridge_us", ""),
            ("containerd Version, native asyncio (us)", "native_us", ""),
            ("bridge overhead per call (us)", "bridge_overhead_us", "goal <= 60 us"),
        ],
    ),
    "network": (
        measure_network,
        [
            ("docker run --rm --network none (s, med 20)", "run_none_s", ""),
            ("docker run --rm, default bridge (s, med 20)", "run_bridge_s", ""),
            ("bridge setup added to a run (ms)", "bridge_extra_ms", "goal < 30 (dockerd ~70)"),
            ("published TCP port, 200 MB via proxy (MB/s)", "proxy_mbps", ""),
        ],
    ),
}


def main(argv: list[str]) -> int:
    chosen = argv or list(GROUPS)
    unknown = [g for g in chosen if g not in GROUPS]
    if unknown:
        print(f"unknown group(s): {' '.join(unknown)}; choose from {' '.join(GROUPS)}")
        return 2
    engines = ["pydockerd"] + (["dockerd"] if dockerd_available() else [])
    print(f"{'benchmark':44} {'pydockerd':>12} {'dockerd':>12} {'ratio':>8}  note", flush=True)
    try:
        for group in chosen:
            measure, rows = GROUPS[group]
            results = {name: measure(name) for name in engines}
            if group == "containers":
                add_run_shares(results)
            ours = results["pydockerd"]
            theirs = results.get("dockerd", {})
            for label, key, note in rows:
                mine = ours.get(key, NAN)
                other = theirs.get(key, NAN)
                ratio = mine / other if other else NAN
                print(f"{label:44} {mine:12.4g} {other:12.4g} {ratio:8.2f}  {note}", flush=True)
    finally:
        for archive in _archive:
            shutil.rmtree(archive.parent, ignore_errors=True)
    if "dockerd" not in engines:
        print("dockerd is not installed: its column is empty", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
