"""The layer store (`image/<driver>/layerdb`), laid out as dockerd's:

    sha256/<chainID>/   diff (DiffID), size, cache-id (the graph driver's ID), parent
                        (ChainID), tar-size, tar-split.msgpack.gz (see tarstream), and
                        init-id once a container has used the layer (our addition)
    mounts/<container>/ mount-id, init-id, parent: a container's read-write layer

Layers are shared and reference-counted in memory: an image holds its top layer, a layer
holds its parent, a read-write layer holds the image's top layer, and a caller holds what
`register` or `acquire` returned until it calls `release`. The last release deletes.
Metadata directories are staged and renamed, so a crash leaves a whole layer or none, and
what a crash leaves behind in the driver's directory is swept away at the next start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from actors.images.graphdriver import GraphDriver, Mount
from actors.images.tarstream import decode_records, encode_records, regenerate
from kernel.errors import Conflict, InvalidParameter, NotFound
from kernel.fsutil import atomic_write, fsync_dir, remove_dir, write_dir

log = logging.getLogger("pydockerd.images")

TAR_SPLIT = "tar-split.msgpack.gz"
INIT_ID = "init-id"  # in a layer's metadata: the init layer containers over it share


def chain_id(parent: str | None, diff_id: str) -> str:
    """OCI ChainID: the first layer's is its DiffID, then sha256(parent + " " + DiffID)."""
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    chains: list[str] = []
    for diff_id in diff_ids:
        chains.append(chain_id(chains[-1] if chains else None, diff_id))
    return chains


@dataclass(frozen=True)
class Layer:
    chain_id: str
    diff_id: str
    parent: str | None  # ChainID
    cache_id: str
    size: int
    tar_size: int


@dataclass(frozen=True)
class RWLayer:
    name: str  # the container ID
    mount_id: str
    init_id: str
    parent: str | None  # ChainID of the image's top layer


# What must exist in every container's root before it starts, so that runc finds a target
# for each mount even in a read-only root (dockerd's initlayer).
INIT_ENTRIES = (
    ("dev/pts", "dir"),
    ("dev/shm", "dir"),
    ("proc", "dir"),
    ("sys", "dir"),
    (".dockerenv", "file"),
    ("etc/resolv.conf", "file"),
    ("etc/hosts", "file"),
    ("etc/hostname", "file"),
    ("dev/console", "file"),
    ("etc/mtab", "/proc/mounts"),
)


def setup_init_layer(root: Path) -> None:
    for rel, kind in INIT_ENTRIES:
        # Unlink what stands on the way (files, symlinks; never directories), so nothing
        # below can lead out of the root.
        prefix = root
        for part in rel.split("/"):
            prefix = prefix / part
            try:
                os.unlink(prefix)
            except (IsADirectoryError, FileNotFoundError, NotADirectoryError):
                pass
        path = root / rel
        if os.path.lexists(path):
            continue
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if kind == "dir":
            path.mkdir(mode=0o755)
        elif kind == "file":
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o755))
        else:
            os.symlink(kind, path)


def _init_id(below: str) -> str:
    """The driver ID of an init layer: a container's own (over its mount ID, as dockerd
    names it) or the one shared over an image layer (over its cache ID)."""
    return f"{below}-init"


class LayerStore:
    def __init__(self, root: Path, driver: GraphDriver) -> None:
        self.root = root
        self.driver = driver
        self._layers_dir = root / "sha256"
        self._mounts_dir = root / "mounts"
        self._tmp = root / "tmp"
        for directory in (self._layers_dir, self._mounts_dir, self._tmp):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        remove_dir(root, self._tmp)  # leftovers of a crash mid-write
        self._tmp.mkdir(mode=0o700)
        self._lock = threading.RLock()
        self._layers: dict[str, Layer] = {}
        self._refs: dict[str, int] = {}
        self._rw: dict[str, RWLayer] = {}
        self._inits: dict[str, str] = {}  # ChainID -> its shared init layer's driver ID
        self._init_lock = threading.Lock()  # one init layer built at a time
        self._load()

    # -- start-up -------------------------------------------------------------------

    def _load(self) -> None:
        found: dict[str, Layer] = {}
        known: set[str] = set()  # driver IDs some metadata names, even unreadable metadata
        for name in os.listdir(self._layers_dir):
            try:
                known.add((self._layers_dir / name / "cache-id").read_text().strip())
                if (self._layers_dir / name / INIT_ID).exists():
                    init_id = (self._layers_dir / name / INIT_ID).read_text().strip()
                    known.add(init_id)
                    self._inits["sha256:" + name] = init_id
                found["sha256:" + name] = self._read_layer("sha256:" + name)
            except (OSError, ValueError) as exc:
                log.warning("layer store: ignoring layer %s: %s", name, exc)
        # Keep only layers whose whole chain is there, parents first.
        while found:
            ready = [
                layer
                for layer in found.values()
                if layer.parent is None or layer.parent in self._layers
            ]
            if not ready:
                for layer in found.values():
                    log.warning("layer store: ignoring %s: parent missing", layer.chain_id)
                break
            for layer in ready:
                del found[layer.chain_id]
                self._layers[layer.chain_id] = layer
                self._refs[layer.chain_id] = 0
                if layer.parent:
                    self._refs[layer.parent] += 1
        for name in os.listdir(self._mounts_dir):
            try:
                rw = self._read_rw(name)
            except (OSError, ValueError) as exc:
                log.warning("layer store: ignoring read-write layer %s: %s", name, exc)
                continue
            known |= {rw.mount_id, rw.init_id}
            if rw.parent is not None and rw.parent not in self._layers:
                log.warning("layer store: read-write layer %s lost its image layers", name)
                continue
            self._rw[name] = rw
            if rw.parent:
                self._refs[rw.parent] += 1
        for orphan in self.driver.ids() - known:
            log.info("layer store: removing %s/%s, left by an interrupted operation",
                     self.driver.name, orphan)  # fmt: skip
            self.driver.remove(orphan)

    def _read_layer(self, chain: str) -> Layer:
        directory = self._dir(chain)

        def read(name: str) -> str:
            return (directory / name).read_text().strip()

        parent = read("parent") if (directory / "parent").exists() else ""
        return Layer(
            chain_id=chain,
            diff_id=read("diff"),
            parent=parent or None,
            cache_id=read("cache-id"),
            size=int(read("size")),
            tar_size=int(read("tar-size")),
        )

    def _read_rw(self, name: str) -> RWLayer:
        directory = self._mounts_dir / name
        parent = (directory / "parent").read_text().strip()
        return RWLayer(
            name=name,
            mount_id=(directory / "mount-id").read_text().strip(),
            init_id=(directory / "init-id").read_text().strip(),
            parent=parent or None,
        )

    def collect_garbage(self) -> list[Layer]:
        """Delete layers nothing holds (call once the image store has taken its refs)."""
        removed: list[Layer] = []
        with self._lock:
            for chain in [c for c, n in self._refs.items() if n == 0]:
                if self._refs.get(chain) == 0:
                    self._refs[chain] = 1
                    removed += self.release(chain)
        return removed

    # -- read-only layers -------------------------------------------------------------

    def _dir(self, chain: str) -> Path:
        algorithm, _, hex_digest = chain.partition(":")
        if algorithm != "sha256" or len(hex_digest) != 64:
            raise NotFound(f"layer does not exist: {chain}")
        return self._layers_dir / hex_digest

    def get(self, chain: str) -> Layer:
        layer = self._layers.get(chain)
        if layer is None:
            raise NotFound(f"layer does not exist: {chain}")
        return layer

    def exists(self, chain: str) -> bool:
        return chain in self._layers

    def layers(self) -> list[Layer]:
        return list(self._layers.values())

    def chain(self, top: str | None) -> list[Layer]:
        """The layer and its parents, top first."""
        layers = []
        while top:
            layer = self.get(top)
            layers.append(layer)
            top = layer.parent
        return layers

    def refcount(self, chain: str) -> int:
        return self._refs.get(chain, 0)

    def acquire(self, chain: str) -> Layer:
        with self._lock:
            layer = self.get(chain)
            self._refs[chain] += 1
            return layer

    def register(self, source: BinaryIO, parent: str | None) -> Layer:
        """Extract an uncompressed layer tar on top of `parent`; the caller holds the
        returned layer (an identical layer already there is shared, not duplicated)."""
        parent_layer = self.acquire(parent) if parent else None  # kept alive meanwhile
        cache_id = secrets.token_hex(32)
        try:
            self.driver.create(cache_id, parent_layer.cache_id if parent_layer else None)
            result = self.driver.apply_diff(cache_id, source)
            chain = chain_id(parent, result.diff_id)
            layer = Layer(
                chain_id=chain,
                diff_id=result.diff_id,
                parent=parent,
                cache_id=cache_id,
                size=result.size,
                tar_size=result.tar_size,
            )
            files = {
                "diff": layer.diff_id.encode(),
                "cache-id": cache_id.encode(),
                "size": str(layer.size).encode(),
                "tar-size": str(layer.tar_size).encode(),
                TAR_SPLIT: encode_records(result.records),
            }
            if parent:
                files["parent"] = parent.encode()
            with self._lock:
                existing = self._layers.get(chain)
                if existing is None:
                    remove_dir(self._tmp, self._dir(chain))  # unreadable leftovers, if any
                    write_dir(self._tmp, self._dir(chain), files)
                    self._layers[chain] = layer
                    self._refs[chain] = 1  # the caller's; the parent's ref now belongs to it
                    return layer
                self._refs[chain] += 1
        except BaseException:
            self.driver.remove(cache_id)
            if parent:
                self.release(parent)
            raise
        # Someone registered the same layer meanwhile: share theirs, drop our copy.
        self.driver.remove(cache_id)
        if parent:
            self.release(parent)
        return existing

    def release(self, chain: str) -> list[Layer]:
        """Drop one reference; delete the layer (and parents) nothing holds any more.
        Returns the deleted layers, top first."""
        removed: list[Layer] = []
        with self._lock:
            current: str | None = chain
            while current:
                if current not in self._refs:
                    raise NotFound(f"layer does not exist: {current}")
                count = self._refs[current] - 1
                if count:
                    self._refs[current] = count
                    break
                layer = self._layers.pop(current)
                del self._refs[current]
                remove_dir(self._tmp, self._dir(current))
                self.driver.remove(layer.cache_id)
                init_id = self._inits.pop(current, None)
                if init_id is not None:
                    self.driver.remove(init_id)
                removed.append(layer)
                current = layer.parent
        return removed

    def tar_stream(self, chain: str) -> Iterator[bytes]:
        """The layer's tar, byte for byte as registered (its sha256 is the DiffID)."""
        layer = self.get(chain)
        records = decode_records((self._dir(chain) / TAR_SPLIT).read_bytes())
        return regenerate(records, self.driver.diff_dir(layer.cache_id), layer.diff_id)

    # -- containers' read-write layers ------------------------------------------------

    def create_rw_layer(self, name: str, parent: str | None) -> RWLayer:
        """A container's read-write layer over the image's top layer `parent`, with the
        init layer (mount targets every container needs) in between."""
        if not name or "/" in name or name in (".", ".."):
            raise InvalidParameter(f"invalid container ID {name!r}")
        with self._lock:
            if name in self._rw:
                raise Conflict(f"mount already exists with name {name}")
            parent_layer = self.acquire(parent) if parent else None
        mount_id = secrets.token_hex(32)
        own_init = _init_id(mount_id)
        try:
            if parent_layer is None:
                init_id = own_init
                self._make_init_layer(init_id, None)
            else:
                init_id = self._shared_init_layer(parent_layer)
            self.driver.create(mount_id, init_id)
            rw = RWLayer(name=name, mount_id=mount_id, init_id=init_id, parent=parent)
            files = {"mount-id": mount_id.encode(), "init-id": init_id.encode(),
                     "parent": (parent or "").encode()}  # fmt: skip
            with self._lock:
                if name in self._rw:
                    raise Conflict(f"mount already exists with name {name}")
                write_dir(self._tmp, self._mounts_dir / name, files)
                self._rw[name] = rw
        except BaseException:
            self.driver.remove(mount_id)
            if parent_layer is None:
                self.driver.remove(own_init)
            if parent:
                self.release(parent)
            raise
        return rw

    def _shared_init_layer(self, layer: Layer) -> str:
        """The init layer over an image layer: the first container made from it builds it
        (the build mounts it, so it is the slow part of a create), the others share it. It
        is recorded in the layer's metadata once built, and goes with the layer."""
        with self._init_lock:
            init_id = self._inits.get(layer.chain_id)
            if init_id is None:
                init_id = _init_id(layer.cache_id)
                self._make_init_layer(init_id, layer.cache_id)
                atomic_write(self._dir(layer.chain_id) / INIT_ID, init_id.encode())
                self._inits[layer.chain_id] = init_id
            return init_id

    def _make_init_layer(self, init_id: str, below: str | None) -> None:
        self.driver.create(init_id, below)
        try:
            root = self.driver.get(init_id)
            try:
                setup_init_layer(root)
            finally:
                self.driver.put(init_id)
        except BaseException:
            self.driver.remove(init_id)
            raise

    def get_rw_layer(self, name: str) -> RWLayer:
        rw = self._rw.get(name)
        if rw is None:
            raise NotFound(f"no read-write layer for container {name}")
        return rw

    def rw_layers(self) -> list[RWLayer]:
        return list(self._rw.values())

    def rw_mounts(self, name: str) -> list[Mount]:
        """The container's root filesystem as mounts for containerd (nothing is mounted)."""
        return self.driver.mounts(self.get_rw_layer(name).mount_id)

    def mount_rw_layer(self, name: str) -> Path:
        """Mount the container's root filesystem here (cp, export, commit); pair with
        `unmount_rw_layer`."""
        return self.driver.get(self.get_rw_layer(name).mount_id)

    def unmount_rw_layer(self, name: str) -> None:
        self.driver.put(self.get_rw_layer(name).mount_id)

    def rw_layer_size(self, name: str) -> int:
        rw = self.get_rw_layer(name)
        return self.driver.diff_size(rw.mount_id, rw.init_id)

    def remove_rw_layer(self, name: str) -> list[Layer]:
        """Delete the read-write layer; returns image layers that went with it (those of
        an image already deleted by `rmi --force`)."""
        with self._lock:
            rw = self.get_rw_layer(name)
            del self._rw[name]
        self.driver.remove(rw.mount_id)
        if rw.init_id == _init_id(rw.mount_id):  # its own, not a shared one
            self.driver.remove(rw.init_id)
        remove_dir(self._tmp, self._mounts_dir / name)
        fsync_dir(self._mounts_dir)
        return self.release(rw.parent) if rw.parent else []
