"""Images end to end: the docker CLI and docker-py against a real daemon."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.fixtures.busybox import archive_bytes, busybox_archive, rootfs_tar

BUSYBOX_ID = archive_bytes()[1]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon() as d:
        yield d


@pytest.fixture(scope="module")
def fixture_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_archive(tmp_path_factory.mktemp("fixtures") / "busybox.tar")


@pytest.fixture
def loaded(daemon: Daemon, fixture_tar: Path) -> Daemon:
    out = daemon.docker("load", "-i", str(fixture_tar)).stdout
    assert "Loaded image: busybox:latest" in out
    return daemon


def derived_archive(tag: str) -> bytes:
    """An image with the busybox layer plus one of its own (a shared base layer)."""
    base = rootfs_tar()
    extra = io.BytesIO()
    with tarfile.open(fileobj=extra, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    layers = [base, extra.getvalue()]
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["cat", "/hello.txt"]},
            "created": "2026-02-02T00:00:00Z",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        files = {config_name: config, "l1.tar": layers[0], "l2.tar": layers[1]}
        files["manifest.json"] = json.dumps(
            [{"Config": config_name, "RepoTags": [tag], "Layers": ["l1.tar", "l2.tar"]}]
        ).encode()
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_load_list_inspect_history_tag(loaded: Daemon) -> None:
    d = loaded
    ids = d.docker("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
    assert f"busybox:latest {BUSYBOX_ID}" in ids.splitlines()
    inspect = json.loads(d.docker("image", "inspect", "busybox").stdout)[0]
    assert inspect["Id"] == BUSYBOX_ID
    assert inspect["Config"]["Cmd"] == ["sh"] and inspect["Os"] == "linux"
    assert len(inspect["RootFS"]["Layers"]) == 1
    history = d.docker("history", "--format", "{{.CreatedBy}}", "busybox").stdout.splitlines()
    assert history == ['CMD ["sh"]', "busybox-static rootfs"]
    d.docker("tag", "busybox", "example.test/team/box:v1")
    tags = d.docker("images", "--format", "{{.Repository}}:{{.Tag}}",
                    "--filter", "reference=example.test/*/*").stdout.split()  # fmt: skip
    assert tags == ["example.test/team/box:v1"]
    bad = d.docker("tag", "busybox", "example.test/Team/box", check=False)
    assert bad.returncode != 0 and "must be lowercase" in bad.stderr
    d.docker("rmi", "example.test/team/box:v1")


def test_save_rmi_load_round_trip(loaded: Daemon, tmp_path: Path) -> None:
    d = loaded
    derived = tmp_path / "derived.tar"
    derived.write_bytes(derived_archive("derived:1"))
    d.docker("load", "-i", str(derived))
    listing = [
        "images",
        "--digests",
        "--no-trunc",
        "--format",
        "{{.Repository}} {{.Tag}} {{.Digest}} {{.ID}} {{.Size}}",
    ]
    before = sorted(d.docker(*listing).stdout.splitlines())
    saved = tmp_path / "saved.tar"
    d.docker("save", "-o", str(saved), "busybox", "derived:1")
    with tarfile.open(saved) as archive:
        layer_sizes = [m.size for m in archive.getmembers() if m.size == len(rootfs_tar())]
        assert len(layer_sizes) == 1  # the shared busybox layer is stored once
    d.docker("rmi", "busybox", "derived:1")
    assert "busybox" not in d.docker("images").stdout
    d.docker("load", "-i", str(saved))
    assert sorted(d.docker(*listing).stdout.splitlines()) == before


def test_import_with_change(daemon: Daemon, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "greeting").write_text("hi\n")
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname=".")
    out = daemon.docker("import", "--change", 'CMD ["/bin/sh"]', "--change", "ENV A=b",
                        str(tarball), "imported:v1").stdout.strip()  # fmt: skip
    assert out.startswith("sha256:")
    config = json.loads(
        daemon.docker("image", "inspect", "--format", "{{json .Config}}", "imported:v1").stdout
    )
    assert config["Cmd"] == ["/bin/sh"] and config["Env"] == ["A=b"]
    piped = daemon.docker("import", "-", "piped:v1", input=tarball.read_bytes(), check=False)
    assert piped.returncode == 0, piped.stderr
    bad = daemon.docker("import", "--change", "FROB x", str(tarball), "bad:v1", check=False)
    assert bad.returncode != 0 and "FROB is not a valid change command" in bad.stderr
    daemon.docker("rmi", "imported:v1", "piped:v1")


def test_bad_input(daemon: Daemon, fixture_tar: Path, tmp_path: Path) -> None:
    good = fixture_tar.read_bytes()
    for name, data in (("truncated", good[: len(good) // 3]), ("garbage", b"\x00junk" * 999)):
        path = tmp_path / name
        path.write_bytes(data)
        result = daemon.docker("load", "-i", str(path), check=False)
        assert result.returncode != 0 and "invalid archive" in result.stderr
    assert (
        daemon.docker("images", "-q").stdout.strip() == ""
        or "busybox" in daemon.docker("images").stdout
    )
    assert "Loaded image: busybox:latest" in daemon.docker("load", "-i", str(fixture_tar)).stdout
    missing = daemon.docker("rmi", "nothing-here", check=False)
    assert missing.returncode != 0 and "No such image: nothing-here:latest" in missing.stderr
    client = daemon.client()
    try:
        response = client.api.post(
            client.api._url("/images/busybox/tag"), params={"repo": "Bad/Name"}
        )
        assert response.status_code == 400
        assert "invalid reference format" in response.json()["message"]
    finally:
        client.close()


def test_rmi_conflicts(loaded: Daemon) -> None:
    d = loaded
    d.docker("tag", "busybox", "second:tag")
    refused = d.docker("rmi", BUSYBOX_ID[7:19], check=False)
    assert refused.returncode != 0
    assert (
        f"conflict: unable to delete {BUSYBOX_ID[7:19]} (must be forced) - "
        "image is referenced in multiple repositories" in refused.stderr
    )
    out = d.docker("rmi", "second:tag").stdout
    assert out.strip() == "Untagged: second:tag"
    assert BUSYBOX_ID in d.docker("images", "--no-trunc", "-q").stdout


def test_docker_py_load_get_save(daemon: Daemon, fixture_tar: Path) -> None:
    client = daemon.client()
    try:
        images = client.images.load(fixture_tar.read_bytes())
        assert [i.id for i in images] == [BUSYBOX_ID]
        image = client.images.get("busybox")
        assert image.tags == ["busybox:latest"]
        saved = b"".join(image.save())
        client.images.remove("busybox")
        again = client.images.load(saved)
        assert [i.id for i in again] == [BUSYBOX_ID]
    finally:
        client.close()
