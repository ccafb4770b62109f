"""`docker exec` beyond the basics: a pseudo-terminal that resizes, and the exec store
(records listed by the container, dropped with it and by the collector)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import docker
import pytest

from actors.containers.execs import Exec, ExecStore
from tests.daemon import Daemon, Terminal


def test_exec_it_prompt_command_and_resize(daemon: Daemon) -> None:
    daemon.docker("run", "-d", "--name", "shellbox", "busybox", "sleep", "300")
    term = Terminal(daemon, "exec", "-it", "shellbox", "sh", rows=30, cols=100)
    try:
        term.expect(b"# ")  # the shell's prompt, through the TTY
        term.send(b"echo $((6*7)); stty size\r")
        term.expect(b"42")
        term.expect(b"30 100")
        # The CLI turns SIGWINCH into a resize request. It starts listening for the signal
        # only after its first resize has returned, which may be just after the shell saw
        # that size: signal again until the shell sees the new one.
        deadline = time.monotonic() + 15
        while b"40 120" not in term.seen:
            assert time.monotonic() < deadline, term.seen
            term.resize(40, 120)
            term.send(b"stty size\r")
            try:
                term.expect(b"40 120", timeout=1)
            except AssertionError:
                continue
        term.send(b"exit 3\r")
        assert term.close() == 3
    finally:
        term.kill()
        daemon.docker("rm", "-f", "shellbox")


def test_exec_ids_follow_the_container(daemon: Daemon) -> None:
    daemon.docker("run", "-d", "--name", "execd", "busybox", "sleep", "300")
    client = daemon.client()
    try:
        exec_id = client.api.exec_create("execd", ["true"])["Id"]
        assert client.api.inspect_container("execd")["ExecIDs"] == [exec_id]
        client.api.exec_start(exec_id)
        assert client.api.exec_inspect(exec_id)["ExitCode"] == 0  # still inspectable
        daemon.docker("rm", "-f", "execd")
        with pytest.raises(docker.errors.NotFound):
            client.api.exec_inspect(exec_id)
    finally:
        client.close()
        daemon.docker("rm", "-f", "execd", check=False)


def record(exec_id: str, container_id: str, **state: Any) -> Exec:
    fields: dict[str, Any] = dict(
        cmd=["true"], env=[], user="", workdir="", tty=False, privileged=False,
        attach_stdin=False, attach_stdout=False, attach_stderr=False, detach_keys="",
    )  # fmt: skip
    return Exec(id=exec_id, container_id=container_id, **fields, **state)


def test_collector_marks_then_drops_what_is_not_live() -> None:
    running = SimpleNamespace(State=SimpleNamespace(Running=True))
    stopped = SimpleNamespace(State=SimpleNamespace(Running=False))
    containers = {"up": running, "down": stopped}
    service = SimpleNamespace(store=SimpleNamespace(get_or_none=containers.get))
    store = ExecStore(service)  # type: ignore[arg-type]
    for item in (
        record("live", "up", running=True),
        record("pending", "up"),  # created, not started, container running: kept
        record("ended", "up", exit_code=0),
        record("orphan", "down"),  # never started, container stopped
    ):
        store._execs[item.id] = item
    assert store.collect() == 0  # the first pass only marks
    assert store.get("ended").inspect()["CanRemove"] is True
    assert store.collect() == 2
    assert sorted(store._execs) == ["live", "pending"]
