"""Log drivers end to end: the daemon's --log-driver default, `local`, `none`, bad options."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import busybox_daemon
from tests.daemon import Daemon


@pytest.fixture(scope="module")
def daemon(busybox_tar: Path) -> Iterator[Daemon]:
    with busybox_daemon(busybox_tar, "--log-driver", "local", "--log-opt", "max-size=1m") as d:
        yield d


def log_config(daemon: Daemon, name: str) -> dict[str, object]:
    out = daemon.docker("inspect", "--format", "{{json .HostConfig.LogConfig}}", name)
    loaded: dict[str, object] = json.loads(out.stdout)
    return loaded


def test_daemon_default_local_driver(daemon: Daemon) -> None:
    daemon.docker(
        "run", "--name", "loc", "busybox", "sh", "-c", "echo out; sleep 0.2; echo err >&2"
    )
    try:
        assert log_config(daemon, "loc") == {"Type": "local", "Config": {"max-size": "1m"}}
        logs = daemon.docker("logs", "loc")
        assert (logs.stdout, logs.stderr) == ("out\n", "err\n")
        assert daemon.docker("logs", "--tail", "1", "loc").stderr == "err\n"
    finally:
        daemon.docker("rm", "loc")


def test_local_driver_follow(daemon: Daemon) -> None:
    daemon.docker(
        "run", "-d", "--name", "follow", "busybox", "sh", "-c",
        "for i in 1 2 3; do echo tick $i; sleep 0.3; done",
    )  # fmt: skip
    follow = subprocess.run(
        ["docker", "logs", "-f", "follow"], env=daemon.env(), capture_output=True, timeout=30
    )
    assert follow.stdout.decode().split("\n")[:3] == ["tick 1", "tick 2", "tick 3"]
    daemon.docker("rm", "-f", "follow")


def test_per_container_drivers_and_bad_options(daemon: Daemon) -> None:
    daemon.docker("run", "--name", "js", "--log-driver", "json-file", "busybox", "echo", "hi")
    assert log_config(daemon, "js") == {"Type": "json-file", "Config": {}}
    assert daemon.docker("logs", "js").stdout == "hi\n"
    daemon.docker("run", "--name", "quiet", "--log-driver", "none", "busybox", "echo", "hi")
    refused = daemon.docker("logs", "quiet", check=False)
    assert refused.returncode == 1
    assert "configured logging driver does not support reading" in refused.stderr
    bogus = daemon.docker("run", "--log-driver", "bogus", "busybox", "true", check=False)
    assert bogus.returncode == 125
    assert "logger: no log driver named 'bogus' is registered" in bogus.stderr
    bad_opt = daemon.docker(
        "run", "--log-driver", "local", "--log-opt", "tag=x", "busybox", "true", check=False
    )
    assert bad_opt.returncode == 125
    assert "unknown log opt 'tag' for local log driver" in bad_opt.stderr
    daemon.docker("rm", "js", "quiet")
    assert daemon.docker("ps", "-aq").stdout.strip() == ""
