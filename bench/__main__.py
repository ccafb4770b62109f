"""`make bench`: every figure next to dockerd's, measured in the same run when installed."""

from __future__ import annotations

import statistics
import sys

from bench.engines import dockerd_available, start_engine
from bench.ping import ping_throughput

RUNS = 5


def measure(name: str) -> dict[str, float]:
    starts = []
    for _ in range(RUNS):
        with start_engine(name) as (_engine, first_ping):
            starts.append(first_ping)
    with start_engine(name) as (engine, _):
        ping_throughput(engine, seconds=1.0)  # warm up
        rate, cpu_us = ping_throughput(engine)
    return {"start_s": statistics.median(starts), "ping_rps": rate, "ping_cpu_us": cpu_us}


def main() -> int:
    engines = ["pydockerd"] + (["dockerd"] if dockerd_available() else [])
    results = {name: measure(name) for name in engines}
    ours = results["pydockerd"]
    theirs = results.get("dockerd")
    rows = [
        ("start to first /_ping (s, median of 5)", "start_s", "goal < 0.25 s"),
        ("/_ping req/s, 8 keep-alive unix clients", "ping_rps", "goal >= 10k"),
        ("daemon CPU per /_ping (us)", "ping_cpu_us", ""),
    ]
    print(f"{'benchmark':44} {'pydockerd':>12} {'dockerd':>12} {'ratio':>8}  note")
    for label, key, note in rows:
        mine = ours[key]
        other = theirs[key] if theirs else float("nan")
        ratio = mine / other if theirs else float("nan")
        print(f"{label:44} {mine:12.4g} {other:12.4g} {ratio:8.2f}  {note}")
    if theirs is None:
        print("dockerd is not installed: its column is empty", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
