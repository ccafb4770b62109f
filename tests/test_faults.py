"""Fault isolation: an actor that crashes restarts alone while the API keeps serving."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import busybox_daemon
from tests.daemon import Daemon


@pytest.fixture(scope="module")
def daemon(busybox_tar: Path) -> Iterator[Daemon]:
    # The fault route exists only with debug on and the test hooks enabled.
    with busybox_daemon(busybox_tar, "--debug", env={"PYDOCKERD_TEST_HOOKS": "1"}) as d:
        yield d


def actors(daemon: Daemon) -> dict[str, dict[str, Any]]:
    client = daemon.client()
    try:
        listing = client.api.get(client.api._url("/debug/actors")).json()
    finally:
        client.close()
    return {a["id"]: a for a in listing}


def crash(daemon: Daemon, actor: str) -> None:
    client = daemon.client()
    try:
        response = client.api.post(client.api._url(f"/debug/actors/{actor}/fault"))
        assert response.status_code == 204, response.text
    finally:
        client.close()


def wait_restarted(daemon: Daemon, actor: str, restarts: int) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        listing = actors(daemon)
        if listing[actor]["restarts"] == restarts and listing[actor]["state"] == "running":
            return listing
        assert time.monotonic() < deadline, listing[actor]
        time.sleep(0.1)


def test_a_crashed_stats_actor_restarts_alone(daemon: Daemon) -> None:
    daemon.docker("run", "-d", "--name", "watched", "busybox", "sleep", "300")
    try:
        before = actors(daemon)
        crash(daemon, "stats")
        for _ in range(10):  # ps answers throughout
            assert daemon.docker("ps", "--format", "{{.Names}}").stdout.split() == ["watched"]
        after = wait_restarted(daemon, "stats", before["stats"]["restarts"] + 1)
        assert "InjectedFault" in after["stats"]["last_error"]
        assert after["containers"]["detail"]["attached"] == 1
        assert after["restore"]["state"] == "stopped"  # the temporary restore worker ended
        assert after["stats"]["detail"] == {"samplers": 0, "subscribers": 0}
        assert all(after[a]["restarts"] == before[a]["restarts"] for a in after if a != "stats")
        client = daemon.client()
        try:
            sample = client.api.stats("watched", stream=False, one_shot=True)
        finally:
            client.close()
        assert sample["pids_stats"]["current"] == 1
    finally:
        daemon.docker("rm", "-f", "watched")


def test_a_crashed_containers_actor_reattaches_its_containers(daemon: Daemon) -> None:
    daemon.docker("run", "-d", "--name", "talker", "busybox", "sh", "-c",
                  "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done")  # fmt: skip
    try:
        pid = daemon.docker("inspect", "-f", "{{.State.Pid}}", "talker").stdout
        before = actors(daemon)
        crash(daemon, "containers")
        assert daemon.docker("version", "--format", "{{.Server.Os}}").stdout == "linux\n"
        wait_restarted(daemon, "containers", before["containers"]["restarts"] + 1)
        assert daemon.docker("inspect", "-f", "{{.State.Pid}}", "talker").stdout == pid
        # Output written after the crash still reaches the log: the stdio was reattached.
        seen = len(daemon.docker("logs", "talker").stdout.splitlines())
        deadline = time.monotonic() + 10
        while len(daemon.docker("logs", "talker").stdout.splitlines()) < seen + 5:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert daemon.docker("exec", "talker", "echo", "ok").stdout == "ok\n"
        daemon.docker("stop", "-t", "1", "talker")
        assert daemon.docker("inspect", "-f", "{{.State.Status}}", "talker").stdout == "exited\n"
    finally:
        daemon.docker("rm", "-f", "talker")
