"""Layer extraction safety, byte-exact tar regeneration, references, all-or-nothing loads."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from actors.images.archive import ArchiveError, Loader
from actors.images.graphdriver import VfsDriver
from actors.images.layers import LayerStore
from actors.images.reference import ReferenceStore, parse
from actors.images.store import ImageStore
from actors.images.tarstream import LayerError
from kernel.errors import InvalidParameter
from tests.fixtures.busybox import archive_bytes, rootfs_tar


def make_tar(*entries: tuple[str, str, bytes], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """entries: (name, kind: reg|dir|sym|lnk|chr, content-or-linkname)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "reg":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE}[kind]  # fmt: skip
            info.linkname = data.decode()
            if kind == "chr":
                info.devmajor, info.devminor = 1, 3
            tar.addfile(info)
    return out.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> LayerStore:
    return LayerStore(tmp_path / "layerdb", VfsDriver(tmp_path / "vfs"))


def test_reference_normalisation() -> None:
    cases = {
        "busybox": ("docker.io/library/busybox:latest", "busybox:latest"),
        "busybox:1.36": ("docker.io/library/busybox:1.36", "busybox:1.36"),
        "me/app": ("docker.io/me/app:latest", "me/app:latest"),
        "localhost:5000/app:v2": ("localhost:5000/app:v2", "localhost:5000/app:v2"),
        "quay.io/org/app": ("quay.io/org/app:latest", "quay.io/org/app:latest"),
    }
    for text, (full, familiar) in cases.items():
        ref = parse(text)
        assert (str(ref), ref.familiar()) == (full, familiar)
    digest = "sha256:" + "a" * 64
    assert parse(f"busybox@{digest}").familiar() == f"busybox@{digest}"
    with pytest.raises(
        InvalidParameter, match=r"repository name \(library/Busybox\) must be lowercase"
    ):
        parse("Busybox")
    assert str(parse("UPPER/x")) == "UPPER/x:latest"  # an upper-case first part is a domain
    for bad in ("", "a b", "x:", ":tag", "x/UPPER"):
        with pytest.raises(InvalidParameter, match="invalid reference format"):
            parse(bad)


def test_regenerated_tar_is_byte_identical(store: LayerStore) -> None:
    long_name = "deep/" + "x" * 150 + "/file"
    for layer_tar in (
        rootfs_tar(),
        make_tar(
            ("a", "dir", b""),
            (long_name, "reg", b"payload" * 100),
            ("a/link", "sym", b"../b"),
            ("a/hard", "lnk", long_name.encode()),
            fmt=tarfile.GNU_FORMAT,
        ),
        make_tar(("p", "dir", b""), ("p/" + "y" * 120, "reg", b"pax"), fmt=tarfile.PAX_FORMAT),
    ):
        layer = store.register(io.BytesIO(layer_tar), None)
        assert layer.diff_id == "sha256:" + hashlib.sha256(layer_tar).hexdigest()
        assert layer.tar_size == len(layer_tar)
        assert b"".join(store.tar_stream(layer.chain_id)) == layer_tar


@pytest.mark.parametrize(
    "entries",
    [
        [("../escape", "reg", b"x")],
        [("ok/../../escape", "reg", b"x")],
        [("link", "sym", b"/tmp/outside-target"), ("link/escape", "reg", b"x")],
        [("link", "sym", b"../../.."), ("link/escape", "reg", b"x")],
        [("hard", "lnk", b"../../etc/passwd")],
    ],
)
def test_unsafe_entries_never_write_outside(
    store: LayerStore, tmp_path: Path, entries: list[tuple[str, str, bytes]]
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(LayerError):
        store.register(io.BytesIO(make_tar(*entries)), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not Path("/tmp/outside-target").exists()
    assert store.all_chains() == []  # nothing half-registered


def test_absolute_paths_stay_inside_and_devices_are_skipped(store: LayerStore) -> None:
    layer = store.register(
        io.BytesIO(make_tar(("/etc/abs", "reg", b"inside"), ("dev/null", "chr", b""))), None
    )
    files = store.driver.layer_files(layer.cache_id)
    assert (files / "etc/abs").read_bytes() == b"inside"
    assert not (files / "dev/null").exists()


def test_whiteouts_in_vfs(store: LayerStore) -> None:
    base = store.register(
        io.BytesIO(make_tar(("d", "dir", b""), ("d/keep", "reg", b"1"), ("d/gone", "reg", b"2"),
                            ("o", "dir", b""), ("o/old", "reg", b"3"))), None)  # fmt: skip
    top = store.register(
        io.BytesIO(make_tar(("d/.wh.gone", "reg", b""), ("o/.wh..wh..opq", "reg", b""),
                            ("o/new", "reg", b"4"))), base.chain_id)  # fmt: skip
    files = store.driver.layer_files(top.cache_id)
    assert sorted(p.name for p in (files / "d").iterdir()) == ["keep"]
    assert sorted(p.name for p in (files / "o").iterdir()) == ["new"]


def test_corrupt_loads_leave_nothing(tmp_path: Path) -> None:
    layers = LayerStore(tmp_path / "layerdb", VfsDriver(tmp_path / "vfs"))
    images = ImageStore(tmp_path / "imagedb")
    refs = ReferenceStore(tmp_path / "repositories.json")
    loader = Loader(layers, images, refs)
    good, image_id = archive_bytes()
    # A manifest that promises a DiffID the layer does not have.
    bad_manifest = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(good)) as src,
        tarfile.open(fileobj=bad_manifest, mode="w") as dst,
    ):
        for member in src:
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith(".json") and member.name != "manifest.json":
                config = json.loads(data)
                config["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
                data = json.dumps(config).encode()
                member.name = hashlib.sha256(data).hexdigest() + ".json"
            if member.name == "manifest.json":
                manifest = json.loads(data)
                manifest[0]["Config"] = next(n for n in dst.getnames() if n.endswith(".json"))
                data = json.dumps(manifest).encode()
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    for broken in (good[: len(good) // 2], b"not a tar at all" * 100, bad_manifest.getvalue()):
        with pytest.raises(ArchiveError):
            loader.load(io.BytesIO(broken), tmp_path, lambda _: None)
        assert images.all() == [] and refs.all() == {} and layers.all_chains() == []
    assert loader.load(io.BytesIO(good), tmp_path, lambda _: None) == [
        "Loaded image: busybox:latest"
    ]
    assert [i.id for i in images.all()] == [image_id]
