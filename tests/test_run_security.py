"""`docker run` options about privileges and limits: seccomp, capabilities, ulimits, pids, shm."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from tests.daemon import Daemon

CAP_CHOWN, CAP_NET_ADMIN, CAP_SYS_ADMIN = 0, 12, 21


def status_field(daemon: Daemon, field: str, *opts: str) -> str:
    out = daemon.docker("run", "--rm", *opts, "busybox", "grep", f"^{field}:", "/proc/self/status")
    return out.stdout.split(":", 1)[1].strip()


def test_default_seccomp_profile_and_opt_outs(daemon: Daemon) -> None:
    assert status_field(daemon, "Seccomp") == "2"  # filtering
    assert status_field(daemon, "Seccomp", "--security-opt", "seccomp=unconfined") == "0"
    assert status_field(daemon, "Seccomp", "--privileged") == "0"
    assert status_field(daemon, "NoNewPrivs") == "0"
    assert status_field(daemon, "NoNewPrivs", "--security-opt", "no-new-privileges") == "1"


def test_custom_seccomp_profile(daemon: Daemon, tmp_path: Path) -> None:
    profile = tmp_path / "deny-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )
    out = daemon.docker(
        "run", "--rm", "--security-opt", f"seccomp={profile}", "busybox",
        "sh", "-c", "mkdir /tmp/x || echo refused; touch /tmp/y && echo touched",
    )  # fmt: skip
    assert out.stdout.split() == ["refused", "touched"]
    assert "Operation not permitted" in out.stderr
    # The CLI checks the JSON itself: send a broken profile through the API.
    with pytest.raises(docker.errors.APIError) as broken:
        daemon.client().containers.create("busybox", security_opt=["seccomp={not json"])
    assert broken.value.status_code == 400
    assert "Decoding seccomp profile failed" in str(broken.value.explanation)
    bad = daemon.docker("run", "--rm", "--security-opt", "bogus=1", "busybox", "true", check=False)
    assert bad.returncode == 125 and "invalid --security-opt 2" in bad.stderr


def test_capabilities(daemon: Daemon) -> None:
    def caps(*opts: str) -> int:
        return int(status_field(daemon, "CapEff", *opts), 16)

    default = caps()
    assert default & (1 << CAP_CHOWN) and not default & (1 << CAP_NET_ADMIN)
    assert caps("--cap-add", "NET_ADMIN") & (1 << CAP_NET_ADMIN)
    assert not caps("--cap-drop", "chown") & (1 << CAP_CHOWN)
    assert caps("--cap-drop", "ALL") == 0
    denied = daemon.docker(
        "run", "--rm", "--cap-drop", "CHOWN", "busybox", "sh", "-c",
        "touch /tmp/f && chown 1 /tmp/f || echo denied",
    )  # fmt: skip
    assert denied.stdout.strip() == "denied"
    # Privileged: every capability, writable /sys, and mounts work.
    privileged = daemon.docker(
        "run", "--rm", "--privileged", "busybox", "sh", "-c",
        "mkdir /m && mount -t tmpfs none /m && echo mounted; grep -c ' /sys sysfs rw' /proc/mounts",
    )  # fmt: skip
    assert privileged.stdout.split() == ["mounted", "1"]
    assert caps("--privileged") & (1 << CAP_SYS_ADMIN)


def test_ulimit_pids_limit_and_shm_size(daemon: Daemon) -> None:
    out = daemon.docker(
        "run", "--rm", "--ulimit", "nofile=1024:2048", "busybox", "sh", "-c",
        "ulimit -n; ulimit -Hn",
    )  # fmt: skip
    assert out.stdout.split() == ["1024", "2048"]
    pids = daemon.docker(
        "run", "--rm", "--pids-limit", "8", "busybox", "sh", "-c",
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; "
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 2 & done 2>&1 | grep -c fork; wait",
    )  # fmt: skip
    limit, failures = pids.stdout.split()[:2]
    assert limit == "8"
    assert int(failures) > 0
    shm = daemon.docker("run", "--rm", "--shm-size", "8m", "busybox", "df", "-k", "/dev/shm")
    assert shm.stdout.splitlines()[1].split()[1] == "8192"
    default_shm = daemon.docker("run", "--rm", "busybox", "df", "-k", "/dev/shm")
    assert default_shm.stdout.splitlines()[1].split()[1] == "65536"


def test_failed_start_of_an_rm_container_removes_it(daemon: Daemon) -> None:
    out = daemon.docker("run", "--rm", "--name", "nocmd", "busybox", "/nonexistent", check=False)
    assert out.returncode == 127  # the CLI's code for a command that cannot be found
    assert "no such file or directory" in out.stderr
    assert daemon.docker("ps", "-aq", "--filter", "name=nocmd").stdout.strip() == ""
