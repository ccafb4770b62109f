"""The images actor's storage core: references, graph drivers (vfs, and overlay2 where
overlayfs works), layers, images, load/save/import, rmi, and hostile input."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.images import tarexport
from actors.images.graphdriver import (
    GraphDriver,
    Overlay2Driver,
    VfsDriver,
    probe_overlay,
    unmount,
)
from actors.images.layers import LayerStore, chain_id
from actors.images.reference import ReferenceStore, parse, parse_any, parse_named, repo_tag
from actors.images.store import Images
from actors.images.tarstream import LayerError
from kernel.errors import Conflict, InvalidParameter, NotFound
from kernel.fsutil import mount_points
from tests.fixtures.busybox import archive_bytes, busybox_archive, image_config, rootfs_tar

OVERLAY = probe_overlay(Path("/tmp"))[0]
NO_OVERLAY = pytest.mark.skipif(not OVERLAY, reason="overlayfs does not work here")
DRIVERS = ["vfs", pytest.param("overlay2", marks=NO_OVERLAY)]
BUSYBOX_ARCHIVE, BUSYBOX_ID = archive_bytes()


def our_mounts(root: Path) -> list[str]:
    return [p for p in mount_points() if p.startswith(str(root))]


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GraphDriver]:
    home = tmp_path / "root" / request.param
    made: GraphDriver = VfsDriver(home) if request.param == "vfs" else Overlay2Driver(home)
    try:
        yield made
    finally:
        made.cleanup()
        for point in reversed(our_mounts(tmp_path)):  # even when a test failed half-way
            unmount(point)


@pytest.fixture
def images(driver: GraphDriver, tmp_path: Path) -> Images:
    return Images(tmp_path / "root", driver)


def load(images: Images, data: bytes) -> list[str]:
    return tarexport.load(images, io.BytesIO(data), images.driver.home.parent / "tmp")


def save(images: Images, *names: str) -> bytes:
    out = io.BytesIO()
    tarexport.save(images, tarexport.save_targets(images, names), out)
    return out.getvalue()


def members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def make_tar(*entries: tuple[str, str, bytes], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """entries: (name, reg|dir|sym|lnk|chr|fifo, content or link target)."""
    kinds = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE,
             "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}  # fmt: skip
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = 1_700_000_000, 0o755 if kind == "dir" else 0o644
            if kind == "reg":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type, info.linkname = kinds[kind], data.decode()
            info.devmajor, info.devminor = (8, 0) if kind == "chr" else (0, 0)
            tar.addfile(info)
    return out.getvalue()


def docker_archive(layers: list[bytes], tag: str | None, **config: object) -> tuple[bytes, str]:
    """A classic `docker save` archive of one image (layers as given, maybe gzipped)."""
    diff_ids = []
    for layer in layers:
        plain = gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer
        diff_ids.append("sha256:" + hashlib.sha256(plain).hexdigest())
    raw = image_config(diff_ids, **config)
    image_hex = hashlib.sha256(raw).hexdigest()
    files = {f"{image_hex}.json": raw}
    names = []
    for index, layer in enumerate(layers):
        names.append(f"layer{index}/layer.tar")
        files[names[-1]] = layer
    files["manifest.json"] = json.dumps(
        [{"Config": f"{image_hex}.json", "RepoTags": [tag] if tag else None, "Layers": names}]
    ).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue(), f"sha256:{image_hex}"


def state(images: Images) -> tuple[list[str], ...]:
    """Everything a failed operation must leave as it found it."""
    return (
        sorted(i.id for i in images.store.images()),
        sorted(map(str, images.refs.all())),
        sorted(layer.chain_id for layer in images.layers.layers()),
        sorted(images.driver.ids()),
        sorted(os.listdir(images.layers.root / "sha256")),
    )


# -- references -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "full", "familiar"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("index.docker.io/me/app", "docker.io/me/app:latest", "me/app:latest"),
        ("me/app", "docker.io/me/app:latest", "me/app:latest"),
        ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
        ("localhost:5000/x:y", "localhost:5000/x:y", "localhost:5000/x:y"),
        ("quay.io/org/app", "quay.io/org/app:latest", "quay.io/org/app:latest"),
        ("[::1]:5000/app:v1", "[::1]:5000/app:v1", "[::1]:5000/app:v1"),
        ("UPPER/x", "UPPER/x:latest", "UPPER/x:latest"),  # an upper-case first part: a domain
        ("a/b/c:1", "docker.io/a/b/c:1", "a/b/c:1"),
        ("docker.io/library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest"),
    ],
)
def test_reference_normalisation(text: str, full: str, familiar: str) -> None:
    ref = parse(text)
    assert (str(ref), ref.familiar()) == (full, familiar)


def test_reference_digests_ids_and_errors() -> None:
    digest = "sha256:" + "a" * 64
    ref = parse(f"busybox@{digest}")
    assert (ref.tag, ref.digest, ref.familiar()) == ("", digest, f"busybox@{digest}")
    assert parse_any("a" * 64) == digest and parse_any(digest) == digest
    assert parse_any("busybox") == parse_named("busybox")
    assert repo_tag("me/app", "v2").familiar() == "me/app:v2"
    assert repo_tag("me/app:v1", "").familiar() == "me/app:v1"
    errors = {
        "Busybox": "invalid reference format: repository name (library/Busybox) must be lowercase",
        "me/App:v1": "invalid reference format: repository name (me/App) must be lowercase",
        "": "invalid reference format",
        "a b": "invalid reference format",
        "x:": "invalid reference format",
        ":tag": "invalid reference format",
        "foo:bar:baz": "invalid reference format",
        "a" * 64: f"invalid repository name ({'a' * 64}), cannot specify 64-byte hexadecimal"
        " strings",
        "x@sha256:" + "a" * 40: "invalid checksum digest length",
        "x/" + "y" * 300: "repository name must not be more than 255 characters",
    }  # fmt: skip
    for text, message in errors.items():
        with pytest.raises(InvalidParameter) as caught:
            parse_named(text)
        assert caught.value.message == message, text
    with pytest.raises(InvalidParameter, match="invalid tag format"):
        repo_tag("app", "bad tag")


def test_reference_store_format(tmp_path: Path) -> None:
    path = tmp_path / "repositories.json"
    store = ReferenceStore(path)
    one, two = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    assert store.add(parse("busybox"), one) is None
    assert store.add(parse("localhost:5000/app:v1"), one) is None
    assert store.add(parse("busybox"), two) == one  # a moved tag reports where it was
    assert json.loads(path.read_bytes()) == {"Repositories": {
        "busybox": {"busybox:latest": two},
        "localhost:5000/app": {"localhost:5000/app:v1": one},
    }}  # fmt: skip
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(Conflict, match="is already set to image"):
        store.add(parse("busybox"), one, force=False)
    reopened = ReferenceStore(path)
    assert reopened.get(parse_named("busybox")) == two
    assert [r.familiar() for r in reopened.references(one)] == ["localhost:5000/app:v1"]


# -- the fixture, load, save ------------------------------------------------------------


def test_fixture_is_deterministic(tmp_path: Path) -> None:
    assert archive_bytes() == (BUSYBOX_ARCHIVE, BUSYBOX_ID)
    path = busybox_archive(tmp_path / "busybox.tar")
    assert path.read_bytes() == BUSYBOX_ARCHIVE
    with tarfile.open(fileobj=io.BytesIO(rootfs_tar())) as tar:
        names = tar.getnames()
        assert names == sorted(names)
        assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in tar)
        assert tar.getmember("tmp/").mode == 0o1777
        assert tar.getmember("bin/sh").linkname == "/bin/busybox"
        passwd = tar.extractfile("etc/passwd").read()  # type: ignore[union-attr]
        assert b"root:x:0:0" in passwd and b"nobody:x:65534" in passwd


def test_load_then_the_image_works(images: Images) -> None:
    assert load(images, BUSYBOX_ARCHIVE) == ["Loaded image: busybox:latest"]
    image = images.get_image("busybox")
    assert image.id == BUSYBOX_ID
    assert image.container_config["Cmd"] == ["sh"]
    for name in ("busybox:latest", BUSYBOX_ID, BUSYBOX_ID[7:19], BUSYBOX_ID[:12]):
        assert images.get_image(name) is image
    with pytest.raises(NotFound, match=r"^No such image: nothere:latest$"):
        images.get_image("nothere")
    with pytest.raises(NotFound, match=r"^No such image: sha256:0{64}$"):
        images.get_image("0" * 64)
    # Loading it again changes nothing and says the same.
    before = state(images)
    assert load(images, BUSYBOX_ARCHIVE) == ["Loaded image: busybox:latest"]
    assert state(images) == before
    history = images.history("busybox")
    assert [row["CreatedBy"] for row in history] == ['CMD ["sh"]', "busybox-static rootfs"]
    assert history[0]["Id"] == BUSYBOX_ID and history[0]["Tags"] == ["busybox:latest"]


def test_save_delete_load_keeps_ids_and_layer_bytes(images: Images) -> None:
    load(images, BUSYBOX_ARCHIVE)
    archive = save(images, "busybox")
    files = members(archive)
    image = images.get_image("busybox")
    layer_blob = files["blobs/sha256/" + image.diff_ids[0][7:]]
    assert layer_blob == rootfs_tar()  # byte for byte: its sha256 is the DiffID
    assert files["blobs/sha256/" + image.id[7:]] == image.raw
    manifest = json.loads(files["manifest.json"])
    assert manifest[0]["RepoTags"] == ["busybox:latest"]
    index = json.loads(files["index.json"])
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == (
        "docker.io/library/busybox:latest"
    )
    records = images.delete("busybox")
    assert records == [
        {"Untagged": "busybox:latest"},
        {"Deleted": image.id},
        {"Deleted": chain_id(None, image.diff_ids[0])},
    ]
    assert state(images) == ([], [], [], [], [])
    assert load(images, archive) == ["Loaded image: busybox:latest"]
    again = images.get_image("busybox")
    assert (again.id, again.diff_ids) == (image.id, image.diff_ids)
    assert save(images, "busybox") == archive


def test_shared_layers_are_saved_once(images: Images) -> None:
    base = rootfs_tar()
    extra = make_tar(("hello.txt", "reg", b"hello\n"))
    load(images, BUSYBOX_ARCHIVE)
    derived, derived_id = docker_archive([base, gzip.compress(extra)], "derived:v1", Cmd=["cat"])
    assert load(images, derived) == ["Loaded image: derived:v1"]
    # The base layer is shared, not stored twice.
    assert len(images.layers.layers()) == 2
    files = members(save(images, "busybox", "derived:v1"))
    layer_blobs = [n for n in files if n.startswith("blobs/") and files[n] in (base, extra)]
    assert len(layer_blobs) == 2
    manifest = json.loads(files["manifest.json"])
    assert [item["RepoTags"] for item in manifest] == [["busybox:latest"], ["derived:v1"]]
    assert images.get_image("derived:v1").id == derived_id
    # Deleting one image keeps the layer the other still uses.
    images.delete("derived:v1")
    assert [layer.diff_id for layer in images.layers.layers()] == images.get_image(
        "busybox"
    ).diff_ids


def test_save_by_name_id_and_unknown(images: Images) -> None:
    load(images, BUSYBOX_ARCHIVE)
    images.tag(images.get_image("busybox"), parse("busybox:other"))
    by_name = tarexport.save_targets(images, ["busybox"])
    assert [r.familiar() for r in by_name[0].refs] == ["busybox:latest", "busybox:other"]
    assert tarexport.save_targets(images, [BUSYBOX_ID[7:19]])[0].refs == []
    with pytest.raises(NotFound):
        tarexport.save_targets(images, ["busybox:missing"])
    with pytest.raises(NotFound):
        tarexport.save_targets(images, ["nothing"])


def test_load_oci_layout_with_gzipped_layers(images: Images) -> None:
    """An OCI layout (no manifest.json) whose layer blobs are gzip-compressed."""
    layer = rootfs_tar()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    compressed = gzip.compress(layer, mtime=0)
    raw = image_config([diff_id])

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": tarexport.MEDIA_MANIFEST,
        "config": {"mediaType": tarexport.MEDIA_CONFIG, "digest": digest(raw), "size": len(raw)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(compressed), "size": len(compressed)}],
    }).encode()  # fmt: skip
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": tarexport.MEDIA_MANIFEST, "digest": digest(manifest), "size": len(manifest),
        "annotations": {"io.containerd.image.name": "docker.io/library/oci:v1",
                        "org.opencontainers.image.ref.name": "v1"}}]}).encode()  # fmt: skip
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:  # the whole archive gzipped, too
        for name, data in {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index,
                           **{f"blobs/sha256/{digest(d)[7:]}": d
                              for d in (raw, manifest, compressed)}}.items():  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert load(images, out.getvalue()) == ["Loaded image: oci:v1"]
    assert images.get_image("oci:v1").id == digest(raw) == BUSYBOX_ID
    # A layer stored gzipped comes out of save as the plain tar its DiffID names.
    assert members(save(images, "oci:v1"))["blobs/sha256/" + diff_id[7:]] == layer


# -- all or nothing -----------------------------------------------------------------------


def test_bad_archives_leave_nothing_behind(images: Images) -> None:
    good = BUSYBOX_ARCHIVE
    wrong_diff, _ = docker_archive([make_tar(("a", "reg", b"1"))], "wrong:v1")
    config_name = next(n for n in members(wrong_diff) if n.endswith(".json") and "/" not in n
                       and n != "manifest.json")  # fmt: skip
    files = members(wrong_diff)
    cfg = json.loads(files[config_name])
    cfg["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    cfg_raw = json.dumps(cfg).encode()
    bad_diff_id = _archive({
        "c.json": cfg_raw, "layer0/layer.tar": files["layer0/layer.tar"],
        "manifest.json": json.dumps([{"Config": "c.json", "RepoTags": ["bad:v1"],
                                      "Layers": ["layer0/layer.tar"]}]).encode(),
    })  # fmt: skip
    # Two images: the second one broken; the first must not stay either.
    second_broken = _archive({
        **{k: v for k, v in members(good).items() if k != "manifest.json"},
        "c.json": cfg_raw, "layer0/layer.tar": files["layer0/layer.tar"],
        "manifest.json": json.dumps(
            json.loads(members(good)["manifest.json"])
            + [{"Config": "c.json", "RepoTags": ["bad:v1"], "Layers": ["layer0/layer.tar"]}]
        ).encode(),
    })  # fmt: skip
    truncated_layer = _archive({
        **members(good),
        next(n for n in members(good) if n.endswith("layer.tar")):
            next(v for n, v in members(good).items() if n.endswith("layer.tar"))[:300_000],
    })  # fmt: skip
    cases = {
        "truncated": (good[: len(good) // 2], "invalid archive: unexpected EOF"),
        "not a tar": (b"not a tar at all\n" * 100, "invalid archive: archive/tar: invalid tar"),
        "empty": (b"", "invalid archive: it holds neither manifest.json nor index.json"),
        "truncated gzip": (gzip.compress(good)[:5000], "invalid archive: unexpected EOF"),
        "wrong DiffID": (bad_diff_id, "invalid diffID for layer 0"),
        "second image broken": (second_broken, "invalid diffID for layer 0"),
        "truncated layer": (truncated_layer, "invalid layer"),
    }
    empty = state(images)
    for name, (data, message) in cases.items():
        with pytest.raises(InvalidParameter) as caught:
            load(images, data)
        assert message in caught.value.message, name
        assert state(images) == empty, name
        assert os.listdir(images.driver.home.parent / "tmp") == [], name
    assert load(images, good) == ["Loaded image: busybox:latest"]


def _archive(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# -- hostile layers -------------------------------------------------------------------


@pytest.mark.parametrize(
    "entries",
    [
        [("../escape", "reg", b"x")],
        [("ok/../../escape", "reg", b"x")],
        [("hard", "lnk", b"../../escape")],
        [("a", "dir", b""), ("a/.wh..", "reg", b""), ("a/.wh...", "reg", b"")],
    ],
    ids=["dotdot", "nested-dotdot", "hardlink-out", "whiteout-dots"],
)
def test_hostile_layers_fail_or_stay_inside(
    images: Images, tmp_path: Path, entries: list[tuple[str, str, bytes]]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    before = state(images)
    try:
        layer = images.layers.register(io.BytesIO(make_tar(*entries)), None)
    except LayerError:
        assert state(images) == before  # nothing half-registered
    else:
        assert (images.driver.diff_dir(layer.cache_id) / "a").is_dir()
        images.layers.release(layer.chain_id)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "root"]
    assert os.listdir(outside) == ["keep"]


def test_symlinks_resolve_inside_the_layer(images: Images, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tar = make_tar(
        ("abs", "sym", str(outside).encode()),  # absolute: means <layer>/<outside>
        ("abs/escape", "reg", b"1"),
        ("rel", "sym", b"../../../../../.."),  # climbs no higher than the layer root
        ("rel/escape2", "reg", b"2"),
        ("/etc/absolute", "reg", b"3"),  # an absolute name lands inside too
        ("dev/sda", "chr", b""),  # device nodes are never created
        ("pipe", "fifo", b""),
    )
    layer = images.layers.register(io.BytesIO(tar), None)
    root = images.driver.diff_dir(layer.cache_id)
    assert os.listdir(outside) == []
    assert (root / str(outside).lstrip("/") / "escape").read_bytes() == b"1"
    assert (root / "escape2").read_bytes() == b"2"
    assert (root / "etc/absolute").read_bytes() == b"3"
    assert not os.path.lexists(root / "dev/sda")
    assert stat.S_ISFIFO(os.lstat(root / "pipe").st_mode)
    assert b"".join(images.layers.tar_stream(layer.chain_id)) == tar


def test_regenerated_tars_are_byte_identical(images: Images) -> None:
    long_name = "deep/" + "x" * 150 + "/file"
    for tar in (
        rootfs_tar(),
        make_tar(("a", "dir", b""), (long_name, "reg", b"payload" * 1000),
                 ("a/link", "sym", b"../b"), ("a/hard", "lnk", long_name.encode())),
        make_tar(("p", "dir", b""), ("p/" + "y" * 120, "reg", b"pax"), ("p/é", "reg", b"u"),
                 fmt=tarfile.PAX_FORMAT),
        # A name given twice, a file deleted by its own layer, and padding after the end.
        make_tar(("f", "reg", b"first"), ("f", "reg", b"second"), ("d", "dir", b""),
                 ("d/x", "reg", b"gone"), (".wh.d", "reg", b"")) + bytes(4096),
    ):  # fmt: skip
        layer = images.layers.register(io.BytesIO(tar), None)
        assert layer.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
        assert layer.tar_size == len(tar)
        assert b"".join(images.layers.tar_stream(layer.chain_id)) == tar
        images.layers.release(layer.chain_id)


def test_changed_layer_content_is_detected(images: Images) -> None:
    tar = make_tar(("f", "reg", b"original"), ("g", "reg", b"other"))
    layer = images.layers.register(io.BytesIO(tar), None)
    root = images.driver.diff_dir(layer.cache_id)
    (root / "f").write_bytes(b"tampered")
    with pytest.raises(LayerError, match="does not match"):
        b"".join(images.layers.tar_stream(layer.chain_id))
    (root / "f").unlink()
    (root / "f").symlink_to("/etc/passwd")  # save must not read the host's files
    with pytest.raises(LayerError, match="changed on disk"):
        b"".join(images.layers.tar_stream(layer.chain_id))


def test_whiteouts(images: Images) -> None:
    base = images.layers.register(io.BytesIO(make_tar(
        ("d", "dir", b""), ("d/keep", "reg", b"1"), ("d/gone", "reg", b"2"),
        ("o", "dir", b""), ("o/old", "reg", b"3"),
    )), None)  # fmt: skip
    top = images.layers.register(io.BytesIO(make_tar(
        ("d/.wh.gone", "reg", b""), ("o", "dir", b""), ("o/.wh..wh..opq", "reg", b""),
        ("o/new", "reg", b"4"),
    )), base.chain_id)  # fmt: skip
    images.layers.create_rw_layer("c", top.chain_id)
    try:
        root = images.layers.mount_rw_layer("c")
        assert sorted(os.listdir(root / "d")) == ["keep"]
        assert sorted(os.listdir(root / "o")) == ["new"]
    finally:
        images.layers.unmount_rw_layer("c")
    diff = images.driver.diff_dir(top.cache_id)
    if isinstance(images.driver, Overlay2Driver):  # overlayfs's own marks
        mode = os.lstat(diff / "d/gone")
        assert stat.S_ISCHR(mode.st_mode) and mode.st_rdev == 0
        assert os.getxattr(diff / "o", "trusted.overlay.opaque") == b"y"
    images.layers.remove_rw_layer("c")


# -- import, tag, rmi -----------------------------------------------------------------


def test_import_with_changes(images: Images) -> None:
    tar = gzip.compress(make_tar(("etc", "dir", b""), ("etc/greeting", "reg", b"hi\n")))
    changes = ['CMD ["/bin/sh"]', "ENV A=b C='d e'", "WORKDIR /srv", "WORKDIR app",
               "EXPOSE 80 53/udp", "USER nobody", 'LABEL x=y "z z"=w',
               "STOPSIGNAL SIGINT"]  # fmt: skip
    image = tarexport.import_image(images, io.BytesIO(tar), ref=parse("imported:v1"),
                                   changes=changes, message="hello")  # fmt: skip
    config = image.container_config
    assert config["Cmd"] == ["/bin/sh"] and config["Env"] == ["A=b", "C=d e"]
    assert config["WorkingDir"] == "/srv/app" and config["User"] == "nobody"
    assert config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert config["Labels"] == {"x": "y", "z z": "w"} and config["StopSignal"] == "SIGINT"
    assert image.config["history"][0]["comment"] == "hello"
    assert images.get_image("imported:v1") is image
    assert len(image.diff_ids) == 1
    entry = tarexport.import_image(images, io.BytesIO(tar), changes=["ENTRYPOINT top -b"])
    assert entry.container_config["Entrypoint"] == ["/bin/sh", "-c", "top -b"]
    assert entry.config["history"][0]["comment"] == "Imported from -"
    for bad, message in (("RUN x", "RUN is not a valid change command"),
                         ("EXPOSE nope", "Invalid containerPort: nope")):  # fmt: skip
        with pytest.raises(InvalidParameter, match=message):
            tarexport.import_image(images, io.BytesIO(tar), changes=[bad])
    before = state(images)
    with pytest.raises(InvalidParameter):
        tarexport.import_image(images, io.BytesIO(b"garbage" * 100))
    assert state(images) == before


def test_rmi_untag_delete_and_conflicts(images: Images) -> None:
    usage: dict[str, list[tuple[str, bool]]] = {}
    images.usage = lambda image_id: usage.get(image_id, [])
    load(images, BUSYBOX_ARCHIVE)
    image = images.get_image("busybox")
    short = image.id[7:19]
    images.tag(image, parse("busybox:v2"))
    images.tag(image, parse("other:v1"))
    with pytest.raises(Conflict) as caught:
        images.delete(short)
    assert caught.value.message == (
        f"conflict: unable to delete {short} (must be forced) - "
        "image is referenced in multiple repositories"
    )
    assert images.delete("busybox:v2") == [{"Untagged": "busybox:v2"}]  # untag only
    assert images.delete("other:v1") == [{"Untagged": "other:v1"}]
    usage[image.id] = [("c" * 64, False)]
    with pytest.raises(Conflict) as caught:
        images.delete("busybox")
    assert caught.value.message == (
        f'conflict: unable to remove repository reference "busybox" (must force) - '
        f"container {'c' * 12} is using its referenced image {short}"
    )
    with pytest.raises(Conflict) as caught:
        images.delete(short)
    assert caught.value.message == (
        f"conflict: unable to delete {short} (must be forced) - "
        f"image is being used by stopped container {'c' * 12}"
    )
    usage[image.id] = [("d" * 64, True)]
    with pytest.raises(Conflict) as caught:
        images.delete(short, force=True)
    assert caught.value.message == (
        f"conflict: unable to delete {short} (cannot be forced) - "
        f"image is being used by running container {'d' * 12}"
    )
    # Forced untag of an image a running container uses: the tag goes, the image stays.
    assert images.delete("busybox", force=True) == [{"Untagged": "busybox:latest"}]
    assert images.get_image(short) is image
    with pytest.raises(NotFound, match=r"^No such image: busybox:latest$"):
        images.delete("busybox")
    del usage[image.id]
    records = images.delete(short)
    assert records[0] == {"Deleted": image.id} and len(records) == 2
    assert state(images) == ([], [], [], [], [])


def test_list_filters_and_prune(images: Images) -> None:
    load(images, BUSYBOX_ARCHIVE)
    labelled, _ = docker_archive([rootfs_tar()], "labelled:v1", Labels={"team": "a"})
    load(images, labelled)
    dangling, dangling_id = docker_archive([rootfs_tar()], None, Labels={"team": "b"})
    assert load(images, dangling) == [f"Loaded image ID: {dangling_id}"]

    def listed(**filters: list[str]) -> list[str]:
        return sorted(",".join(x.repo_tags) or x.image.id for x in images.list_images(filters))

    assert listed() == sorted([dangling_id, "busybox:latest", "labelled:v1"])
    assert listed(dangling=["true"]) == [dangling_id]
    assert listed(dangling=["false"]) == ["busybox:latest", "labelled:v1"]
    assert listed(label=["team"]) == sorted([dangling_id, "labelled:v1"])
    assert listed(label=["team=a"]) == ["labelled:v1"]
    assert listed(reference=["bu*"]) == ["busybox:latest"]
    assert listed(reference=["*:v1"]) == ["labelled:v1"]
    assert listed(before=["busybox"]) == listed(since=["busybox"]) == []  # same created time
    with pytest.raises(InvalidParameter, match="invalid filter 'dangling=maybe'"):
        listed(dangling=["maybe"])
    records, reclaimed = images.prune({})
    assert records == [{"Deleted": dangling_id}] and reclaimed == 0  # its layer is shared
    assert listed() == ["busybox:latest", "labelled:v1"]
    records, _ = images.prune({"dangling": ["false"], "label": ["team=a"]})
    assert {"Untagged": "labelled:v1"} in records
    assert listed() == ["busybox:latest"]


# -- read-write layers, restarts ------------------------------------------------------


def test_rw_layer_lifecycle(images: Images) -> None:
    load(images, BUSYBOX_ARCHIVE)
    image = images.get_image("busybox")
    rw = images.layers.create_rw_layer("ctr1", image.top_layer)
    with pytest.raises(Conflict):
        images.layers.create_rw_layer("ctr1", image.top_layer)
    meta = images.layers.root / "mounts" / "ctr1"
    assert (meta / "mount-id").read_text() == rw.mount_id
    assert (meta / "parent").read_text() == image.top_layer
    # One init layer per image layer, built by its first container and shared after.
    top = images.layers.get(image.top_layer or "")
    assert (meta / "init-id").read_text() == rw.init_id == f"{top.cache_id}-init"
    other = images.layers.create_rw_layer("ctr2", image.top_layer)
    assert other.init_id == rw.init_id and other.mount_id != rw.mount_id
    assert images.layers.remove_rw_layer("ctr2") == []
    assert images.driver.exists(rw.init_id)  # ctr1 still stands on it
    [mount] = images.layers.rw_mounts("ctr1")
    if isinstance(images.driver, Overlay2Driver):
        assert (mount.type, mount.source) == ("overlay", "overlay")
        assert any(o.startswith("lowerdir=") and o.count(":") == 1 for o in mount.options)
    else:
        assert (mount.type, mount.options) == ("bind", ("rbind", "rw"))
    root = images.layers.mount_rw_layer("ctr1")
    try:
        assert os.readlink(root / "bin/sh") == "/bin/busybox"
        for made in ("proc", "sys", "dev/pts", "dev/shm", ".dockerenv", "etc/hosts"):
            assert os.path.lexists(root / made), made
        assert os.readlink(root / "etc/mtab") == "/proc/mounts"
        (root / "tmp/written").write_bytes(b"x" * 1000)
        (root / "etc/passwd").unlink()
    finally:
        images.layers.unmount_rw_layer("ctr1")
    assert our_mounts(images.driver.home) == []
    assert images.layers.rw_layer_size("ctr1") >= 1000
    # The image cannot lose its layers while the container has them, even `rmi -f`.
    images.usage = lambda image_id: [("ctr1" + "0" * 60, False)] if image_id == image.id else []
    with pytest.raises(Conflict):
        images.delete("busybox")
    assert images.delete("busybox", force=True) == [
        {"Untagged": "busybox:latest"},
        {"Deleted": image.id},
    ]
    assert images.layers.exists(image.top_layer or "")
    removed = images.layers.remove_rw_layer("ctr1")
    assert [layer.chain_id for layer in removed] == [image.top_layer]
    assert state(images) == ([], [], [], [], [])  # the init layer went with its layer
    assert os.listdir(images.layers.root / "mounts") == []


def test_restart_keeps_state_and_sweeps_leftovers(images: Images, tmp_path: Path) -> None:
    load(images, BUSYBOX_ARCHIVE)
    rw = images.layers.create_rw_layer("ctr", images.get_image("busybox").top_layer)
    orphan = images.layers.register(io.BytesIO(make_tar(("x", "reg", b"1"))), None)
    images.driver.create("crashed-mid-write", None)  # a driver dir no layer names
    # An init layer whose build a crash cut short: its layer's metadata never named it.
    images.driver.create(f"{orphan.cache_id}-init", orphan.cache_id)
    before = state(images)
    restarted = Images(tmp_path / "root", type(images.driver)(images.driver.home))
    after = state(restarted)
    assert after[0] == before[0] and after[1] == before[1]
    assert orphan.chain_id not in after[2]  # nothing held it
    assert "crashed-mid-write" not in after[3]
    assert f"{orphan.cache_id}-init" not in after[3]
    assert rw.init_id in after[3]  # the built one stays, and is shared on
    assert [rw.name for rw in restarted.layers.rw_layers()] == ["ctr"]
    assert restarted.layers.create_rw_layer("ctr2", rw.parent).init_id == rw.init_id
    assert restarted.get_image("busybox").id == BUSYBOX_ID


def test_layer_store_refcounts(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layerdb", VfsDriver(tmp_path / "vfs"))
    tar = make_tar(("a", "reg", b"1"))
    first = store.register(io.BytesIO(tar), None)
    second = store.register(io.BytesIO(tar), None)  # the same layer, shared
    assert first == second and store.refcount(first.chain_id) == 2
    child = store.register(io.BytesIO(make_tar(("b", "reg", b"2"))), first.chain_id)
    assert store.release(first.chain_id) == [] and store.release(first.chain_id) == []
    assert [layer.chain_id for layer in store.release(child.chain_id)] == [
        child.chain_id, first.chain_id,
    ]  # fmt: skip
    assert store.layers() == [] and os.listdir(tmp_path / "vfs" / "dir") == []


@NO_OVERLAY
def test_overlay2_layout_and_deep_chains(tmp_path: Path) -> None:
    """dockerd's layout (diff, link, lower, l/ links), and a chain too deep for absolute
    lowerdir paths in one page (mounted with relative ones from the driver's home)."""
    driver = Overlay2Driver(tmp_path / "overlay2")
    store = LayerStore(tmp_path / "layerdb", driver)
    parent = None
    try:
        for index in range(70):
            tar = make_tar((f"f{index}", "reg", str(index).encode()))
            layer = store.register(io.BytesIO(tar), parent.chain_id if parent else None)
            if parent is not None:
                store.release(parent.chain_id)  # the child holds it now
            parent = layer
        assert parent is not None
        top = tmp_path / "overlay2" / parent.cache_id
        link = (top / "link").read_text()
        assert len(link) == 26 and os.readlink(tmp_path / "overlay2/l" / link) == (
            f"../{parent.cache_id}/diff"
        )
        lowers = (top / "lower").read_text().split(":")
        assert len(lowers) == 69 and all(lower.startswith("l/") for lower in lowers)
        store.create_rw_layer("deep", parent.chain_id)
        [mount] = store.rw_mounts("deep")
        assert len(",".join(mount.options)) > 4096  # containerd compacts it itself
        root = store.mount_rw_layer("deep")
        try:
            assert (root / "f0").read_text() == "0" and (root / "f69").read_text() == "69"
        finally:
            store.unmount_rw_layer("deep")
        assert our_mounts(tmp_path) == []
        store.remove_rw_layer("deep")
        store.release(parent.chain_id)
        assert driver.ids() == set() and os.listdir(tmp_path / "overlay2/l") == []
    finally:
        driver.cleanup()
        for point in reversed(our_mounts(tmp_path)):
            unmount(point)
