"""`docker cp` in depth: byte-identical round trips, links, ownership, and the root's walls."""

from __future__ import annotations

import filecmp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon


@pytest.fixture
def box(daemon: Daemon) -> Iterator[str]:
    daemon.docker("run", "-d", "--name", "box", "busybox", "sleep", "300")
    try:
        yield "box"
    finally:
        daemon.docker("rm", "-f", "box")


def make_tree(top: Path) -> None:
    (top / "sub").mkdir(parents=True)
    (top / "big.bin").write_bytes(os.urandom(50 * 1024 * 1024))
    (top / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (top / "script.sh").chmod(0o751)
    (top / "sub" / "secret").write_text("s3cret\n")
    (top / "sub" / "secret").chmod(0o600)
    (top / "sub").chmod(0o750)
    (top / "link-rel").symlink_to("sub/secret")
    (top / "link-abs").symlink_to("/etc/hostname")


def assert_same_tree(a: Path, b: Path) -> None:
    for root, dirs, files in os.walk(a):
        for name in dirs + files:
            left = Path(root) / name
            right = b / left.relative_to(a)
            la, lb = os.lstat(left), os.lstat(right)
            assert stat.S_IMODE(la.st_mode) == stat.S_IMODE(lb.st_mode), left
            assert stat.S_IFMT(la.st_mode) == stat.S_IFMT(lb.st_mode), left
            if stat.S_ISLNK(la.st_mode):
                assert os.readlink(left) == os.readlink(right)
            elif stat.S_ISREG(la.st_mode):
                assert filecmp.cmp(left, right, shallow=False), left


def test_round_trip_is_byte_identical(daemon: Daemon, box: str, tmp_path: Path) -> None:
    make_tree(tmp_path / "tree")
    daemon.docker("cp", str(tmp_path / "tree"), f"{box}:/")
    listing = daemon.docker("exec", box, "ls", "-l", "/tree/sub/secret").stdout
    assert listing.startswith("-rw-------")
    daemon.docker("cp", f"{box}:/tree", str(tmp_path / "back"))
    assert_same_tree(tmp_path / "tree", tmp_path / "back")
    assert sorted(os.listdir(tmp_path / "back")) == sorted(os.listdir(tmp_path / "tree"))


def test_links_are_followed_only_inside_the_container(
    daemon: Daemon, box: str, tmp_path: Path
) -> None:
    daemon.docker(
        "exec", box, "sh", "-c",
        "echo container-shadow > /etc/shadow && ln -s /etc/shadow /leak && ln -s / /rootlink",
    )  # fmt: skip
    # Without -L the link itself is copied; with -L its target, read inside the container.
    daemon.docker("cp", f"{box}:/leak", str(tmp_path / "as-link"))
    assert os.readlink(tmp_path / "as-link") == "/etc/shadow"
    daemon.docker("cp", "-L", f"{box}:/leak", str(tmp_path / "followed"))
    assert (tmp_path / "followed").read_text() == "container-shadow\n"
    daemon.docker("cp", f"{box}:/rootlink/etc/shadow", str(tmp_path / "through-dir-link"))
    assert (tmp_path / "through-dir-link").read_text() == "container-shadow\n"
    # Writing through a link to / lands in the container's root, not the host's.
    (tmp_path / "dropped").write_text("x\n")
    daemon.docker("cp", str(tmp_path / "dropped"), f"{box}:/rootlink/etc/")
    assert daemon.docker("exec", box, "cat", "/etc/dropped").stdout == "x\n"
    assert not Path("/etc/dropped").exists()


def test_ownership_and_kind_changes(daemon: Daemon, tmp_path: Path) -> None:
    daemon.docker("run", "-d", "--name", "owned", "-u", "nobody", "busybox", "sleep", "300")
    try:
        (tmp_path / "f").write_text("data\n")
        os.chown(tmp_path / "f", 1234, 4321)
        daemon.docker("cp", str(tmp_path / "f"), "owned:/tmp/kept")
        daemon.docker("cp", "-a", str(tmp_path / "f"), "owned:/tmp/as-user")
        owners = daemon.docker(
            "exec", "owned", "stat", "-c", "%u:%g", "/tmp/kept", "/tmp/as-user"
        ).stdout.split()
        assert owners == ["1234:4321", "65534:65534"]
        # The CLI never lets a file replace a directory (noOverwriteDirNonDir).
        daemon.docker("exec", "owned", "mkdir", "/tmp/dir")
        (tmp_path / "dir").write_text("not a dir\n")
        refused = daemon.docker("cp", str(tmp_path / "dir"), "owned:/tmp/", check=False)
        assert refused.returncode != 0
        assert 'cannot overwrite directory "/dir" with non-directory' in refused.stderr
        assert daemon.docker("exec", "owned", "test", "-d", "/tmp/dir", check=False).returncode == 0
    finally:
        daemon.docker("rm", "-f", "owned")
