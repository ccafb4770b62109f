"""Containers end to end: `docker run` and friends, against real containerd and runc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

from tests.daemon import Daemon, Terminal, running_daemon


def test_run_prints_and_exits_with_the_code(daemon: Daemon) -> None:
    assert daemon.docker("run", "--rm", "busybox", "echo", "hi").stdout == "hi\n"
    failed = daemon.docker("run", "--name", "three", "busybox", "sh", "-c", "exit 3", check=False)
    assert failed.returncode == 3
    state = json.loads(daemon.docker("inspect", "three").stdout)[0]["State"]
    assert (state["Status"], state["ExitCode"], state["Running"]) == ("exited", 3, False)
    daemon.docker("rm", "three")


def test_run_with_piped_stdin(daemon: Daemon) -> None:
    out = daemon.docker("run", "-i", "--rm", "busybox", "cat", input=b"hi\nthere\n")
    assert out.stdout == "hi\nthere\n"


def test_run_interactive_tty(daemon: Daemon) -> None:
    """`docker run -it busybox sh` under a real pseudo-terminal."""
    term = Terminal(daemon, "run", "-it", "--rm", "busybox", "sh")
    try:
        term.expect(b"#")
        term.send(b"echo $((6*7))\r")
        answered = term.expect(b"42")  # (the echoed command line shows `6*7`, not 42)
        # ctrl-d only once the shell reads its next line: typed while the command runs, the
        # terminal (cooked again meanwhile) would swallow it as an EOF for nobody.
        term.expect(b"# ", start=answered)
        term.send(b"\x04")  # ctrl-d ends the shell, and so the container
        assert term.close() == 0
    finally:
        term.kill()


def test_detached_logs_stop_rm(daemon: Daemon) -> None:
    try:
        _logs_and_stop(daemon)
    finally:
        daemon.docker("rm", "-f", "talker", check=False)


def _logs_and_stop(daemon: Daemon) -> None:
    cid = daemon.docker(
        "run", "-d", "--name", "talker", "busybox", "sh", "-c",
        "for i in 1 2 3; do echo line$i; done; echo oops >&2; exec sleep 300",
    ).stdout.strip()  # fmt: skip
    assert len(cid) == 64
    deadline = time.monotonic() + 10
    while "oops" not in daemon.docker("logs", "talker").stderr and time.monotonic() < deadline:
        time.sleep(0.1)
    logs = daemon.docker("logs", "talker")
    assert logs.stdout == "line1\nline2\nline3\n" and logs.stderr == "oops\n"
    tail = daemon.docker("logs", "--tail", "1", "talker")
    assert len(tail.stdout.splitlines() + tail.stderr.splitlines()) == 1
    stamped = daemon.docker("logs", "-t", "talker").stdout.splitlines()[0]
    assert stamped.endswith(" line1") and stamped[4] == "-" and stamped[29] == "Z"
    follower = subprocess.Popen(
        ["docker", "logs", "-f", "talker"], env=daemon.env(), stdout=subprocess.PIPE, text=True
    )
    try:
        daemon.docker("stop", "-t", "1", "talker")
        out, _ = follower.communicate(timeout=15)  # follow ends when the container stops
        assert out == "line1\nline2\nline3\n"
    finally:
        follower.kill()
    assert json.loads(daemon.docker("inspect", "talker").stdout)[0]["State"]["ExitCode"] == 137
    daemon.docker("rm", "talker")
    assert daemon.docker("ps", "-aq", "--filter", "name=talker").stdout == ""


def test_ps_filters_and_names(daemon: Daemon) -> None:
    for name, code in (("exit0", 0), ("exit1", 1)):
        daemon.docker("run", "--name", name, "busybox", "sh", "-c", f"exit {code}", check=False)
    daemon.docker(
        "run", "-d", "--name", "runner", "--label", "role=test", "busybox", "sleep", "300"
    )
    try:
        exited = daemon.docker("ps", "--filter", "status=exited", "--format", "{{.Names}}")
        assert sorted(exited.stdout.split()) == ["exit0", "exit1"]
        running = daemon.docker("ps", "--format", "{{.Names}} {{.Status}}").stdout.splitlines()
        assert len(running) == 1 and running[0].startswith("runner Up")
        by_code = daemon.docker("ps", "-a", "--filter", "exited=1", "--format", "{{.Names}}")
        assert by_code.stdout.split() == ["exit1"]
        labelled = daemon.docker("ps", "--filter", "label=role=test", "-q").stdout.split()
        assert len(labelled) == 1
        healthy = daemon.docker("ps", "--filter", "health=none", "--format", "{{.Names}}")
        assert healthy.stdout.split() == ["runner"]  # no healthchecks: every one is `none`
        assert daemon.docker("ps", "-q", "--filter", "health=healthy").stdout == ""
        assert daemon.docker("ps", "-q", "--filter", "is-task=true").stdout == ""
        last = daemon.docker("ps", "--last", "1", "--format", "{{.Names}}").stdout.split()
        assert last == ["runner"]
        sized = daemon.docker("ps", "--size", "--format", "{{.Names}} {{.Size}}").stdout
        assert sized.startswith("runner ") and "virtual" in sized
    finally:
        daemon.docker("rm", "-f", "exit0", "exit1", "runner")


def test_docker_py_run(daemon: Daemon) -> None:
    client = daemon.client()
    try:
        assert client.containers.run("busybox", "echo hi", remove=True) == b"hi\n"
        container = client.containers.run("busybox", ["sh", "-c", "echo out; exit 4"], detach=True)
        assert container.wait()["StatusCode"] == 4
        assert container.logs() == b"out\n"
        container.remove()
        assert container.id not in [c.id for c in client.containers.list(all=True)]
    finally:
        client.close()


def test_bad_input(daemon: Daemon) -> None:
    client = daemon.client()
    try:
        response = client.api.post(
            client.api._url("/containers/create"), json={"Image": "no-such-image"}
        )
        assert response.status_code == 404
        assert response.json() == {"message": "No such image: no-such-image:latest"}
    finally:
        client.close()
    unknown = daemon.docker("run", "--rm", "no-such-image", check=False)
    assert unknown.returncode == 125
    daemon.docker("run", "-d", "--name", "dup", "busybox", "sleep", "300")
    try:
        clash = daemon.docker("run", "--name", "dup", "busybox", "true", check=False)
        assert clash.returncode == 125
        assert 'Conflict. The container name "/dup" is already in use by container' in clash.stderr
        busy = daemon.docker("rm", "dup", check=False)
        assert (
            "container is running: stop the container before removing or force remove"
            in busy.stderr
        )
        tiny = daemon.docker("run", "--memory", "1m", "busybox", "true", check=False)
        assert tiny.returncode == 125 and "Minimum memory limit allowed is 6MB" in tiny.stderr
        cpus = daemon.docker("run", "--cpus", "99", "busybox", "true", check=False)
        assert cpus.returncode == 125 and "Range of CPUs is from 0.01" in cpus.stderr
    finally:
        daemon.docker("rm", "-f", "dup")
    gone = daemon.docker("inspect", "--type", "container", "nothing", check=False)
    assert gone.returncode != 0 and "No such container: nothing" in gone.stderr


def test_containerd_killed_under_a_running_daemon(daemon: Daemon) -> None:
    """The API never hangs; exits missed while containerd was gone are found afterwards."""
    daemon.docker("run", "-d", "--name", "survivor", "busybox", "sleep", "300")
    daemon.docker("run", "-d", "--name", "quitter", "busybox", "sh", "-c", "sleep 2; exit 7")
    pid_before = json.loads(daemon.docker("inspect", "survivor").stdout)[0]["State"]["Pid"]
    containerd_pid = _managed_containerd_pid(daemon)
    os.kill(containerd_pid, signal.SIGKILL)
    try:
        start = time.monotonic()
        version = daemon.docker("version", "--format", "{{.Server.APIVersion}}", timeout=10)
        assert version.stdout.strip() == "1.47"
        # Calls that need containerd answer (503 or success after reconnecting), never hang.
        daemon.docker("start", "survivor", check=False, timeout=15)
        assert time.monotonic() - start < 20
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = json.loads(daemon.docker("inspect", "quitter").stdout)[0]["State"]
            if state["Status"] == "exited":
                break
            time.sleep(0.3)
        assert (state["Status"], state["ExitCode"]) == ("exited", 7)
        alive = json.loads(daemon.docker("inspect", "survivor").stdout)[0]["State"]
        assert alive["Running"] and alive["Pid"] == pid_before
        assert _managed_containerd_pid(daemon) != containerd_pid
    finally:
        daemon.docker("rm", "-f", "survivor", "quitter")


def _managed_containerd_pid(daemon: Daemon) -> int:
    config = daemon.exec_root / "containerd" / "containerd.toml"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[:1] == [b"containerd"] and str(config).encode() in cmdline:
                return int(proc.name)
    raise AssertionError("the daemon's containerd is not running")


def test_shutdown_stops_containers(busybox_tar: Path) -> None:
    archive = busybox_tar
    with running_daemon("--shutdown-timeout", "2") as d:
        d.docker("load", "-i", str(archive))
        d.docker("run", "-d", "--name", "sleeper", "busybox", "sleep", "300")
        pid = json.loads(d.docker("inspect", "sleeper").stdout)[0]["State"]["Pid"]
        assert Path(f"/proc/{pid}").exists()
        started = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - started < 15
        assert not Path(f"/proc/{pid}").exists()


def test_pause_rename_update_restart_prune(daemon: Daemon) -> None:
    daemon.docker("run", "-d", "--name", "p1", "busybox", "sleep", "300")
    try:
        again = daemon.docker("start", "p1")  # already running: 304, which the CLI accepts
        assert again.stdout.strip() == "p1"
        daemon.docker("pause", "p1")
        assert daemon.docker("inspect", "-f", "{{.State.Status}}", "p1").stdout.strip() == "paused"
        assert "(Paused)" in daemon.docker("ps", "--format", "{{.Status}}").stdout
        daemon.docker("unpause", "p1")
        daemon.docker("rename", "p1", "p2")
        assert daemon.docker("inspect", "-f", "{{.Name}}", "p2").stdout.strip() == "/p2"
        daemon.docker("update", "--memory", "64m", "--memory-swap", "128m", "p2")
        memory = daemon.docker("inspect", "-f", "{{.HostConfig.Memory}}", "p2").stdout.strip()
        assert memory == str(64 * 1024 * 1024)
        pid = daemon.docker("inspect", "-f", "{{.State.Pid}}", "p2").stdout.strip()
        daemon.docker("restart", "-t", "1", "p2")
        state = json.loads(daemon.docker("inspect", "p2").stdout)[0]["State"]
        assert state["Running"] and str(state["Pid"]) != pid
    finally:
        daemon.docker("rm", "-f", "p2", check=False)
    daemon.docker("create", "--name", "stale", "busybox", "true")
    pruned = daemon.docker("container", "prune", "-f").stdout
    assert "Deleted Containers:" in pruned
    assert daemon.docker("ps", "-aq", "--filter", "name=stale").stdout == ""


def test_run_options(daemon: Daemon, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)  # the container writes there as nobody
    script = (
        "id -u; echo $A; pwd; hostname; "
        "touch /x 2>/dev/null || echo read-only; touch /scratch/ok && echo tmpfs; "
        "echo from-container > /data/out"
    )
    out = daemon.docker(
        "run", "--rm", "-u", "nobody", "-e", "A=b", "-w", "/tmp", "--hostname", "box1",
        "--read-only", "--tmpfs", "/scratch", "-v", f"{tmp_path}:/data", "busybox", "sh", "-c",
        script,
    )  # fmt: skip
    assert out.stdout.splitlines() == ["65534", "b", "/tmp", "box1", "read-only", "tmpfs"]
    assert (tmp_path / "out").read_text() == "from-container\n"


def test_start_attach_and_attach(daemon: Daemon) -> None:
    daemon.docker("create", "--name", "later", "busybox", "echo", "started")
    try:
        assert daemon.docker("start", "-a", "later").stdout == "started\n"
    finally:
        daemon.docker("rm", "later")
    daemon.docker("run", "-d", "--name", "ticker", "busybox", "sh", "-c",
                  "sleep 1; for i in 1 2 3; do echo tick$i; done")  # fmt: skip
    try:
        out = daemon.docker("attach", "ticker", timeout=20).stdout
        assert "tick3" in out
    finally:
        daemon.docker("rm", "-f", "ticker")


def test_exec(daemon: Daemon) -> None:
    daemon.docker("run", "-d", "--name", "host", "busybox", "sleep", "300")
    try:
        assert daemon.docker("exec", "host", "echo", "hello-exec").stdout == "hello-exec\n"
        assert daemon.docker("exec", "host", "sh", "-c", "exit 5", check=False).returncode == 5
        piped = daemon.docker("exec", "-i", "host", "cat", input=b"through stdin\n")
        assert piped.stdout == "through stdin\n"
        options = daemon.docker("exec", "-u", "nobody", "-w", "/tmp", "-e", "X=1", "host",
                                "sh", "-c", "id -u; pwd; echo $X")  # fmt: skip
        assert options.stdout.splitlines() == ["65534", "/tmp", "1"]
        daemon.docker("exec", "-d", "host", "sh", "-c", "echo bg > /tmp/marker")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if daemon.docker("exec", "host", "cat", "/tmp/marker", check=False).stdout == "bg\n":
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the detached exec did not run")
        client = daemon.client()
        try:
            result = client.containers.get("host").exec_run(
                ["sh", "-c", "echo out; echo err >&2; exit 2"], demux=True
            )
            assert result.exit_code == 2 and result.output == (b"out\n", b"err\n")
            response = client.api.post(
                client.api._url("/exec/nonexistent/start"), json={"Detach": True}
            )
            assert response.status_code == 404
            assert response.json() == {"message": "No such exec instance: nonexistent"}
        finally:
            client.close()
    finally:
        daemon.docker("rm", "-f", "host")
    stopped = daemon.docker("create", "--name", "idle", "busybox", "true").stdout.strip()
    try:
        refused = daemon.docker("exec", "idle", "true", check=False)
        assert refused.returncode != 0 and f"Container {stopped} is not running" in refused.stderr
    finally:
        daemon.docker("rm", "idle")


def wait_for_restarts(daemon: Daemon, name: str, count: int) -> dict[str, Any]:
    """The container's inspect once it has restarted `count` times and exited (20 s at most)."""
    deadline = time.monotonic() + 20
    while True:
        state: dict[str, Any] = json.loads(daemon.docker("inspect", name).stdout)[0]
        done = state["RestartCount"] == count and state["State"]["Status"] == "exited"
        if done or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def test_restart_policy_on_failure(daemon: Daemon) -> None:
    run = daemon.docker(
        "run", "--restart", "on-failure:3", "--name", "flaky", "busybox", "false", check=False
    )
    assert run.returncode == 1
    try:
        state = wait_for_restarts(daemon, "flaky", 3)
        assert (state["RestartCount"], state["State"]["Status"]) == (3, "exited")
        time.sleep(1)  # and no fourth restart
        assert json.loads(daemon.docker("inspect", "flaky").stdout)[0]["RestartCount"] == 3
    finally:
        daemon.docker("rm", "-f", "flaky")


def test_update_restart_policy_live(daemon: Daemon) -> None:
    daemon.docker("run", "-d", "--name", "late", "busybox", "sh", "-c", "sleep 1; exit 1")
    try:
        daemon.docker("update", "--restart", "on-failure:2", "late")  # while it runs
        state = wait_for_restarts(daemon, "late", 2)
        assert (state["RestartCount"], state["State"]["Status"]) == (2, "exited")
        policy = state["HostConfig"]["RestartPolicy"]
        assert policy == {"Name": "on-failure", "MaximumRetryCount": 2}
    finally:
        daemon.docker("rm", "-f", "late")
    daemon.docker("run", "-d", "--rm", "--name", "gone", "busybox", "sleep", "30")
    try:
        refused = daemon.docker("update", "--restart", "always", "gone", check=False)
        assert refused.returncode != 0
        assert "Restart policy cannot be updated because AutoRemove is enabled" in refused.stderr
    finally:
        daemon.docker("rm", "-f", "gone", check=False)


def test_live_restore_across_kill_9(busybox_tar: Path) -> None:
    """With --live-restore a container outlives a killed daemon, and keeps its output."""
    archive = busybox_tar
    with running_daemon("--live-restore") as d:
        try:
            d.docker("load", "-i", str(archive))
            for n in range(19):
                d.docker("run", "-d", "--name", f"sleeper{n}", "busybox", "sleep", "300")
            d.docker("run", "-d", "--name", "keeper", "busybox", "sh", "-c",
                     "echo before; sleep 2; echo during; exec sleep 300")  # fmt: skip
            pids = d.docker("inspect", "--format", "{{.Name}} {{.State.Pid}}",
                            *[f"sleeper{n}" for n in range(19)], "keeper").stdout  # fmt: skip
            pid = int(pids.split()[-1])
            assert d.proc is not None
            d.proc.kill()  # kill -9: no shutdown at all
            d.proc.wait()
            time.sleep(3)  # "during" is written while no daemon runs
            d.start()
            after = d.docker("inspect", "--format", "{{.Name}} {{.State.Pid}}",
                             *[f"sleeper{n}" for n in range(19)], "keeper").stdout  # fmt: skip
            assert after == pids  # all 20 running, with the same processes
            assert len(d.docker("ps", "-q").stdout.split()) == 20
            deadline = time.monotonic() + 10
            while "during" not in d.docker("logs", "keeper").stdout and time.monotonic() < deadline:
                time.sleep(0.2)
            assert d.docker("logs", "keeper").stdout == "before\nduring\n"
            assert d.docker("exec", "keeper", "echo", "alive").stdout == "alive\n"
            d.docker("stop", "-t", "1", "keeper")
            assert not Path(f"/proc/{pid}").exists()
        finally:
            names = [f"sleeper{n}" for n in range(19)]
            d.docker("rm", "-f", "keeper", *names, check=False)


def test_restart_always_comes_back_after_daemon_restart(busybox_tar: Path) -> None:
    archive = busybox_tar
    with running_daemon("--shutdown-timeout", "1") as d:
        try:
            d.docker("load", "-i", str(archive))
            d.docker(
                "run", "-d", "--name", "always", "--restart", "always", "busybox", "sleep", "300"
            )
            d.docker("run", "-d", "--name", "unless", "--restart", "unless-stopped",
                     "busybox", "sleep", "300")  # fmt: skip
            d.docker("run", "-d", "--name", "parent", "--restart", "always",
                     "--link", "always:child", "busybox", "sleep", "300")  # fmt: skip
            d.docker("stop", "-t", "0", "unless")  # stopped by the user: stays down
            assert d.stop() == 0  # shutdown stops "always", but not as a user stop
            d.start()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                running = sorted(d.docker("ps", "--format", "{{.Names}}").stdout.split())
                if running == ["always", "parent"]:
                    break
                time.sleep(0.2)
            assert running == ["always", "parent"]
            # Children first: the linked-to container started before the one linking to it.
            started = d.docker(
                "inspect", "--format", "{{.State.StartedAt}}", "always", "parent"
            ).stdout.split()
            assert started[0] <= started[1]
            client = d.client()
            try:
                restore = client.info()["Restore"]
            finally:
                client.close()
            assert restore == {"Containers": 2, "Restored": 2, "Done": True}
        finally:
            d.docker("rm", "-f", "always", "unless", "parent", check=False)


def test_torn_removal_comes_back_dead(busybox_tar: Path) -> None:
    archive = busybox_tar
    with running_daemon() as d:
        d.docker("load", "-i", str(archive))
        cid = d.docker("create", "--name", "torn", "busybox", "true").stdout.strip()
        assert d.proc is not None
        d.proc.kill()  # kill -9 "between the steps" of a removal, simulated below
        d.proc.wait()
        config = d.data_root / "containers" / cid / "config.v2.json"
        record = json.loads(config.read_text())
        record["RemovalInProgress"] = True
        record["State"]["Status"] = "removing"
        config.write_text(json.dumps(record))
        d.start()
        state = json.loads(d.docker("inspect", "torn").stdout)[0]["State"]
        assert (state["Status"], state["Dead"]) == ("dead", True)
        assert (
            d.docker("ps", "-a", "--filter", "status=dead", "--format", "{{.Names}}").stdout
            == "torn\n"
        )
        d.docker("rm", "torn")
        assert d.docker("ps", "-aq").stdout == ""


def _leftovers(d: Daemon, cid: str) -> list[str]:
    """What of a removed container is still on disk or in containerd."""
    paths = [
        d.data_root / "containers" / ".removed" / cid,
        d.data_root / "image" / "overlay2" / "layerdb" / "mounts" / cid,
        d.exec_root / "containers" / cid,
    ]
    found = [str(path) for path in paths if path.exists()]
    sock = str(d.exec_root / "containerd" / "containerd.sock")
    listed = subprocess.run(["ctr", "-a", sock, "-n", d.namespace, "containers", "ls", "-q"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    return found + [f"containerd record {cid}" for line in listed.split() if line == cid]


def _wait_for_no_leftovers(d: Daemon, cid: str) -> None:
    deadline = time.monotonic() + 10
    while (left := _leftovers(d, cid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []


def test_removal_leaves_nothing_even_when_cut_short(busybox_tar: Path, tmp_path: Path) -> None:
    """A removal is done for users at once (the rootfs and containerd's record follow);
    a daemon killed after it finishes the cleanup at its next start."""
    with running_daemon() as d:
        d.docker("load", "-i", str(busybox_tar))
        cidfile = tmp_path / "cid"
        d.docker("run", "--rm", "--name", "brief", "--cidfile", str(cidfile), "busybox", "true")
        assert d.docker("ps", "-aq").stdout == ""
        d.docker("create", "--name", "brief", "busybox", "true")  # the name is free again
        _wait_for_no_leftovers(d, cidfile.read_text())

        cid = d.docker("run", "-d", "--name", "cut", "busybox", "true").stdout.strip()
        d.docker("wait", "cut")
        assert d.proc is not None
        d.proc.kill()  # kill -9 right after the removal's first step, simulated below
        d.proc.wait()
        trash = d.data_root / "containers" / ".removed"
        trash.mkdir(exist_ok=True)
        os.rename(d.data_root / "containers" / cid, trash / cid)
        d.start()
        assert d.docker("ps", "-a", "--format", "{{.Names}}").stdout == "brief\n"
        _wait_for_no_leftovers(d, cid)
        d.docker("rm", "brief")


def test_system_df(daemon: Daemon) -> None:
    daemon.docker("create", "--name", "df-user", "busybox", "true")
    try:
        usage = daemon.docker("system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Active}}")
        rows = dict(line.split(" ", 1) for line in usage.stdout.splitlines())
        assert rows["Images"] == "1 1"
        assert rows["Containers"].split()[0] == "1"
    finally:
        daemon.docker("rm", "df-user")


def test_top(daemon: Daemon) -> None:
    daemon.docker(
        "run", "-d", "--name", "topped", "busybox", "sh", "-c", "sleep 301 & exec sleep 302"
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = daemon.docker("top", "topped").stdout
            if "sleep 301" in out and "sleep 302" in out:
                break
            time.sleep(0.2)
        assert "sleep 301" in out and "sleep 302" in out and "PID" in out.splitlines()[0]
        assert len(out.splitlines()) == 3  # only the container's processes
        custom = daemon.docker("top", "topped", "-o", "pid,comm").stdout.splitlines()
        assert custom[0].split() == ["PID", "COMMAND"]
    finally:
        daemon.docker("rm", "-f", "topped")


def test_stats(daemon: Daemon) -> None:
    daemon.docker("run", "-d", "--name", "busy", "--memory", "64m", "busybox", "sh", "-c",
                  "while true; do :; done")  # fmt: skip
    try:
        row = daemon.docker("stats", "--no-stream", "--format",
                            "{{.Name}} {{.CPUPerc}} {{.MemUsage}} {{.PIDs}}", "busy")  # fmt: skip
        name, cpu, usage, _, limit, pids = row.stdout.split()
        assert usage.endswith(("KiB", "MiB"))
        assert name == "busy" and float(cpu.rstrip("%")) > 10
        assert limit == "64MiB" and pids == "1"
        client = daemon.client()
        try:
            sample = client.containers.get("busy").stats(stream=False, one_shot=True)
            assert sample["memory_stats"]["limit"] == 64 * 1024 * 1024
            assert sample["cpu_stats"]["cpu_usage"]["total_usage"] > 0
        finally:
            client.close()
    finally:
        daemon.docker("rm", "-f", "busy")


def test_diff_and_export(daemon: Daemon, tmp_path: Path) -> None:
    script = "mkdir /new && echo x > /new/file && rm /bin/vi && echo y >> /etc/passwd"
    daemon.docker("run", "--name", "changer", "busybox", "sh", "-c", script)
    try:
        diff = daemon.docker("diff", "changer").stdout.splitlines()
        for line in ("A /new", "A /new/file", "C /bin", "D /bin/vi", "C /etc", "C /etc/passwd"):
            assert line in diff
        out = tmp_path / "root.tar"
        daemon.docker("export", "-o", str(out), "changer")
        with tarfile.open(out) as archive:
            names = set(archive.getnames())
            assert {"new/file", "bin/busybox", "etc/passwd"} <= names and "bin/vi" not in names
            passwd = archive.extractfile("etc/passwd")
            assert passwd is not None and passwd.read().endswith(b"y\n")
    finally:
        daemon.docker("rm", "changer")


def test_commit(daemon: Daemon) -> None:
    daemon.docker("run", "--name", "to-commit", "busybox", "sh", "-c",
                  "echo committed > /greeting && rm /bin/vi")  # fmt: skip
    try:
        change = 'CMD ["cat", "/greeting"]'
        committed = daemon.docker(
            "commit", "--change", change, "-m", "a message", "to-commit", "snap:v1"
        )
        image_id = committed.stdout.strip()
        assert image_id.startswith("sha256:")
        assert daemon.docker("run", "--rm", "snap:v1").stdout == "committed\n"
        gone = daemon.docker("run", "--rm", "snap:v1", "sh", "-c", "test -e /bin/vi || echo gone")
        assert gone.stdout == "gone\n"
        history = daemon.docker("history", "--format", "{{.Comment}}", "snap:v1").stdout
        assert history.splitlines()[0] == "a message"
    finally:
        daemon.docker("rm", "to-commit")
        daemon.docker("rmi", "snap:v1", check=False)


def test_commit_pauses_a_running_container(daemon: Daemon) -> None:
    daemon.docker("run", "-d", "--name", "live-commit", "busybox", "sleep", "300")
    try:
        since = str(int(time.time()))
        daemon.docker("commit", "live-commit", "snap:paused")
        daemon.docker("commit", "--pause=false", "live-commit", "snap:unpaused")
        until = str(int(time.time()) + 1)
        events = daemon.docker(
            "events", "--since", since, "--until", until, "--filter", "container=live-commit",
            "--filter", "event=pause", "--filter", "event=unpause", "--format", "{{.Action}}",
        ).stdout.split()  # fmt: skip
        assert events == ["pause", "unpause"]  # only the first commit froze it
        assert daemon.docker("inspect", "-f", "{{.State.Status}}", "live-commit").stdout == (
            "running\n"
        )
    finally:
        daemon.docker("rm", "-f", "live-commit")
        daemon.docker("rmi", "snap:paused", "snap:unpaused", check=False)


def test_cp_both_ways(daemon: Daemon, tmp_path: Path) -> None:
    daemon.docker("run", "-d", "--name", "copier", "busybox", "sh", "-c",
                  "mkdir -p /data/sub && echo inside > /data/sub/f && exec sleep 300")  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while daemon.docker("cp", "copier:/data", str(tmp_path / "out"), check=False).returncode:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert (tmp_path / "out" / "sub" / "f").read_text() == "inside\n"
        (tmp_path / "up.txt").write_text("from host\n")
        daemon.docker("cp", str(tmp_path / "up.txt"), "copier:/data/")
        assert daemon.docker("exec", "copier", "cat", "/data/up.txt").stdout == "from host\n"
        missing = daemon.docker("cp", "copier:/nope", str(tmp_path / "x"), check=False)
        assert (
            missing.returncode != 0
            and "Could not find the file /nope in container copier" in missing.stderr
        )
        # A symlink in the container never leads the copy out of its root.
        daemon.docker("exec", "copier", "ln", "-s", "/", "/data/escape")
        daemon.docker("cp", str(tmp_path / "up.txt"), "copier:/data/escape/tmp/")
        assert not Path("/tmp/up.txt").exists() or Path("/tmp/up.txt").read_text() != "from host\n"
        assert daemon.docker("exec", "copier", "cat", "/tmp/up.txt").stdout == "from host\n"
    finally:
        daemon.docker("rm", "-f", "copier")
