"""The images actor: graph driver, layer, image and reference stores, and what the API and
the containers actor ask of them. Disk-heavy work runs in threads, one mutation at a time."""

from __future__ import annotations

import fnmatch
import logging
import platform
import time
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import trio

from actors.images import archive
from actors.images.graphdriver import GraphDriver, choose
from actors.images.layers import LayerStore, chain_id
from actors.images.reference import Reference, ReferenceStore, looks_like_id, parse
from actors.images.store import Image, ImageStore
from kernel.errors import Conflict, InvalidParameter, NotFound
from kernel.threadpipe import run_with_input

log = logging.getLogger("pydockerd.images")

# image ID -> [(container ID, running)], from the containers actor
ContainerUsage = Callable[[], Mapping[str, Sequence[tuple[str, bool]]]]

GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _unix(rfc3339: str) -> int:
    if not rfc3339:
        return 0
    base = rfc3339.split(".")[0].rstrip("Z")
    try:
        return int(time.mktime(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))) - time.timezone
    except ValueError:
        return 0


class ImagesService:
    def __init__(self, data_root: Path, storage_driver: str) -> None:
        self.data_root = data_root
        self.driver: GraphDriver = choose(data_root, storage_driver)
        base = data_root / "image" / self.driver.name
        self.layers = LayerStore(base / "layerdb", self.driver)
        self.images = ImageStore(base / "imagedb")
        self.refs = ReferenceStore(base / "repositories.json")
        self.loader = archive.Loader(self.layers, self.images, self.refs)
        self.scratch = data_root / "tmp"
        self.container_usage: ContainerUsage = dict
        self._lock = trio.Lock()

    @property
    def driver_name(self) -> str:
        return self.driver.name

    async def run(self, *, stopping: trio.Event, task_status: trio.TaskStatus[Any]) -> None:
        task_status.started(self)
        await stopping.wait()

    # -- lookups -----------------------------------------------------------------

    def lookup(self, name: str) -> Image:
        """By reference, full or short ID (dockerd's GetImage order)."""
        if name.startswith("sha256:") and len(name) == 71:
            return self.images.get(name)
        try:
            ref = parse(name)
        except InvalidParameter:
            ref = None
        if ref is not None:
            image_id = self.refs.get(ref)
            if image_id is not None:
                return self.images.get(image_id)
        if looks_like_id(name):
            image = self.images.by_prefix(name)
            if image is not None:
                return image
        raise NotFound(f"No such image: {name}")

    def chain_of(self, image: Image) -> str | None:
        chain: str | None = None
        for diff_id in image.diff_ids:
            chain = chain_id(chain, diff_id)
        return chain

    def size(self, image: Image) -> int:
        top = self.chain_of(image)
        return sum(layer.size for layer in self.layers.chain(top)) if top else 0

    # -- ImageProvider (containers actor) -------------------------------------------

    async def resolve_for_container(self, ref: str) -> tuple[str, dict[str, Any]]:
        try:
            image = self.lookup(ref)
        except NotFound:
            try:
                shown = parse(ref).familiar()
            except InvalidParameter:
                shown = ref
            raise NotFound(f"No such image: {shown}") from None
        return image.id, dict(image.config.get("config") or {})

    async def create_rw_layer(self, container_id: str, image_id: str) -> None:
        top = self.chain_of(self.images.get(image_id))
        await trio.to_thread.run_sync(self.layers.create_rw, container_id, top)

    async def mount_rw_layer(self, container_id: str) -> str:
        return await trio.to_thread.run_sync(self.layers.mount_rw, container_id)

    async def unmount_rw_layer(self, container_id: str) -> None:
        await trio.to_thread.run_sync(self.layers.unmount_rw, container_id)

    async def remove_rw_layer(self, container_id: str) -> None:
        await trio.to_thread.run_sync(self.layers.remove_rw, container_id)

    def rw_size(self, container_id: str) -> int:
        return self.layers.rw_size(container_id)

    # -- load, save, import --------------------------------------------------------

    async def load(self, body: AsyncIterable[bytes]) -> list[str]:
        """Load an archive streamed in `body`; the messages `docker load` prints."""
        async with self._lock:
            return await run_with_input(
                lambda source: self.loader.load(source, self.scratch, lambda _: None), body
            )

    def save_targets(self, names: Sequence[str]) -> list[tuple[Image, list[Reference]]]:
        targets = []
        for name in names:
            image = self.lookup(name)
            refs = self.refs.references(image.id)
            if not looks_like_id(name) or name.startswith("sha256:") is False:
                try:
                    wanted = parse(name)
                    refs = [r for r in refs if r == wanted] or refs
                except InvalidParameter:
                    pass
            targets.append((image, refs))
        return targets

    def save(self, targets: list[tuple[Image, list[Reference]]], out: BinaryIO) -> None:
        archive.save(self.layers, targets, out)

    async def import_image(
        self, body: AsyncIterable[bytes], *, repo: str, tag: str, changes: list[str], message: str
    ) -> Image:
        ref = parse(f"{repo}:{tag}" if repo and tag else repo) if repo else None
        archive.apply_changes({}, changes)  # bad changes fail before the upload is read

        def work(source: BinaryIO) -> Image:
            return archive.import_layer(
                self.layers, self.images, source, changes=changes, message=message,
                architecture=GOARCH,
            )  # fmt: skip

        async with self._lock:
            image = await run_with_input(work, body)
            if ref is not None:
                self.refs.add(ref, image.id)
                self.images.set_last_tag_time(image.id)
        return image

    # -- tag, remove, prune -----------------------------------------------------------

    async def tag(self, name: str, repo: str, tag: str) -> Reference:
        image = self.lookup(name)
        if not repo:
            raise InvalidParameter("repository name must have at least one component")
        try:
            ref = parse(f"{repo}:{tag}" if tag else repo)
        except InvalidParameter as exc:
            raise InvalidParameter(f"{exc.message}") from None
        if ref.digest:
            raise InvalidParameter("refusing to create a tag with a digest reference")
        self.refs.add(ref, image.id)
        self.images.set_last_tag_time(image.id)
        return ref

    async def remove(self, name: str, *, force: bool, prune: bool = True) -> list[dict[str, str]]:
        """dockerd's ImageDelete: untag, then delete the image when nothing refers to it."""
        async with self._lock:
            try:
                image = self.lookup(name)
            except NotFound:
                shown = name if looks_like_id(name) else parse(name).familiar()
                raise NotFound(f"No such image: {shown}") from None
            usage = self.container_usage().get(image.id, [])
            running = [cid for cid, up in usage if up]
            refs = self.refs.references(image.id)
            by_reference = not looks_like_id(name) or any(
                r.familiar() == name or str(r) == name for r in refs
            )
            report: list[dict[str, str]] = []
            if by_reference and not name.startswith("sha256:"):
                ref = parse(name)
                if self.refs.get(ref) == image.id:
                    if len(refs) == 1 and usage and not force:
                        raise Conflict(
                            f'conflict: unable to remove repository reference "{name}" (must '
                            f"force) - container {usage[0][0][:12]} is using its referenced "
                            f"image {image.short_id}"
                        )
                    self.refs.delete(ref)
                    report.append({"Untagged": ref.familiar()})
                    if len(refs) > 1 or usage:
                        return report
            else:
                if running:
                    raise Conflict(
                        f"conflict: unable to delete {image.short_id} (cannot be forced) - "
                        f"image is being used by running container {running[0][:12]}"
                    )
                if len(refs) > 1 and not force:
                    raise Conflict(
                        f"conflict: unable to delete {image.short_id} (must be forced) - "
                        "image is referenced in multiple repositories"
                    )
                if usage and not force:
                    raise Conflict(
                        f"conflict: unable to delete {image.short_id} (must be forced) - "
                        f"image is being used by stopped container {usage[0][0][:12]}"
                    )
                for ref in refs:
                    self.refs.delete(ref)
                    report.append({"Untagged": ref.familiar()})
            if usage:
                return report
            report.extend(await trio.to_thread.run_sync(self._delete_image, image))
            return report

    def _delete_image(self, image: Image) -> list[dict[str, str]]:
        report = [{"Deleted": image.id}]
        self.images.delete(image.id)
        in_use = self.loader._chains_in_use()
        top = self.chain_of(image)
        for layer in self.layers.chain(top) if top else []:
            if layer.chain_id in in_use:
                break
            self.layers.remove(layer.chain_id)
            report.append({"Deleted": layer.chain_id})
        return report

    async def prune(self, filters: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        dangling_only = (filters.get("dangling") or ["true"])[0].lower() in ("true", "1")
        used = set(self.container_usage())
        deleted: list[dict[str, str]] = []
        reclaimed = 0
        for image in self.images.all():
            if image.id in used or (dangling_only and self.refs.references(image.id)):
                continue
            if not _label_filters_match(image, filters.get("label", ())):
                continue
            reclaimed += self.size(image)
            for ref in self.refs.references(image.id):
                self.refs.delete(ref)
                deleted.append({"Untagged": ref.familiar()})
            async with self._lock:
                deleted.extend(await trio.to_thread.run_sync(self._delete_image, image))
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    # -- views ---------------------------------------------------------------------

    def summary(self, image: Image, *, digests: bool = False) -> dict[str, Any]:
        refs = self.refs.references(image.id)
        config = image.config.get("config") or {}
        return {
            "Id": image.id,
            "ParentId": "",
            "RepoTags": [r.familiar() for r in refs if r.tag],
            "RepoDigests": [r.familiar() for r in refs if r.digest],
            "Created": _unix(image.config.get("created", "")),
            "Size": self.size(image),
            "SharedSize": -1,
            "Labels": config.get("Labels") or {},
            "Containers": -1,
        }

    def list_images(self, filters: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
        images = self.images.all()
        before = [self.lookup(n) for n in filters.get("before", ())]
        since = [self.lookup(n) for n in filters.get("since", ())]
        result = []
        for image in images:
            refs = self.refs.references(image.id)
            created = _unix(image.config.get("created", ""))
            dangling = filters.get("dangling")
            if dangling:
                want = dangling[0].lower() in ("true", "1")
                if want != (not refs):
                    continue
            if before and not all(created < _unix(b.config.get("created", "")) for b in before):
                continue
            if since and not all(created > _unix(s.config.get("created", "")) for s in since):
                continue
            if not _label_filters_match(image, filters.get("label", ())):
                continue
            patterns = filters.get("reference", ())
            summary = self.summary(image)
            if patterns:
                # Only the matching tags are shown, as dockerd does.
                matching = [r for r in refs if any(_reference_matches(p, r) for p in patterns)]
                if not matching:
                    continue
                summary["RepoTags"] = [r.familiar() for r in matching if r.tag]
                summary["RepoDigests"] = [r.familiar() for r in matching if r.digest]
            result.append(summary)
        result.sort(key=lambda s: -s["Created"])
        return result

    def inspect(self, name: str) -> dict[str, Any]:
        image = self.lookup(name)
        refs = self.refs.references(image.id)
        config = image.config
        top = self.chain_of(image)
        data: dict[str, Any] = {}
        if self.driver.name == "overlay2" and top:
            chain = self.layers.chain(top)
            files = [str(self.driver.layer_files(layer.cache_id)) for layer in chain]
            data = {"UpperDir": files[0], "LowerDir": ":".join(files[1:]) or None,
                    "MergedDir": None, "WorkDir": None}  # fmt: skip
            data = {k: v for k, v in data.items() if v}
        return {
            "Id": image.id,
            "RepoTags": [r.familiar() for r in refs if r.tag],
            "RepoDigests": [r.familiar() for r in refs if r.digest],
            "Parent": "",
            "Comment": (config.get("history") or [{}])[-1].get("comment", "")
            if config.get("history")
            else "",
            "Created": config.get("created", ""),
            "DockerVersion": config.get("docker_version", ""),
            "Author": config.get("author", ""),
            "Config": config.get("config") or {},
            "Architecture": config.get("architecture", ""),
            "Variant": config.get("variant", ""),
            "Os": config.get("os", "linux"),
            "Size": self.size(image),
            "GraphDriver": {"Name": self.driver.name, "Data": data or None},
            "RootFS": {"Type": "layers", "Layers": image.diff_ids},
            "Metadata": {"LastTagTime": self.images.last_tag_time(image.id)},
        }

    def history(self, name: str) -> list[dict[str, Any]]:
        image = self.lookup(name)
        entries = image.config.get("history") or []
        chain_layers = (
            list(reversed(self.layers.chain(self.chain_of(image)))) if image.diff_ids else []
        )
        sizes = iter(layer.size for layer in chain_layers)
        rows = []
        for entry in entries:
            size = 0 if entry.get("empty_layer") else next(sizes, 0)
            rows.append(
                {
                    "Id": "<missing>",
                    "Created": _unix(entry.get("created", "")),
                    "CreatedBy": entry.get("created_by", ""),
                    "Tags": None,
                    "Size": size,
                    "Comment": entry.get("comment", ""),
                }
            )
        rows.reverse()
        if rows:
            rows[0]["Id"] = image.id
            rows[0]["Tags"] = [
                r.familiar() for r in self.refs.references(image.id) if r.tag
            ] or None
        return rows

    async def info_fields(self) -> dict[str, Any]:
        return {
            "Images": len(self.images.all()),
            "Driver": self.driver.name,
            "DriverStatus": self.driver.status(),
        }


def _label_filters_match(image: Image, labels: Sequence[str]) -> bool:
    have = (image.config.get("config") or {}).get("Labels") or {}
    for label in labels:
        key, sep, value = label.partition("=")
        if key not in have or (sep and have[key] != value):
            return False
    return True


def _reference_matches(pattern: str, ref: Reference) -> bool:
    familiar = ref.familiar()
    name = ref.familiar_name
    return fnmatch.fnmatchcase(familiar, pattern) or fnmatch.fnmatchcase(name, pattern)
