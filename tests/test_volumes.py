"""Volumes and mounts end to end (issue #7): `docker volume`, every mount form, copy-up,
restore across a restart and volume plugins, with the real docker CLI."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel.fsutil import is_mount_point, mount_points
from kernel.unixhttp import UnixHTTPConnection
from tests.daemon import Daemon, running_daemon, short_tempdir
from tests.fixtures.busybox import busybox_archive
from tests.volume_plugin import VolumePlugin


@pytest.fixture(scope="module")
def plugin_dir() -> Path:
    return short_tempdir("pydplug")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, plugin_dir: Path) -> Iterator[Daemon]:
    archive = busybox_archive(tmp_path_factory.mktemp("fixtures") / "busybox.tar")
    with running_daemon(config={"plugin-dirs": [str(plugin_dir)]}) as d:
        d.docker("load", "-i", str(archive))
        try:
            yield d
        finally:
            _cleanup(d)


def _cleanup(d: Daemon) -> None:
    """Remove every container and volume (their mounts go with them); then unmount what
    a failed test may have left under the daemon's own root, deepest first."""
    ids = d.docker("ps", "-aq", check=False).stdout.split()
    if ids:
        d.docker("rm", "-f", "-v", *ids, check=False)
    names = d.docker("volume", "ls", "-q", check=False).stdout.split()
    if names:
        d.docker("volume", "rm", "-f", *names, check=False)
    root = str(d.root) + "/"
    left = [point for point in mount_points() if point.startswith(root)]
    for point in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def api(d: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = UnixHTTPConnection(str(d.sock), timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        connection.request(method, f"/v1.47{path}", body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw.strip() else None
    finally:
        connection.close()


def inspect(d: Daemon, *args: str) -> Any:
    return json.loads(d.docker(*args).stdout)[0]


def volume_names(d: Daemon, *args: str) -> list[str]:
    return sorted(d.docker("volume", "ls", "-q", *args).stdout.split())


# -- docker volume --------------------------------------------------------------------


def test_volume_create_ls_inspect_rm(daemon: Daemon) -> None:
    since = str(int(time.time()))
    assert daemon.docker("volume", "create", "--label", "tier=db", "v1").stdout == "v1\n"
    daemon.docker("volume", "create", "v2")
    try:
        anon = daemon.docker("volume", "create").stdout.strip()
        assert len(anon) == 64
        info = inspect(daemon, "volume", "inspect", "v1")
        assert info["Name"] == "v1" and info["Driver"] == "local" and info["Scope"] == "local"
        assert info["Labels"] == {"tier": "db"} and info["Options"] == {}
        assert info["Mountpoint"] == str(daemon.data_root / "volumes" / "v1" / "_data")
        assert info["CreatedAt"].endswith("Z") and info["CreatedAt"][:2] == "20"
        assert os.path.isdir(info["Mountpoint"])
        assert (daemon.data_root / "volumes" / "v1" / "volume.json").is_file()
        # Creating an existing volume again answers it (dockerd does the same).
        assert daemon.docker("volume", "create", "v1").stdout == "v1\n"
        assert volume_names(daemon) == sorted(["v1", "v2", anon])
        assert volume_names(daemon, "--filter", "label=tier=db") == ["v1"]
        assert volume_names(daemon, "--filter", "name=v2") == ["v2"]
        assert volume_names(daemon, "--filter", "driver=local") == sorted(["v1", "v2", anon])
        assert volume_names(daemon, "--filter", "dangling=true") == sorted(["v1", "v2", anon])
        bad = daemon.docker("volume", "ls", "--filter", "nope=1", check=False)
        assert bad.returncode != 0 and "invalid filter 'nope'" in bad.stderr
        missing = daemon.docker("volume", "inspect", "nosuch", check=False)
        assert missing.returncode != 0 and "get nosuch: no such volume" in missing.stderr
        assert daemon.docker("volume", "rm", "v1", "v2", anon).stdout.split() == [
            "v1",
            "v2",
            anon,
        ]
        assert not (daemon.data_root / "volumes" / "v1").exists()
        gone = daemon.docker("volume", "rm", "v1", check=False)
        assert gone.returncode != 0 and "no such volume" in gone.stderr
        assert daemon.docker("volume", "rm", "-f", "v1").returncode == 0
        events = daemon.docker(
            "events", "--since", since, "--until", str(int(time.time()) + 1),
            "--filter", "type=volume", "--format", "{{.Action}} {{.Actor.ID}}",
        ).stdout.splitlines()  # fmt: skip
        assert "create v1" in events and "destroy v1" in events
    finally:
        daemon.docker("volume", "rm", "-f", "v1", "v2", check=False)


def test_volume_create_bad_input(daemon: Daemon) -> None:
    before = sorted(os.listdir(daemon.data_root / "volumes"))
    for name in ("a/b", "..", "x"):
        result = daemon.docker("volume", "create", name, check=False)
        assert result.returncode != 0, name
    status, body = api(daemon, "POST", "/volumes/create", {"Name": "a/b"})
    assert status == 400
    assert body["message"] == (
        'create a/b: "a/b" includes invalid characters for a local volume name, only '
        '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host directory, '
        "use absolute path"
    )
    status, body = api(
        daemon, "POST", "/volumes/create", {"Name": "opts", "DriverOpts": {"bogus": "1"}}
    )
    assert (status, body["message"]) == (400, 'create opts: invalid option: "bogus"')
    status, body = api(
        daemon, "POST", "/volumes/create", {"Name": "opts", "DriverOpts": {"type": "tmpfs"}}
    )
    assert (status, body["message"]) == (400, 'create opts: missing required option: "device"')
    assert sorted(os.listdir(daemon.data_root / "volumes")) == before


# -- data in volumes --------------------------------------------------------------------


def test_named_volume_shared_and_survives_restart(daemon: Daemon) -> None:
    since = str(int(time.time()))
    try:
        daemon.docker("run", "--name", "writer", "-v", "data:/data", "busybox",
                      "sh", "-c", "echo hello > /data/greeting")  # fmt: skip
        out = daemon.docker("run", "--rm", "-v", "data:/data", "busybox", "cat", "/data/greeting")
        assert out.stdout == "hello\n"
        events = daemon.docker(
            "events", "--since", since, "--until", str(int(time.time()) + 1),
            "--filter", "type=volume", "--format",
            "{{.Action}} {{.Actor.ID}} {{.Actor.Attributes.destination}}",
        ).stdout.splitlines()  # fmt: skip
        assert events[:3] == [
            "create data <no value>",
            "mount data /data",
            "unmount data <no value>",
        ]
        mounts = inspect(daemon, "container", "inspect", "writer")["Mounts"]
        assert mounts == [
            {
                "Type": "volume",
                "Name": "data",
                "Source": str(daemon.data_root / "volumes" / "data" / "_data"),
                "Destination": "/data",
                "Driver": "local",
                "Mode": "z",
                "RW": True,
                "Propagation": "",
            }
        ]
        daemon.stop()
        daemon.start()
        out = daemon.docker("run", "--rm", "-v", "data:/data", "busybox", "cat", "/data/greeting")
        assert out.stdout == "hello\n"
        # References come back from the containers: the stopped writer still uses it.
        busy = daemon.docker("volume", "rm", "data", check=False)
        assert busy.returncode == 1
        writer_id = inspect(daemon, "container", "inspect", "writer")["Id"]
        assert f"remove data: volume is in use - [{writer_id}]" in busy.stderr
        status, _body = api(daemon, "DELETE", "/volumes/data")
        assert status == 409
        assert volume_names(daemon, "--filter", "dangling=false") == ["data"]
        pruned = daemon.docker("volume", "prune", "--all", "-f").stdout
        assert "data" not in pruned
        assert volume_names(daemon) == ["data"]
        ps = daemon.docker("ps", "-a", "--filter", "volume=data", "--format", "{{.Names}}")
        assert ps.stdout.split() == ["writer"]
        ps = daemon.docker("ps", "-a", "--filter", "volume=/data", "--format", "{{.Names}}")
        assert ps.stdout.split() == ["writer"]
        daemon.docker("rm", "writer")
        daemon.docker("volume", "rm", "data")
    finally:
        daemon.docker("rm", "-f", "writer", check=False)
        daemon.docker("volume", "rm", "-f", "data", check=False)


def test_rm_v_removes_anonymous_volumes_only(daemon: Daemon) -> None:
    try:
        daemon.docker("create", "--name", "holder", "-v", "/anon", "-v", "kept:/kept",
                      "busybox", "true")  # fmt: skip
        mounts = {m["Destination"]: m for m in inspect(daemon, "inspect", "holder")["Mounts"]}
        anon = mounts["/anon"]["Name"]
        assert len(anon) == 64 and mounts["/kept"]["Name"] == "kept"
        # dockerd: `z` for -v/--mount local volumes, nothing for config (image) volumes.
        assert (mounts["/anon"]["Mode"], mounts["/kept"]["Mode"]) == ("", "z")
        labels = inspect(daemon, "volume", "inspect", anon)["Labels"]
        assert labels == {"com.docker.volume.anonymous": ""}
        assert volume_names(daemon) == sorted([anon, "kept"])
        daemon.docker("rm", "-v", "holder")
        assert volume_names(daemon) == ["kept"]
        # --rm removes the anonymous volumes too.
        daemon.docker("run", "--rm", "-v", "/scratch", "busybox", "touch", "/scratch/x")
        assert volume_names(daemon) == ["kept"]
        # Without -v they stay; prune (anonymous only, by default) takes them.
        daemon.docker("run", "--name", "leaver", "-v", "/left", "busybox", "true")
        daemon.docker("rm", "leaver")
        left = [n for n in volume_names(daemon) if n != "kept"]
        assert len(left) == 1
        report = daemon.docker("volume", "prune", "-f").stdout
        assert left[0] in report and "kept" not in report
        assert volume_names(daemon) == ["kept"]
        daemon.docker("volume", "prune", "-a", "-f")
        assert volume_names(daemon) == []
    finally:
        daemon.docker("rm", "-f", "-v", "holder", "leaver", check=False)
        daemon.docker("volume", "rm", "-f", "kept", check=False)


def test_copy_up_into_new_volume_unless_nocopy(daemon: Daemon) -> None:
    try:
        out = daemon.docker("run", "--rm", "-v", "etc:/etc", "busybox", "ls", "/etc").stdout
        assert "passwd" in out.split() and "group" in out.split()
        data = Path(inspect(daemon, "volume", "inspect", "etc")["Mountpoint"])
        assert (data / "passwd").read_text().startswith("root:")
        empty = daemon.docker("run", "--rm", "--mount",
                              "type=volume,src=nocopy,dst=/etc,volume-nocopy",
                              "busybox", "ls", "-A", "/etc")  # fmt: skip
        assert empty.stdout == ""
        empty = daemon.docker("run", "--rm", "-v", "nocopy2:/etc:nocopy", "busybox",
                              "ls", "-A", "/etc")  # fmt: skip
        assert empty.stdout == ""
        # An image's VOLUME with files of another owner and mode: kept in the copy.
        daemon.docker("run", "--name", "prep", "busybox", "sh", "-c",
                      "mkdir /stuff && echo x > /stuff/f && chown 1000:1001 /stuff/f && "
                      "chmod 640 /stuff/f && ln -s f /stuff/link && chmod 750 /stuff")  # fmt: skip
        daemon.docker("commit", "-c", "VOLUME /stuff", "prep", "withvol")
        listing = daemon.docker("run", "--rm", "withvol", "stat", "-c", "%n %u:%g %a %F",
                                "/stuff", "/stuff/f", "/stuff/link").stdout  # fmt: skip
        assert listing.splitlines() == [
            "/stuff 0:0 750 directory",
            "/stuff/f 1000:1001 640 regular file",
            "/stuff/link 0:0 777 symbolic link",
        ]
        # The anonymous volume went with --rm.
        assert sorted(volume_names(daemon)) == ["etc", "nocopy", "nocopy2"]
    finally:
        daemon.docker("rm", "-f", "prep", check=False)
        daemon.docker("rmi", "withvol", check=False)
        daemon.docker("volume", "rm", "-f", "etc", "nocopy", "nocopy2", check=False)


def test_tmpfs_size_and_read_only_mounts(daemon: Daemon) -> None:
    full = daemon.docker("run", "--rm", "--mount", "type=tmpfs,dst=/t,tmpfs-size=1m",
                         "busybox", "dd", "if=/dev/zero", "of=/t/big", "bs=1M", "count=2",
                         check=False)  # fmt: skip
    assert full.returncode != 0 and "No space left on device" in full.stderr
    fits = daemon.docker("run", "--rm", "--mount", "type=tmpfs,dst=/t,tmpfs-size=4m",
                         "busybox", "dd", "if=/dev/zero", "of=/t/big", "bs=1M",
                         "count=2")  # fmt: skip
    assert fits.returncode == 0
    mode = daemon.docker("run", "--rm", "--mount", "type=tmpfs,dst=/t,tmpfs-mode=1770",
                         "busybox", "stat", "-c", "%a", "/t").stdout  # fmt: skip
    assert mode == "1770\n"
    legacy = daemon.docker("run", "--rm", "--tmpfs", "/t:size=1m", "busybox", "sh", "-c",
                           "dd if=/dev/zero of=/t/big bs=1M count=2", check=False)  # fmt: skip
    assert legacy.returncode != 0
    try:
        ro = daemon.docker("run", "--rm", "-v", "rovol:/data:ro", "busybox",
                           "touch", "/data/x", check=False)  # fmt: skip
        assert ro.returncode != 0 and "Read-only file system" in ro.stderr
        host = short_tempdir("pydbind")
        ro = daemon.docker("run", "--rm", "--mount", f"type=bind,src={host},dst=/h,readonly",
                           "busybox", "touch", "/h/x", check=False)  # fmt: skip
        assert ro.returncode != 0 and "Read-only file system" in ro.stderr
        daemon.docker("run", "--rm", "-v", f"{host}:/h", "busybox", "touch", "/h/x")
        assert (host / "x").exists()
    finally:
        daemon.docker("volume", "rm", "-f", "rovol", check=False)


def test_bind_mount_missing_source(daemon: Daemon) -> None:
    base = short_tempdir("pydbind")
    created = base / "made" / "here"
    daemon.docker("run", "--rm", "-v", f"{created}:/x", "busybox", "touch", "/x/f")
    assert (created / "f").exists()
    missing = base / "absent"
    result = daemon.docker("run", "--rm", "--mount", f"type=bind,src={missing},dst=/x",
                           "busybox", "true", check=False)  # fmt: skip
    assert result.returncode != 0
    assert (
        f'invalid mount config for type "bind": bind source path does not exist: {missing}'
        in result.stderr
    )
    assert not missing.exists()


def test_volumes_from_and_inspect_mounts(daemon: Daemon) -> None:
    host = short_tempdir("pydbind")
    try:
        daemon.docker("create", "--name", "source", "-v", "shared:/shared",
                      "-v", f"{host}:/host:ro", "busybox", "true")  # fmt: skip
        daemon.docker("run", "--rm", "--volumes-from", "source", "busybox",
                      "sh", "-c", "echo via > /shared/f")  # fmt: skip
        ro = daemon.docker("run", "--rm", "--volumes-from", "source:ro", "busybox",
                           "sh", "-c", "cat /shared/f; touch /shared/g", check=False)  # fmt: skip
        assert ro.stdout == "via\n" and "Read-only file system" in ro.stderr
        mounts = {m["Destination"]: m for m in inspect(daemon, "inspect", "source")["Mounts"]}
        assert mounts["/host"] == {
            "Type": "bind",
            "Source": str(host),
            "Destination": "/host",
            "Mode": "ro",
            "RW": False,
            "Propagation": "rprivate",
        }
        daemon.docker("create", "--name", "mounter",
                      "--mount", "type=volume,src=m1,dst=/m1,readonly",
                      "--mount", "type=tmpfs,dst=/tmp/t", "busybox", "true")  # fmt: skip
        mounts = {m["Destination"]: m for m in inspect(daemon, "inspect", "mounter")["Mounts"]}
        assert mounts["/m1"]["RW"] is False and mounts["/m1"]["Mode"] == "z"
        daemon.docker("run", "--rm", "--mount",
                      "type=volume,src=m2,dst=/m2,volume-label=made=mount,"
                      "volume-opt=type=tmpfs,volume-opt=device=tmpfs,volume-opt=o=size=1m",
                      "busybox", "touch", "/m2/x")  # fmt: skip
        m2 = inspect(daemon, "volume", "inspect", "m2")
        assert m2["Labels"] == {"made": "mount"}
        assert m2["Options"] == {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}
        assert not is_mount_point(m2["Mountpoint"])
        assert mounts["/tmp/t"] == {
            "Type": "tmpfs",
            "Source": "",
            "Destination": "/tmp/t",
            "Mode": "",
            "RW": True,
            "Propagation": "",
        }
        # A 404 here makes the CLI try to pull the image (as with dockerd): ask the API.
        status, body = api(
            daemon,
            "POST",
            "/containers/create",
            {"Image": "busybox", "HostConfig": {"VolumesFrom": ["nosuch"]}},
        )
        assert (status, body["message"]) == (404, "No such container: nosuch")
    finally:
        daemon.docker("rm", "-f", "source", "mounter", check=False)
        daemon.docker("volume", "rm", "-f", "shared", "m1", "m2", check=False)


def test_local_driver_options_mount_at_first_use(daemon: Daemon) -> None:
    try:
        daemon.docker("volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs",
                      "-o", "o=size=1m", "tmpvol")  # fmt: skip
        info = inspect(daemon, "volume", "inspect", "tmpvol")
        assert info["Options"] == {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}
        assert not is_mount_point(info["Mountpoint"])
        cid = daemon.docker("run", "-d", "-v", "tmpvol:/t", "busybox", "sleep", "300").stdout
        cid = cid.strip()
        assert is_mount_point(info["Mountpoint"])
        full = daemon.docker("exec", cid, "dd", "if=/dev/zero", "of=/t/big", "bs=1M",
                             "count=2", check=False)  # fmt: skip
        assert "No space left on device" in full.stderr
        daemon.docker("rm", "-f", cid)
        deadline = time.monotonic() + 10
        while is_mount_point(info["Mountpoint"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not is_mount_point(info["Mountpoint"])
        host = short_tempdir("pydbind")
        (host / "file").write_text("bound\n")
        daemon.docker("volume", "create", "-o", "type=none", "-o", f"device={host}",
                      "-o", "o=bind", "bindvol")  # fmt: skip
        out = daemon.docker("run", "--rm", "-v", "bindvol:/b", "busybox", "cat", "/b/file")
        assert out.stdout == "bound\n"
        # Removing the volume unmounts it first: the host's files stay.
        daemon.docker("volume", "rm", "bindvol")
        assert (host / "file").read_text() == "bound\n"
    finally:
        daemon.docker("volume", "rm", "-f", "tmpvol", "bindvol", check=False)


def test_bad_mounts_are_refused_before_anything_exists(daemon: Daemon) -> None:
    volumes_before = sorted(os.listdir(daemon.data_root / "volumes"))
    containers_before = sorted(os.listdir(daemon.data_root / "containers"))
    prefix = 'invalid mount config for type "bind": '
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"Binds": ["bad/name:/x"]},
            'create bad/name: "bad/name" includes invalid characters for a local volume '
            'name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a '
            "host directory, use absolute path",
        ),
        ({"Binds": ["..:/x"]}, 'create ..: ".." includes invalid characters'),
        (
            {"Mounts": [{"Type": "bind", "Source": "relative/dir", "Target": "/x"}]},
            prefix + "invalid mount path: 'relative/dir' mount path must be absolute",
        ),
        (
            {"Binds": ["/tmp:/"]},
            "invalid volume specification: '/tmp:/': "
            + prefix
            + "invalid specification: destination can't be '/'",
        ),
        (
            {"Mounts": [{"Type": "volume", "Source": "v", "Target": "/"}]},
            'invalid mount config for type "volume": invalid specification: '
            "destination can't be '/'",
        ),
        ({"Binds": ["a1:/x", "a2:/x"]}, "Duplicate mount point: /x"),
        (
            {"Binds": ["a1:/x"], "Mounts": [{"Type": "volume", "Source": "a2", "Target": "/x"}]},
            "Duplicate mount point: /x",
        ),
        ({"Binds": ["a1:/x:bogus"]}, "invalid mode: bogus"),
    ]
    for host_config, message in cases:
        status, body = api(
            daemon,
            "POST",
            "/containers/create",
            {"Image": "busybox", "Cmd": ["true"], "HostConfig": host_config},
        )
        assert status == 400, (host_config, body)
        assert body["message"].startswith(message), (host_config, body)
    # The CLI shows the same texts.
    result = daemon.docker("run", "--rm", "-v", "a1:/x", "-v", "a2:/x", "busybox", check=False)
    assert result.returncode == 125 and "Duplicate mount point: /x" in result.stderr
    result = daemon.docker("run", "--rm", "-v", "bad/name:/x", "busybox", check=False)
    assert result.returncode == 125 and "includes invalid characters" in result.stderr
    result = daemon.docker("run", "--rm", "--mount", "type=bind,src=rel,dst=/x", "busybox",
                           check=False)  # fmt: skip
    assert result.returncode == 125
    assert "invalid mount path: 'rel' mount path must be absolute" in result.stderr
    result = daemon.docker("run", "--rm", "-v", "/tmp:/", "busybox", check=False)
    assert result.returncode == 125 and "destination can't be '/'" in result.stderr
    assert sorted(os.listdir(daemon.data_root / "volumes")) == volumes_before
    assert sorted(os.listdir(daemon.data_root / "containers")) == containers_before
    assert daemon.docker("ps", "-aq").stdout == ""


def test_system_df_counts_volumes(daemon: Daemon) -> None:
    try:
        daemon.docker("run", "--rm", "-v", "sized:/d", "busybox", "dd", "if=/dev/zero",
                      "of=/d/f", "bs=1k", "count=100")  # fmt: skip
        status, body = api(daemon, "GET", "/system/df")
        assert status == 200
        volume = next(v for v in body["Volumes"] if v["Name"] == "sized")
        assert volume["UsageData"] == {"Size": 102400, "RefCount": 0}
        out = daemon.docker("system", "df", "--format", "{{.Type}} {{.TotalCount}}").stdout
        assert "Local Volumes 1" in out.splitlines(), daemon.docker("volume", "ls").stdout
    finally:
        daemon.docker("volume", "rm", "-f", "sized", check=False)


# -- plugins ------------------------------------------------------------------------------


def test_volume_plugin(daemon: Daemon, plugin_dir: Path) -> None:
    state = short_tempdir("pydplugstate")
    with VolumePlugin(plugin_dir / "testplugin.sock", state) as plugin:
        try:
            daemon.docker("volume", "create", "-d", "testplugin", "-o", "flavour=x", "pv1")
            assert plugin.volumes["pv1"]["Opts"] == {"flavour": "x"}
            info = inspect(daemon, "volume", "inspect", "pv1")
            assert info["Driver"] == "testplugin"
            assert info["Mountpoint"] == str(state / "pv1")
            daemon.docker("run", "--rm", "-v", "pv1:/data", "busybox",
                          "sh", "-c", "echo through > /data/f")  # fmt: skip
            assert (state / "pv1" / "f").read_text() == "through\n"
            calls = [c for c in plugin.calls if c in ("VolumeDriver.Mount", "VolumeDriver.Unmount")]
            assert calls == ["VolumeDriver.Mount", "VolumeDriver.Unmount"]
            assert volume_names(daemon, "--filter", "driver=testplugin") == ["pv1"]
            # A volume the plugin has but the daemon never made shows up (VolumeDriver.List).
            (state / "outside").mkdir()
            plugin.volumes["outside"] = {"Opts": {}, "mounts": 0}
            assert volume_names(daemon, "--filter", "driver=testplugin") == ["outside", "pv1"]
            assert inspect(daemon, "volume", "inspect", "outside")["Mountpoint"] == str(
                state / "outside"
            )
            daemon.docker("volume", "rm", "outside")
            assert "outside" not in plugin.volumes
            daemon.docker("volume", "rm", "pv1")
            assert "pv1" not in plugin.volumes
            missing = daemon.docker("volume", "create", "-d", "nosuchplugin", "x1", check=False)
            assert missing.returncode != 0
            assert (
                'create x1: error looking up volume plugin nosuchplugin: plugin "nosuchplugin" '
                "not found" in missing.stderr
            )
        finally:
            daemon.docker("volume", "rm", "-f", "pv1", "outside", check=False)


def test_plugin_spec_file(daemon: Daemon, plugin_dir: Path) -> None:
    state = short_tempdir("pydplugstate")
    sock_dir = short_tempdir("pydplugsock")
    with VolumePlugin(sock_dir / "p.sock", state) as plugin:
        (plugin_dir / "specplugin.spec").write_text(f"unix://{sock_dir / 'p.sock'}\n")
        try:
            daemon.docker("volume", "create", "-d", "specplugin", "sv1")
            assert "sv1" in plugin.volumes
            daemon.docker("volume", "rm", "sv1")
        finally:
            daemon.docker("volume", "rm", "-f", "sv1", check=False)
            (plugin_dir / "specplugin.spec").unlink()


def test_live_restore_keeps_volume_mounts(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A container that outlives the daemon keeps its volume mounted and referenced; the
    volume is unmounted when that container ends."""
    archive = busybox_archive(tmp_path_factory.mktemp("fixtures") / "busybox.tar")
    with running_daemon("--live-restore") as d:
        d.docker("load", "-i", str(archive))
        try:
            d.docker("volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs", "lr")
            mountpoint = inspect(d, "volume", "inspect", "lr")["Mountpoint"]
            cid = d.docker("run", "-d", "-v", "lr:/t", "busybox", "sleep", "300").stdout.strip()
            d.docker("exec", cid, "sh", "-c", "echo kept > /t/f")
            d.stop()
            d.start()
            assert inspect(d, "inspect", cid)["State"]["Running"] is True
            assert is_mount_point(mountpoint)
            busy = d.docker("volume", "rm", "lr", check=False)
            assert busy.returncode != 0 and "volume is in use" in busy.stderr
            out = d.docker("run", "--rm", "-v", "lr:/t", "busybox", "cat", "/t/f").stdout
            assert out == "kept\n"
            assert is_mount_point(mountpoint)
            d.docker("rm", "-f", cid)
            deadline = time.monotonic() + 10
            while is_mount_point(mountpoint) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not is_mount_point(mountpoint)
        finally:
            _cleanup(d)


def test_prune_filters_and_docker_py(daemon: Daemon) -> None:
    client = daemon.client()
    try:
        client.volumes.create("keep1", labels={"keep": "yes"})
        client.volumes.create("drop1", labels={"keep": "no"})
        client.volumes.create("drop2")
        assert sorted(v.name for v in client.volumes.list()) == ["drop1", "drop2", "keep1"]
        assert client.volumes.get("keep1").attrs["Labels"] == {"keep": "yes"}
        report = daemon.docker("volume", "prune", "-a", "-f", "--filter", "label!=keep=yes").stdout
        assert "drop1" in report and "drop2" in report and "keep1" not in report
        assert volume_names(daemon) == ["keep1"]
        status, body = api(
            daemon, "POST", "/volumes/prune?filters=%7B%22bogus%22%3A%5B%22x%22%5D%7D"
        )
        assert (status, body["message"]) == (400, "invalid filter 'bogus'")
        pruned = client.volumes.prune(filters={"all": "true", "label": "keep=yes"})
        assert pruned["VolumesDeleted"] == ["keep1"]
        assert client.volumes.list() == []
    finally:
        for name in ("keep1", "drop1", "drop2"):
            daemon.docker("volume", "rm", "-f", name, check=False)


def test_bind_propagation(daemon: Daemon) -> None:
    """rshared needs a shared source (/ is not shared here: the test makes its own)."""
    shared = short_tempdir("pydshared")
    private = short_tempdir("pydprivate")
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        refused = daemon.docker("run", "--rm", "--mount",
                                f"type=bind,src={private},dst=/m,bind-propagation=rshared",
                                "busybox", "true", check=False)  # fmt: skip
        assert refused.returncode != 0
        assert f"path {private} is mounted on " in refused.stderr
        assert "but it is not a shared mount" in refused.stderr
        cid = daemon.docker("run", "-d", "--mount",
                            f"type=bind,src={shared},dst=/m,bind-propagation=rshared",
                            "busybox", "sleep", "300").stdout.strip()  # fmt: skip
        mounts = inspect(daemon, "inspect", cid)["Mounts"]
        assert mounts[0]["Propagation"] == "rshared"
        (shared / "sub").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(shared / "sub")], check=True)
        try:
            (shared / "sub" / "seen").write_text("yes\n")
            out = daemon.docker("exec", cid, "cat", "/m/sub/seen").stdout
            assert out == "yes\n"  # the host's later mount propagated into the container
        finally:
            daemon.docker("rm", "-f", cid, check=False)
            subprocess.run(["umount", str(shared / "sub")], check=False)
    finally:
        subprocess.run(["umount", str(shared)], check=False)


def test_restart_with_a_broken_volume_plugin(daemon: Daemon, plugin_dir: Path) -> None:
    """A volume whose plugin is gone is reported at start; the start does not wait on it."""
    state = short_tempdir("pydplugstate")
    try:
        with VolumePlugin(plugin_dir / "goneplugin.sock", state):
            daemon.docker("volume", "create", "-d", "goneplugin", "gv1")
            daemon.docker("create", "--name", "orphan", "-v", "gv1:/d", "busybox", "true")
            daemon.stop()
        started = time.monotonic()
        daemon.start()
        assert time.monotonic() - started < 15
        deadline = time.monotonic() + 10
        while "volume gv1 (/d) is missing or not reachable" not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()[-2000:]
            time.sleep(0.1)
        assert inspect(daemon, "volume", "inspect", "gv1")["Driver"] == "goneplugin"
        failed = daemon.docker("start", "orphan", check=False)
        assert failed.returncode != 0 and "goneplugin" in failed.stderr
        daemon.docker("rm", "orphan")
        plain = daemon.docker("volume", "rm", "gv1", check=False)
        assert plain.returncode != 0
        daemon.docker("volume", "rm", "-f", "gv1")
        assert "gv1" not in volume_names(daemon)
    finally:
        daemon.docker("rm", "-f", "orphan", check=False)
        daemon.docker("volume", "rm", "-f", "gv1", check=False)
