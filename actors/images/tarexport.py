"""`docker load`, `docker save` and `docker import`: tar archives in and out of the stores.

Load accepts `docker save` archives (manifest.json, old and v25+ layouts) and OCI image
layouts (index.json), plain or compressed, with plain or compressed layers inside. It is
all-or-nothing: the archive is unpacked into a scratch directory, every layer is checked
against the DiffID its config promises, and tags are set only once every image is in; on
any error the images and layers it made are removed again. Save writes the v25+ layout
(an OCI layout plus manifest.json), streaming each layer tar once, rebuilt byte for byte.

Synchronous; the images actor runs these in worker threads.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import platform
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from actors.images.changes import apply_changes
from actors.images.layers import Layer, chain_id
from actors.images.reference import Reference, parse_any, parse_named
from actors.images.store import Image, Images, short_id, validate_config
from actors.images.tarstream import (
    BLOCK,
    CHUNK,
    LayerError,
    NoWhiteouts,
    extract,
    scoped_path,
)
from kernel.clock import rfc3339_nano
from kernel.errors import InvalidParameter, NotFound

GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
    platform.machine(), platform.machine()
)
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
_DECODE_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


class ArchiveError(InvalidParameter):
    """The archive is not one we can load (its text is what `docker load` prints)."""


@dataclass(frozen=True)
class LoadProgress:
    """One "Loading layer" progress bar update, as dockerd's JSON progress messages."""

    id: str  # the layer's short DiffID
    current: int
    total: int
    status: str = "Loading layer"


LoadEvent = LoadProgress | str  # a str is a line `docker load` prints
Progress = Callable[[LoadEvent], None]


def _text(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "unexpected EOF"
    return str(exc) or type(exc).__name__


def _ignore(event: LoadEvent) -> None:
    pass


def decompressed(source: BinaryIO) -> BinaryIO:
    """Plain, gzip, bzip2 or xz, told by the first bytes (dockerd's DecompressStream)."""
    buffered = cast(
        io.BufferedReader,
        source if hasattr(source, "peek") else io.BufferedReader(source, CHUNK),  # type: ignore[arg-type]
    )
    magic = buffered.peek(6)[:6]
    if magic.startswith(b"\x1f\x8b"):
        return cast(BinaryIO, gzip.GzipFile(fileobj=buffered, mode="rb"))
    if magic.startswith(b"BZh"):
        return cast(BinaryIO, bz2.BZ2File(buffered))
    if magic.startswith(b"\xfd7zXZ\x00"):
        return cast(BinaryIO, lzma.LZMAFile(buffered))
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        raise ArchiveError("zstd-compressed archives are not supported")
    return cast(BinaryIO, buffered)


class _Counting(io.RawIOBase):
    """Reports how far a layer file has been read (the progress bar)."""

    def __init__(self, raw: BinaryIO, report: Callable[[int], None]) -> None:
        self._raw = raw
        self._report = report
        self._done = 0
        self._reported = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        self._done += n or 0
        if not n or self._done - self._reported >= CHUNK:
            self._reported = self._done
            self._report(self._done)
        return int(n or 0)


# -- load -----------------------------------------------------------------------------


@dataclass
class _Entry:
    config: str  # paths inside the archive
    layers: list[str]
    tags: list[str] = field(default_factory=list)
    parent: str = ""


def _read_json(scratch: Path, name: str) -> Any:
    try:
        return json.loads(scoped_path(scratch, name).read_bytes())
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, LayerError):
        raise ArchiveError(f"invalid archive: {name} not found") from None
    except ValueError as exc:
        raise ArchiveError(f"invalid archive: {name}: {exc}") from None


def _docker_entries(scratch: Path) -> list[_Entry]:
    manifest = _read_json(scratch, "manifest.json")
    if manifest is None:
        raise ArchiveError("invalid manifest, manifest cannot be null (but can be [])")
    try:
        return [
            _Entry(
                config=str(item["Config"]),
                layers=[str(layer) for layer in item.get("Layers") or []],
                tags=[str(tag) for tag in item.get("RepoTags") or []],
                parent=str(item.get("Parent") or ""),
            )
            for item in manifest
        ]
    except (TypeError, KeyError, AttributeError):
        raise ArchiveError("invalid archive: manifest.json is malformed") from None


def _blob(digest: str) -> str:
    algorithm, sep, encoded = str(digest).partition(":")
    if not sep or "/" in algorithm or "/" in encoded:
        raise ArchiveError(f"invalid archive: bad digest {digest!r}")
    return f"blobs/{algorithm}/{encoded}"


def _oci_entries(scratch: Path) -> list[_Entry]:
    """Each image an OCI layout's index.json names (nested indexes: this platform's)."""
    entries: dict[str, _Entry] = {}
    pending: list[tuple[dict[str, Any], dict[str, str]]] = [
        (d, d.get("annotations") or {})
        for d in _read_json(scratch, "index.json").get("manifests") or []
    ]
    try:
        while pending:
            descriptor, annotations = pending.pop(0)
            document = _read_json(scratch, _blob(descriptor["digest"]))
            media = document.get("mediaType") or descriptor.get("mediaType") or ""
            if "manifests" in document or media in (MEDIA_INDEX, DOCKER_MANIFEST_LIST):
                choices = document.get("manifests") or []
                ours = [
                    m for m in choices
                    if (m.get("platform") or {}).get("os", "linux") == "linux"
                    and (m.get("platform") or {}).get("architecture", GOARCH) == GOARCH
                ]  # fmt: skip
                if not ours:
                    raise ArchiveError(f"no image for linux/{GOARCH} in the archive")
                pending.append((ours[0], annotations))
                continue
            entry = entries.setdefault(
                descriptor["digest"],
                _Entry(
                    config=_blob(document["config"]["digest"]),
                    layers=[_blob(layer["digest"]) for layer in document.get("layers") or []],
                ),
            )
            name = annotations.get(ANNOTATION_IMAGE_NAME) or annotations.get(ANNOTATION_REF_NAME)
            if name and ("/" in name or ":" in name) and name not in entry.tags:
                entry.tags.append(name)  # a bare ref.name ("latest") names no repository
    except (TypeError, KeyError, AttributeError):
        raise ArchiveError("invalid archive: index.json or a manifest is malformed") from None
    return list(entries.values())


class _Load:
    def __init__(self, images: Images, scratch: Path, progress: Progress) -> None:
        self.images = images
        self.scratch = scratch
        self.progress = progress
        self.held: list[str] = []  # layer references this load holds until it ends
        self.created: list[Image] = []  # images this load added

    def run(self, entries: list[_Entry]) -> list[str]:
        try:
            loaded = [self._image(entry) for entry in entries]
        except BaseException:
            for image in self.created:
                self.images.store.delete(image.id)
            raise
        finally:
            for chain in self.held:
                self.images.layers.release(chain)
        messages: list[str] = []

        def say(line: str) -> None:
            messages.append(line)
            self.progress(line)

        ids = {image.id for image, _, _ in loaded}
        for image, tags, parent in loaded:
            for ref in tags:
                previous = self.images.refs.get(ref)
                if previous is not None and previous != image.id:
                    say(f"The image {ref.familiar()} already exists, renaming the old one "
                        f"with ID {previous} to empty string")  # fmt: skip
                self.images.refs.add(ref, image.id)
                say(f"Loaded image: {ref.familiar()}")
            if parent in ids and parent != image.id:
                self.images.store.set_parent(image.id, parent)
        if not any(tags for _, tags, _ in loaded):
            for image, _, _ in loaded:
                say(f"Loaded image ID: {image.id}")
        return messages

    def _image(self, entry: _Entry) -> tuple[Image, list[Reference], str]:
        try:
            raw = scoped_path(self.scratch, entry.config).read_bytes()
        except (OSError, LayerError):
            raise ArchiveError(f"invalid archive: image config {entry.config} not found") from None
        config = validate_config(raw)
        diff_ids: list[str] = config["rootfs"].get("diff_ids") or []
        if len(diff_ids) != len(entry.layers):
            raise ArchiveError(
                f"invalid manifest, layers length mismatch: expected {len(entry.layers)}, "
                f"got {len(diff_ids)}"
            )
        tags = []
        for text in entry.tags:
            ref = parse_named(text)
            if not ref.tag:
                raise ArchiveError(f'invalid tag "{text}"')
            tags.append(ref)
        parent: str | None = None
        for index, (diff_id, name) in enumerate(zip(diff_ids, entry.layers, strict=True)):
            chain = chain_id(parent, diff_id)
            try:
                self.images.layers.acquire(chain)
                self.held.append(chain)
            except NotFound:
                layer = self._register(name, parent, diff_id)
                self.held.append(layer.chain_id)
                if layer.diff_id != diff_id:
                    raise ArchiveError(
                        f'invalid diffID for layer {index}: expected "{diff_id}", '
                        f'got "{layer.diff_id}"'
                    ) from None
            parent = chain
        existed = self.images.store.find("sha256:" + hashlib.sha256(raw).hexdigest())
        image = self.images.store.create(raw)
        if existed is None:
            self.created.append(image)
        return image, tags, entry.parent

    def _register(self, name: str, parent: str | None, diff_id: str) -> Layer:
        try:
            path = scoped_path(self.scratch, name)
            size = path.stat().st_size
            raw = open(path, "rb", buffering=0)
        except (OSError, LayerError):
            raise ArchiveError(f"invalid archive: layer {name} not found") from None
        layer_id = short_id(diff_id)
        with raw:
            counted = _Counting(raw, lambda n: self.progress(LoadProgress(layer_id, n, size)))
            try:
                return self.images.layers.register(
                    decompressed(io.BufferedReader(counted, CHUNK)), parent
                )
            except (*_DECODE_ERRORS, LayerError) as exc:
                raise ArchiveError(f"invalid layer {name}: {_text(exc)}") from None


def load(
    images: Images, source: BinaryIO, scratch: Path, progress: Progress = _ignore
) -> list[str]:
    """Load every image of a `docker save` or OCI archive read from `source`; returns the
    lines `docker load` prints (also passed to `progress`, between the progress updates)."""
    scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="load-") as tmp:
        root = Path(tmp)
        try:
            extract(decompressed(source), root, NoWhiteouts(), hashing=False)
        except (*_DECODE_ERRORS, LayerError) as exc:
            raise ArchiveError(f"invalid archive: {_text(exc)}") from None
        if (root / "manifest.json").exists():
            entries = _docker_entries(root)
        elif (root / "index.json").exists():
            entries = _oci_entries(root)
        else:
            raise ArchiveError("invalid archive: it holds neither manifest.json nor index.json")
        return _Load(images, root, progress).run(entries)


# -- save -----------------------------------------------------------------------------


@dataclass
class SaveTarget:
    image: Image
    refs: list[Reference] = field(default_factory=list)  # the tags the archive names


def save_targets(images: Images, names: Sequence[str]) -> list[SaveTarget]:
    """Which images and tags `docker save NAMES` writes (dockerd's parseNames): a bare
    repository name means all its tags; an ID means the image without tags."""
    targets: dict[str, SaveTarget] = {}

    def add(image: Image, ref: Reference | None) -> None:
        target = targets.setdefault(image.id, SaveTarget(image))
        if ref is not None and not ref.digest and ref not in target.refs:
            target.refs.append(ref)

    for name in names:
        ref = parse_any(name)
        if isinstance(ref, str):
            add(images.store.get(ref), None)
        elif ref.familiar_name == "sha256" or ref.name_only:
            tagged = images.refs.by_name(ref.name) if ref.name_only else []
            for tag_ref, image_id in tagged:
                add(images.store.get(image_id), tag_ref)
            if not tagged:
                image = images.store.search(name)
                if image is None:
                    raise NotFound(f"No such image: {name}")
                add(image, None)
        else:
            found = images.refs.get(ref)
            if found is None:
                raise NotFound("reference does not exist")
            add(images.store.get(found), ref)
    return list(targets.values())


class _TarWriter:
    """A tar stream written as it goes (Go's archive/tar layout: no record padding)."""

    def __init__(self, out: BinaryIO, mtime: int = 0) -> None:
        self.out = out
        self.mtime = mtime

    def _header(self, name: str, size: int, directory: bool = False) -> bytes:
        import tarfile

        info = tarfile.TarInfo(name)
        info.size, info.mtime = size, self.mtime
        info.mode = 0o755 if directory else 0o644
        info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")

    def directory(self, name: str) -> None:
        self.out.write(self._header(name, 0, directory=True))

    def file(self, name: str, size: int, chunks: Iterable[bytes]) -> None:
        self.out.write(self._header(name, size))
        written = 0
        for chunk in chunks:
            written += len(chunk)
            if written > size:
                raise LayerError(f"{name}: more bytes than promised")
            self.out.write(chunk)
        if written != size:
            raise LayerError(f"{name}: {written} bytes instead of {size}")
        self.out.write(bytes(-size % BLOCK))

    def close(self) -> None:
        self.out.write(bytes(2 * BLOCK))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def save(images: Images, targets: Sequence[SaveTarget], out: BinaryIO) -> None:
    """Write a `docker save` archive of `targets` to `out`: each layer once, byte for byte
    as loaded (so IDs and DiffIDs survive the round trip)."""
    held: list[str] = []
    try:
        for target in targets:  # keep every layer alive while we stream
            if target.image.top_layer:
                images.layers.acquire(target.image.top_layer)
                held.append(target.image.top_layer)
        _write(images, targets, _TarWriter(out))
    finally:
        for chain in held:
            images.layers.release(chain)


def _write(images: Images, targets: Sequence[SaveTarget], tar: _TarWriter) -> None:
    tar.directory("blobs/")
    tar.directory("blobs/sha256/")
    written: set[str] = set()
    manifest: list[dict[str, Any]] = []
    index: list[dict[str, Any]] = []

    def blob(digest: str, size: int, chunks: Iterable[bytes]) -> str:
        name = f"blobs/sha256/{digest.removeprefix('sha256:')}"
        if name not in written:
            tar.file(name, size, chunks)
            written.add(name)
        return name

    for target in targets:
        image = target.image
        if not image.diff_ids:
            raise InvalidParameter("empty export - not implemented")
        layers = []
        for layer in reversed(images.layers.chain(image.top_layer)):
            blob(layer.diff_id, layer.tar_size, images.layers.tar_stream(layer.chain_id))
            layers.append({"mediaType": MEDIA_LAYER, "digest": layer.diff_id,
                           "size": layer.tar_size})  # fmt: skip
        config_name = blob(image.id, len(image.raw), [image.raw])
        oci_manifest = _json({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": image.id, "size": len(image.raw)},
            "layers": layers,
        })  # fmt: skip
        manifest_digest = "sha256:" + hashlib.sha256(oci_manifest).hexdigest()
        blob(manifest_digest, len(oci_manifest), [oci_manifest])
        descriptor = {"mediaType": MEDIA_MANIFEST, "digest": manifest_digest,
                      "size": len(oci_manifest)}  # fmt: skip
        for ref in target.refs:
            index.append({**descriptor, "annotations": {
                ANNOTATION_IMAGE_NAME: str(ref), ANNOTATION_REF_NAME: ref.tag}})  # fmt: skip
        if not target.refs:
            index.append(descriptor)
        item: dict[str, Any] = {
            "Config": config_name,
            "RepoTags": [ref.familiar() for ref in target.refs] or None,
            "Layers": [f"blobs/sha256/{d.removeprefix('sha256:')}" for d in image.diff_ids],
        }
        parent = images.store.parent(image.id)
        if parent and any(t.image.id == parent for t in targets):
            item["Parent"] = parent
        manifest.append(item)
    for name, data in (
        ("index.json", _json({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": index})),
        ("manifest.json", _json(manifest)),
        ("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
    ):
        tar.file(name, len(data), [data])
    tar.close()


# -- import ---------------------------------------------------------------------------


def container_config(**fields: Any) -> dict[str, Any]:
    """An image's container config with every field dockerd writes, in its order."""
    config: dict[str, Any] = {
        "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False,
        "AttachStdout": False, "AttachStderr": False, "Tty": False, "OpenStdin": False,
        "StdinOnce": False, "Env": None, "Cmd": None, "Image": "", "Volumes": None,
        "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": None,
    }  # fmt: skip
    config.update(fields)
    return config


def import_image(
    images: Images,
    source: BinaryIO,
    *,
    ref: Reference | None = None,
    changes: Sequence[str] = (),
    message: str = "",
    source_name: str = "-",
    architecture: str = GOARCH,
) -> Image:
    """`docker import`: one layer from a (maybe compressed) tar, a config from `changes`."""
    config = apply_changes(container_config(), changes)  # bad changes fail before reading
    try:
        layer = images.layers.register(decompressed(source), None)
    except _DECODE_ERRORS as exc:
        raise ArchiveError(f"invalid tar: {exc}") from None
    try:
        created = rfc3339_nano(time.time_ns())
        comment = message or f"Imported from {source_name}"
        document = {
            "comment": comment,
            "created": created,
            "config": config,
            "architecture": architecture,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            "history": [{"created": created, "comment": comment}],
        }
        image = images.create_image(_json(document))
    finally:
        images.layers.release(layer.chain_id)
    if ref is not None:
        images.tag(image, ref)
    return image
