"""The images actor: graph driver, layer, image and reference stores (the synchronous core
in store.py, layers.py, tarexport.py), and what the API and the containers actor ask of
them. Disk-heavy work runs in threads; mutations of the stores one at a time."""

from __future__ import annotations

import json
import logging
import os
import tarfile
import tempfile
import time
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import trio

from actors.images import rootdiff, tarexport
from actors.images.changes import apply_changes
from actors.images.graphdriver import GraphDriver, Mount, choose
from actors.images.reference import Reference, repo_tag
from actors.images.store import Image, Images
from actors.images.tarexport import SaveTarget
from kernel.clock import rfc3339_nano, unix_seconds
from kernel.errors import NotFound
from kernel.threadpipe import run_with_input

log = logging.getLogger("pydockerd.images")

# image ID -> [(container ID, running)], from the containers actor
ContainerUsage = Callable[[], Mapping[str, Sequence[tuple[str, bool]]]]
GOARCH = tarexport.GOARCH


def _write_layer(root: Path, diff: list[dict[str, Any]], out: BinaryIO) -> None:
    """A layer tar of `diff` (from rootdiff): files as they are, deletions as whiteouts."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for change in diff:
            path = str(change["Path"]).lstrip("/")
            if change["Kind"] == rootdiff.DELETED:
                directory, name = os.path.split(path)
                whiteout = tarfile.TarInfo(os.path.join(directory, f".wh.{name}"))
                archive.addfile(whiteout)
            else:
                archive.add(root / path, arcname=path, recursive=False)


class ImagesService:
    def __init__(self, data_root: Path, storage_driver: str) -> None:
        self.data_root = data_root
        self.driver: GraphDriver = choose(data_root, storage_driver)
        self.core = Images(data_root, self.driver, self._usage)
        self.layers = self.core.layers
        self.images = self.core.store
        self.refs = self.core.refs
        self.scratch = data_root / "tmp"
        self.container_usage: ContainerUsage = dict
        self._lock = trio.Lock()

    def _usage(self, image_id: str) -> Sequence[tuple[str, bool]]:
        return self.container_usage().get(image_id, ())

    @property
    def driver_name(self) -> str:
        return self.driver.name

    async def run(self, *, stopping: trio.Event, task_status: trio.TaskStatus[Any]) -> None:
        task_status.started(self)
        try:
            await stopping.wait()
        finally:
            await trio.to_thread.run_sync(self.driver.cleanup)

    # -- lookups -----------------------------------------------------------------

    def lookup(self, name: str) -> Image:
        """By reference, full or short ID (dockerd's GetImage order)."""
        return self.core.get_image(name)

    def size(self, image: Image) -> int:
        return self.core.size(image)

    # -- ImageProvider (containers actor) -------------------------------------------

    async def resolve_for_container(self, ref: str) -> tuple[str, dict[str, Any]]:
        image = self.lookup(ref)
        return image.id, image.container_config

    async def create_rw_layer(self, container_id: str, image_id: str) -> None:
        top = self.images.get(image_id).top_layer
        await trio.to_thread.run_sync(self.layers.create_rw_layer, container_id, top)

    async def rw_mounts(self, container_id: str) -> list[Mount]:
        """The container's root filesystem for containerd's task create (not mounted)."""
        return self.layers.rw_mounts(container_id)

    async def changes(self, container_id: str) -> list[dict[str, object]]:
        """`docker diff`: the container's root against its image's (with the init layer)."""
        rw = self.layers.get_rw_layer(container_id)

        def compare() -> list[dict[str, object]]:
            image_root = self.driver.get(rw.init_id)
            try:
                container_root = self.layers.mount_rw_layer(container_id)
                try:
                    return rootdiff.changes(image_root, container_root)
                finally:
                    self.layers.unmount_rw_layer(container_id)
            finally:
                self.driver.put(rw.init_id)

        return await trio.to_thread.run_sync(compare)

    async def commit(
        self,
        container_id: str,
        image_id: str,
        config: dict[str, Any],
        *,
        repo: str,
        tag: str,
        changes: list[str],
        comment: str,
        author: str,
    ) -> Image:
        """`docker commit`: the container's changes as a new layer on top of its image."""
        ref = repo_tag(repo, tag) if repo else None
        config = apply_changes(dict(config), changes)  # bad changes fail before any work
        base = self.core.get_image(image_id)
        rw = self.layers.get_rw_layer(container_id)

        def build() -> Image:
            image_root = self.driver.get(rw.init_id)
            try:
                root = self.layers.mount_rw_layer(container_id)
                try:
                    with tempfile.TemporaryFile(dir=self.data_root / "tmp") as layer_tar:
                        _write_layer(root, rootdiff.changes(image_root, root), layer_tar)
                        layer_tar.seek(0)
                        layer = self.layers.register(layer_tar, base.top_layer)
                finally:
                    self.layers.unmount_rw_layer(container_id)
            finally:
                self.driver.put(rw.init_id)
            try:
                created = rfc3339_nano(time.time_ns())
                document = {
                    **base.config,
                    "author": author,
                    "comment": comment,
                    "created": created,
                    "config": config,
                    "container": container_id,
                    "rootfs": {"type": "layers", "diff_ids": [*base.diff_ids, layer.diff_id]},
                    "history": [
                        *(base.config.get("history") or []),
                        {"created": created, "author": author, "comment": comment},
                    ],
                }
                raw = json.dumps({k: v for k, v in document.items() if v != ""}).encode()
                return self.core.create_image(raw, parent=base.id)
            finally:
                self.layers.release(layer.chain_id)

        async with self._lock:
            image = await trio.to_thread.run_sync(build)
            if ref is not None:
                self.core.tag(image, ref)
        return image

    def export(self, container_id: str, out: BinaryIO) -> None:
        """`docker export`: the container's root filesystem as one tar (in a thread)."""
        root = self.layers.mount_rw_layer(container_id)
        try:
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                for entry in sorted(os.listdir(root)):
                    archive.add(root / entry, arcname=entry, recursive=True)
        finally:
            self.layers.unmount_rw_layer(container_id)

    def mount_rw_layer_sync(self, container_id: str) -> str:
        """For work already running in a thread (docker cp)."""
        return str(self.layers.mount_rw_layer(container_id))

    def unmount_rw_layer_sync(self, container_id: str) -> None:
        self.layers.unmount_rw_layer(container_id)

    async def mount_rw_layer(self, container_id: str) -> str:
        return str(await trio.to_thread.run_sync(self.layers.mount_rw_layer, container_id))

    async def unmount_rw_layer(self, container_id: str) -> None:
        try:
            await trio.to_thread.run_sync(self.layers.unmount_rw_layer, container_id)
        except NotFound:
            pass

    async def remove_rw_layer(self, container_id: str) -> None:
        try:
            await trio.to_thread.run_sync(self.layers.remove_rw_layer, container_id)
        except NotFound:
            pass

    def rw_size(self, container_id: str) -> int:
        return self.layers.rw_layer_size(container_id)

    def image_size(self, image_id: str) -> int:
        """What `docker ps --size` adds to a container's own size ("virtual")."""
        return self.size(self.lookup(image_id))

    # -- load, save, import --------------------------------------------------------

    async def load(self, body: AsyncIterable[bytes]) -> list[str]:
        """Load an archive streamed in `body`; the messages `docker load` prints."""
        async with self._lock:
            return await run_with_input(
                lambda source: tarexport.load(self.core, source, self.scratch), body
            )

    def save_targets(self, names: Sequence[str]) -> list[SaveTarget]:
        return tarexport.save_targets(self.core, names)

    def save(self, targets: list[SaveTarget], out: BinaryIO) -> None:
        tarexport.save(self.core, targets, out)

    async def import_image(
        self, body: AsyncIterable[bytes], *, repo: str, tag: str, changes: list[str], message: str
    ) -> Image:
        ref = repo_tag(repo, tag) if repo else None
        apply_changes({}, changes)  # bad changes fail before the upload is read

        def work(source: BinaryIO) -> Image:
            return tarexport.import_image(
                self.core, source, ref=ref, changes=changes, message=message
            )

        async with self._lock:
            return await run_with_input(work, body)

    # -- tag, remove, prune -----------------------------------------------------------

    async def tag(self, name: str, repo: str, tag: str) -> Reference:
        ref = repo_tag(repo, tag)
        image = self.lookup(name)
        self.core.tag(image, ref)
        return ref

    async def remove(self, name: str, *, force: bool, prune: bool = True) -> list[dict[str, str]]:
        """dockerd's ImageDelete: untag, then delete the image when nothing refers to it."""
        async with self._lock:
            return await trio.to_thread.run_sync(
                lambda: self.core.delete(name, force=force, prune=prune)
            )

    async def prune(self, filters: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        async with self._lock:
            records, reclaimed = await trio.to_thread.run_sync(self.core.prune, filters)
        return {"ImagesDeleted": records or None, "SpaceReclaimed": reclaimed}

    # -- views ---------------------------------------------------------------------

    def summary(self, image: Image, *, size: int | None = None) -> dict[str, Any]:
        refs = self.refs.references(image.id)
        return {
            "Id": image.id,
            "ParentId": self.images.parent(image.id) or "",
            "RepoTags": [r.familiar() for r in refs if r.tag],
            "RepoDigests": [r.familiar() for r in refs if r.digest],
            "Created": unix_seconds(image.config.get("created", "")),
            "Size": self.size(image) if size is None else size,
            "SharedSize": -1,
            "Labels": image.labels,
            "Containers": -1,
        }

    def list_images(self, filters: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
        result = []
        for listing in self.core.list_images(filters):
            summary = self.summary(listing.image, size=listing.size)
            summary["RepoTags"], summary["RepoDigests"] = listing.repo_tags, listing.repo_digests
            result.append(summary)
        return result

    def inspect(self, name: str) -> dict[str, Any]:
        image = self.lookup(name)
        refs = self.refs.references(image.id)
        config = image.config
        data: dict[str, Any] | None = None
        if self.driver.name == "overlay2" and image.top_layer:
            dirs = [str(self.driver.diff_dir(layer.cache_id))
                    for layer in self.layers.chain(image.top_layer)]  # fmt: skip
            data = {"UpperDir": dirs[0], "MergedDir": str(Path(dirs[0]).parent / "merged"),
                    "WorkDir": str(Path(dirs[0]).parent / "work")}  # fmt: skip
            if len(dirs) > 1:
                data["LowerDir"] = ":".join(dirs[1:])
        return {
            "Id": image.id,
            "RepoTags": [r.familiar() for r in refs if r.tag],
            "RepoDigests": [r.familiar() for r in refs if r.digest],
            "Parent": self.images.parent(image.id) or "",
            "Comment": config.get("comment", ""),
            "Created": config.get("created", ""),
            "DockerVersion": config.get("docker_version", ""),
            "Author": config.get("author", ""),
            "Config": image.container_config,
            "Architecture": config.get("architecture", ""),
            "Variant": config.get("variant", ""),
            "Os": config.get("os", "linux"),
            "Size": self.size(image),
            "GraphDriver": {"Name": self.driver.name, "Data": data},
            "RootFS": {"Type": "layers", "Layers": image.diff_ids},
            "Metadata": {
                "LastTagTime": self.images.last_updated(image.id) or "0001-01-01T00:00:00Z"
            },
        }

    def history(self, name: str) -> list[dict[str, Any]]:
        return self.core.history(name)

    async def info_fields(self) -> dict[str, Any]:
        return {
            "Images": len(self.images.images()),
            "Driver": self.driver.name,
            "DriverStatus": [list(pair) for pair in self.driver.status()],
        }
