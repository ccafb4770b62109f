"""The exec store: records listed by the container, dropped with it and by the collector."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import docker
import pytest

from actors.containers.execs import Exec, ExecStore
from tests.daemon import Daemon, running_daemon
from tests.fixtures.busybox import busybox_archive


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    archive = busybox_archive(tmp_path_factory.mktemp("fixtures") / "busybox.tar")
    with running_daemon() as d:
        d.docker("load", "-i", str(archive))
        yield d


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
