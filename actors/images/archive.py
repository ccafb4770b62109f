"""`docker load`, `docker save` and `docker import`: tar archives in and out of the stores.

All synchronous (the actor runs them in threads). Loading is all-or-nothing: archives are
unpacked into a scratch directory, every layer is checked against the DiffIDs its config
promises, and only then are images and tags recorded; layers made for a failed load are
removed again.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shlex
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from actors.images.layers import LayerStore
from actors.images.reference import Reference, ReferenceStore, parse
from actors.images.store import Image, ImageStore
from actors.images.tarstream import LayerError, open_maybe_gzip
from kernel.errors import InvalidParameter

Progress = Callable[[str], None]


class ArchiveError(InvalidParameter):
    pass


def _safe_member_path(scratch: Path, name: str) -> Path:
    cleaned = Path("/", name).resolve().relative_to("/")
    return scratch / cleaned


def unpack(source: BinaryIO, scratch: Path) -> None:
    """Unpack the outer archive (plain or gzip) into `scratch`, regular files only."""
    links: list[tuple[Path, str, bool]] = []
    try:
        with tarfile.open(fileobj=source, mode="r|*") as archive:
            for member in archive:
                target = _safe_member_path(scratch, member.name)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    content = archive.extractfile(member)
                    assert content is not None
                    with open(target, "wb") as out:
                        shutil.copyfileobj(content, out, 1 << 20)
                elif member.issym() or member.islnk():
                    links.append((target, member.linkname, member.islnk()))
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile, ValueError) as exc:
        raise ArchiveError(f"invalid archive: {exc or 'unexpected EOF'}") from None
    root = scratch.resolve()
    for target, linkname, hard in links:  # OCI layouts may link blobs: copy them in place
        base = root if hard or linkname.startswith("/") else target.parent.resolve()
        source_path = (base / linkname.lstrip("/")).resolve()
        if source_path.is_relative_to(root) and source_path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source_path, target)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArchiveError(f"invalid archive: {what} not found") from None
    except ValueError as exc:
        raise ArchiveError(f"invalid archive: {what}: {exc}") from None


def _manifests(scratch: Path) -> list[tuple[Path, list[Path], list[str]]]:
    """(config path, layer paths, tags) for each image, from docker-archive or OCI layout."""
    if (scratch / "manifest.json").exists():
        entries = _read_json(scratch / "manifest.json", "manifest.json")
        if not isinstance(entries, list):
            raise ArchiveError("invalid archive: manifest.json is not a list")
        return [
            (
                _safe_member_path(scratch, e["Config"]),
                [_safe_member_path(scratch, layer) for layer in e.get("Layers") or []],
                list(e.get("RepoTags") or []),
            )
            for e in entries
        ]
    if (scratch / "index.json").exists():
        return _oci_manifests(scratch)
    raise ArchiveError("invalid archive: it contains neither manifest.json nor index.json")


def _blob(scratch: Path, digest: str) -> Path:
    algorithm, _, hex_digest = digest.partition(":")
    return _safe_member_path(scratch, f"blobs/{algorithm}/{hex_digest}")


def _oci_manifests(scratch: Path) -> list[tuple[Path, list[Path], list[str]]]:
    found = []
    pending = list(_read_json(scratch / "index.json", "index.json").get("manifests") or [])
    while pending:
        descriptor = pending.pop(0)
        document = _read_json(_blob(scratch, descriptor["digest"]), descriptor["digest"])
        if "manifests" in document:  # a nested index: pick linux/amd64 or the first
            choices = document["manifests"]
            best = [m for m in choices if (m.get("platform") or {}).get("architecture") == "amd64"]
            pending.append((best or choices)[0] | {"annotations": descriptor.get("annotations")})
            continue
        annotations = descriptor.get("annotations") or {}
        name = annotations.get("io.containerd.image.name") or ""
        ref_name = annotations.get("org.opencontainers.image.ref.name") or ""
        tags = [name] if name else ([ref_name] if ref_name and ":" in ref_name else [])
        found.append(
            (
                _blob(scratch, document["config"]["digest"]),
                [_blob(scratch, layer["digest"]) for layer in document.get("layers") or []],
                tags,
            )
        )
    return found


class Loader:
    def __init__(self, layers: LayerStore, images: ImageStore, refs: ReferenceStore) -> None:
        self.layers = layers
        self.images = images
        self.refs = refs

    def load(self, source: BinaryIO, scratch_root: Path, progress: Progress) -> list[str]:
        """Load every image of the archive; return the messages `docker load` prints."""
        with tempfile.TemporaryDirectory(dir=scratch_root, prefix="load-") as tmp:
            scratch = Path(tmp)
            unpack(source, scratch)
            manifests = _manifests(scratch)
            created: list[str] = []
            try:
                loaded = [self._load_one(scratch, m, created, progress) for m in manifests]
            except BaseException:
                in_use = self._chains_in_use()
                for chain in reversed(created):
                    if chain not in in_use:
                        self.layers.remove(chain)
                raise
        messages = []
        for image, tags in loaded:
            self.images.add(image.raw)
            for tag in tags:
                ref = parse(tag)
                previous = self.refs.add(ref, image.id)
                if previous is not None:
                    messages.append(
                        f"The image {ref.familiar()} already exists, renaming the old one with "
                        f"ID {previous} to empty string"
                    )
                messages.append(f"Loaded image: {ref.familiar()}")
                self.images.set_last_tag_time(image.id)
            if not tags:
                messages.append(f"Loaded image ID: {image.id}")
        return messages

    def _load_one(
        self,
        scratch: Path,
        manifest: tuple[Path, list[Path], list[str]],
        created: list[str],
        progress: Progress,
    ) -> tuple[Image, list[str]]:
        config_path, layer_paths, tags = manifest
        raw = config_path.read_bytes() if config_path.exists() else b""
        if not raw:
            raise ArchiveError(f"invalid archive: image config {config_path.name} not found")
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise ArchiveError(f"invalid image config: {exc}") from None
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        if len(diff_ids) != len(layer_paths):
            raise ArchiveError(
                f"invalid manifest, layers length mismatch: expected {len(diff_ids)}, "
                f"got {len(layer_paths)}"
            )
        for tag in tags:
            parse(tag)  # refuse bad tags before anything is registered
        parent: str | None = None
        for index, (expected, path) in enumerate(zip(diff_ids, layer_paths, strict=True)):
            progress(f"Loading layer {index + 1}/{len(layer_paths)}")
            chain = _expected_chain(parent, expected)
            if not self.layers.exists(chain):
                if not path.exists():
                    raise ArchiveError(f"invalid archive: layer {path.name} not found")
                with open(path, "rb", buffering=1 << 20) as raw_file:
                    try:
                        layer = self.layers.register(open_maybe_gzip(raw_file), parent)
                    except (LayerError, OSError, EOFError, gzip.BadGzipFile) as exc:
                        raise ArchiveError(f"invalid layer {index + 1}: {exc}") from None
                created.append(layer.chain_id)
                if layer.diff_id != expected:
                    raise ArchiveError(
                        f"invalid diffID for layer {index}: calculated {layer.diff_id}, "
                        f"expected {expected}"
                    )
            parent = chain
        image = Image(id="sha256:" + hashlib.sha256(raw).hexdigest(), raw=raw, config=config)
        return image, tags

    def _chains_in_use(self) -> set[str]:
        used: set[str] = set()
        for image in self.images.all():
            parent: str | None = None
            for diff_id in image.diff_ids:
                parent = _expected_chain(parent, diff_id)
                used.add(parent)
        return used | self.layers.rw_parents()


def _expected_chain(parent: str | None, diff_id: str) -> str:
    from actors.images.layers import chain_id

    return chain_id(parent, diff_id)


class _IterReader(io.RawIOBase):
    """A read()-able view of an iterator of byte chunks (for tarfile.addfile)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def save(
    layers: LayerStore,
    images: list[tuple[Image, list[Reference]]],
    out: BinaryIO,
) -> None:
    """Write a docker-archive (manifest.json, config blobs, each layer tar once)."""
    manifest = []
    written: set[str] = set()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:

        def add(name: str, size: int, data: BinaryIO) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, 0o644, 0
            archive.addfile(info, data)

        for image, refs in images:
            config_name = f"blobs/sha256/{image.id.removeprefix('sha256:')}"
            if config_name not in written:
                add(config_name, len(image.raw), io.BytesIO(image.raw))
                written.add(config_name)
            layer_names = []
            parent: str | None = None
            for diff_id in image.diff_ids:
                parent = _expected_chain(parent, diff_id)
                name = f"blobs/sha256/{diff_id.removeprefix('sha256:')}"
                if name not in written:
                    layer = layers.get(parent)
                    content = io.BufferedReader(_IterReader(layers.tar_stream(parent)), 1 << 20)
                    add(name, layer.tar_size, content)  # type: ignore[arg-type]
                    written.add(name)
                layer_names.append(name)
            manifest.append(
                {
                    "Config": config_name,
                    "RepoTags": [r.familiar() for r in refs if r.tag] or None,
                    "Layers": layer_names,
                }
            )
        body = json.dumps(manifest).encode()
        add("manifest.json", len(body), io.BytesIO(body))


# -- import -----------------------------------------------------------------------------

_CHANGE_COMMANDS = {"CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL",
                    "USER", "VOLUME", "WORKDIR"}  # fmt: skip


def _json_or_shell(rest: str) -> list[str]:
    try:
        value = json.loads(rest)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    except ValueError:
        pass
    return ["/bin/sh", "-c", rest]


def _pairs(rest: str) -> list[tuple[str, str]]:
    words = shlex.split(rest)
    if len(words) >= 2 and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]  # legacy `ENV key value`
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise InvalidParameter(f"invalid change: {rest!r} needs key=value")
        pairs.append((key, value))
    return pairs


def apply_changes(config: dict[str, Any], changes: Iterable[str]) -> None:
    """The Dockerfile instructions `docker import --change` and `docker commit` accept."""
    for change in changes:
        command, _, rest = change.strip().partition(" ")
        command, rest = command.upper(), rest.strip()
        if command not in _CHANGE_COMMANDS:
            raise InvalidParameter(f"{command} is not a valid change command")
        if command == "CMD":
            config["Cmd"] = _json_or_shell(rest)
        elif command == "ENTRYPOINT":
            config["Entrypoint"] = _json_or_shell(rest)
        elif command == "ENV":
            env = [e for e in config.get("Env") or []]
            for key, value in _pairs(rest):
                env = [e for e in env if e.split("=", 1)[0] != key] + [f"{key}={value}"]
            config["Env"] = env
        elif command == "LABEL":
            config["Labels"] = {**(config.get("Labels") or {}), **dict(_pairs(rest))}
        elif command == "EXPOSE":
            ports = config.get("ExposedPorts") or {}
            for port in rest.split():
                ports[port if "/" in port else f"{port}/tcp"] = {}
            config["ExposedPorts"] = ports
        elif command == "VOLUME":
            volumes = config.get("Volumes") or {}
            for path in _json_or_shell(rest) if rest.startswith("[") else rest.split():
                volumes[path] = {}
            config["Volumes"] = volumes
        elif command == "WORKDIR":
            config["WorkingDir"] = rest
        elif command == "USER":
            config["User"] = rest
        elif command == "STOPSIGNAL":
            config["StopSignal"] = rest
        elif command == "ONBUILD":
            config["OnBuild"] = [*(config.get("OnBuild") or []), rest]


def now_rfc3339() -> str:
    ns = time.time_ns()
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
    return f"{seconds}.{ns % 1_000_000_000:09d}Z"


def import_layer(
    layers: LayerStore,
    images: ImageStore,
    source: BinaryIO,
    *,
    changes: list[str],
    message: str,
    architecture: str,
) -> Image:
    config: dict[str, Any] = {}
    apply_changes(config, changes)
    try:
        layer = layers.register(open_maybe_gzip(source), None)
    except (LayerError, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"invalid tar: {exc}") from None
    created = now_rfc3339()
    document = {
        "architecture": architecture,
        "config": config,
        "created": created,
        "history": [{"created": created, "comment": message or "Imported from -"}],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    }
    return images.add(json.dumps(document, separators=(",", ":")).encode())
