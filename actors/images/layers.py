"""The layer store (`image/<driver>/layerdb`): layers by ChainID, and containers' RW layers.

sha256/<chainID>/ holds diff (DiffID), size, tar-size, cache-id (the graph driver's
directory), parent (ChainID) and tar-split (see tarstream). mounts/<container-id>/ holds
mount-id and parent. Directories are written under a temporary name and renamed, so a
crash leaves a whole layer or none.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from actors.images.graphdriver import GraphDriver
from actors.images.tarstream import (
    LayerError,
    extract,
    load_segments,
    regenerate,
    save_segments,
)
from kernel.fsutil import fsync_dir

TAR_SPLIT = "tar-split.msgpack.gz"


def chain_id(parent: str | None, diff_id: str) -> str:
    """OCI ChainID: the first layer's is its DiffID, then sha256(parent + " " + DiffID)."""
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


@dataclass(frozen=True)
class Layer:
    chain_id: str
    diff_id: str
    parent: str | None
    cache_id: str
    size: int
    tar_size: int


class LayerStore:
    def __init__(self, root: Path, driver: GraphDriver) -> None:
        self.root = root
        self.driver = driver
        self.layers_dir = root / "sha256"
        self.mounts_dir = root / "mounts"
        self.tmp_dir = root / "tmp"
        for d in (self.layers_dir, self.mounts_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)  # leftovers of a crash mid-register
        self.tmp_dir.mkdir()
        self._lock = threading.Lock()

    def _dir(self, chain: str) -> Path:
        return self.layers_dir / chain.removeprefix("sha256:")

    def get(self, chain: str) -> Layer:
        directory = self._dir(chain)
        try:
            parent = (
                (directory / "parent").read_text().strip()
                if (directory / "parent").exists()
                else None
            )
            return Layer(
                chain_id=chain,
                diff_id=(directory / "diff").read_text().strip(),
                parent=parent or None,
                cache_id=(directory / "cache-id").read_text().strip(),
                size=int((directory / "size").read_text()),
                tar_size=int((directory / "tar-size").read_text()),
            )
        except (OSError, ValueError) as exc:
            raise LayerError(f"layer {chain} is not in the store: {exc}") from None

    def exists(self, chain: str) -> bool:
        return (self._dir(chain) / "diff").exists()

    def chain(self, top: str | None) -> list[Layer]:
        """The layer and its parents, top first."""
        layers = []
        current: str | None = top
        while current:
            layer = self.get(current)
            layers.append(layer)
            current = layer.parent
        return layers

    def register(self, source: BinaryIO, parent: str | None) -> Layer:
        """Extract an uncompressed layer tar on top of `parent`; reuse an identical layer."""
        parent_layer = self.get(parent) if parent else None
        cache_id = secrets.token_hex(32)
        files = self.driver.create_layer(cache_id, parent_layer.cache_id if parent_layer else None)
        try:
            result = extract(source, files, self.driver.whiteouts)
        except BaseException:
            self.driver.remove(cache_id)
            raise
        chain = chain_id(parent, result.diff_id)
        with self._lock:
            if self.exists(chain):
                self.driver.remove(cache_id)
                return self.get(chain)
            staging = Path(self.tmp_dir / cache_id)
            staging.mkdir()
            (staging / "diff").write_text(result.diff_id)
            (staging / "cache-id").write_text(cache_id)
            (staging / "size").write_text(str(_disk_usage(self.driver.layer_files(cache_id))))
            (staging / "tar-size").write_text(str(result.tar_size))
            if parent:
                (staging / "parent").write_text(parent)
            save_segments(staging / TAR_SPLIT, result.segments)
            for name in os.listdir(staging):
                fd = os.open(staging / name, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            os.rename(staging, self._dir(chain))
            fsync_dir(self.layers_dir)
        return self.get(chain)

    def tar_stream(self, chain: str) -> Iterator[bytes]:
        layer = self.get(chain)
        segments = load_segments(self._dir(chain) / TAR_SPLIT)
        return regenerate(segments, self.driver.layer_files(layer.cache_id))

    def remove(self, chain: str) -> None:
        """Drop one layer (the caller knows nothing references it any more)."""
        with self._lock:
            layer = self.get(chain)
            directory = self._dir(chain)
            doomed = self.tmp_dir / f"rm-{secrets.token_hex(8)}"
            os.rename(directory, doomed)  # gone from the store at once, atomically
            self.driver.remove(layer.cache_id)
            shutil.rmtree(doomed, ignore_errors=True)

    def all_chains(self) -> list[str]:
        return ["sha256:" + name for name in os.listdir(self.layers_dir)]

    # -- containers' read-write layers ----------------------------------------------

    def create_rw(self, container_id: str, image_top: str | None) -> None:
        top = self.get(image_top) if image_top else None
        mount_id = secrets.token_hex(32)
        self.driver.create_rw(mount_id, top.cache_id if top else None)
        staging = self.tmp_dir / f"m-{container_id}"
        staging.mkdir()
        (staging / "mount-id").write_text(mount_id)
        (staging / "parent").write_text(image_top or "")
        os.rename(staging, self.mounts_dir / container_id)
        fsync_dir(self.mounts_dir)

    def _rw(self, container_id: str) -> tuple[str, str]:
        directory = self.mounts_dir / container_id
        try:
            return (directory / "mount-id").read_text(), (directory / "parent").read_text()
        except FileNotFoundError:
            raise LayerError(f"no read-write layer for container {container_id}") from None

    def mount_rw(self, container_id: str) -> str:
        mount_id, parent = self._rw(container_id)
        chain = [layer.cache_id for layer in self.chain(parent)] if parent else []
        return self.driver.mount_rw(mount_id, chain)

    def unmount_rw(self, container_id: str) -> None:
        if (self.mounts_dir / container_id).exists():
            self.driver.unmount_rw(self._rw(container_id)[0])

    def remove_rw(self, container_id: str) -> None:
        directory = self.mounts_dir / container_id
        if not directory.exists():
            return
        mount_id, _ = self._rw(container_id)
        self.driver.remove(mount_id)
        shutil.rmtree(directory, ignore_errors=True)

    def rw_parents(self) -> set[str]:
        """Image top layers that containers' RW layers stand on."""
        parents = set()
        for name in os.listdir(self.mounts_dir):
            try:
                parents.add((self.mounts_dir / name / "parent").read_text())
            except OSError:
                continue
        return parents

    def rw_size(self, container_id: str) -> int:
        mount_id, _ = self._rw(container_id)
        return _disk_usage(self.driver.layer_files(mount_id))


def _disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
