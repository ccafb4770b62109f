"""The image store (`image/<driver>/imagedb`) and the image operations dockerd's image
service does on top of it: lookups, listing with filters, history, tag, `docker rmi` and
prune, with dockerd's semantics and texts.

    imagedb/content/sha256/<id>              the config JSON (the ID is its sha256)
    imagedb/metadata/sha256/<id>/parent      the image it was built on, if any
    imagedb/metadata/sha256/<id>/lastUpdated when it was last tagged (RFC 3339)

Synchronous and thread-safe; the images actor calls it from worker threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.images.graphdriver import GraphDriver
from actors.images.layers import Layer, LayerStore, chain_ids
from actors.images.reference import (
    Reference,
    ReferenceStore,
    parse_any,
    parse_named,
)
from kernel.clock import parse_time, rfc3339_nano
from kernel.errors import Conflict, InvalidParameter, NotFound
from kernel.fsutil import atomic_write, remove_dir

log = logging.getLogger("pydockerd.images")

# image ID -> the containers created from it, as (container ID, running)
ContainerUsage = Callable[[str], Sequence[tuple[str, bool]]]


def short_id(image_id: str) -> str:
    return image_id.partition(":")[2][:12] if ":" in image_id else image_id[:12]


@dataclass(frozen=True)
class Image:
    id: str  # sha256:<hex of the config bytes>
    raw: bytes
    config: dict[str, Any]

    @property
    def short_id(self) -> str:
        return short_id(self.id)

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config["rootfs"].get("diff_ids") or [])

    @property
    def top_layer(self) -> str | None:
        """ChainID of the top layer (None for an image without layers)."""
        chains = chain_ids(self.diff_ids)
        return chains[-1] if chains else None

    @property
    def created_ns(self) -> int | None:
        return parse_time(self.config.get("created") or "")

    @property
    def container_config(self) -> dict[str, Any]:
        return dict(self.config.get("config") or {})

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.container_config.get("Labels") or {})


def validate_config(raw: bytes) -> dict[str, Any]:
    """An image config dockerd would accept (image.NewFromJSON plus the OS check)."""
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise InvalidParameter(f"invalid image JSON: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidParameter("invalid image JSON: not an object")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict):
        raise InvalidParameter("invalid image JSON, no RootFS key")
    if rootfs.get("type") != "layers":
        raise InvalidParameter(f"unsupported rootfs type: {rootfs.get('type')}")
    diff_ids = rootfs.get("diff_ids") or []
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and re.fullmatch(r"sha256:[a-f0-9]{64}", d) for d in diff_ids
    ):
        raise InvalidParameter("invalid image JSON: bad rootfs.diff_ids")
    if (config.get("os") or "linux") != "linux":
        raise InvalidParameter(f"cannot load {config['os']} image on linux")
    return config


class ImageStore:
    """Image configs by ID; each image holds a reference on its top layer."""

    def __init__(self, root: Path, layers: LayerStore) -> None:
        self.layers = layers
        self._content = root / "content" / "sha256"
        self._metadata = root / "metadata" / "sha256"
        self._tmp = root / "tmp"
        for directory in (self._content, self._metadata, self._tmp):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._images: dict[str, Image] = {}
        self._parents: dict[str, str] = {}
        for name in os.listdir(self._content):
            try:
                self._restore(name)
            except (OSError, ValueError, InvalidParameter, NotFound) as exc:
                log.warning("image store: skipping image %s: %s", name, exc)

    def _restore(self, hex_id: str) -> None:
        raw = (self._content / hex_id).read_bytes()
        if hashlib.sha256(raw).hexdigest() != hex_id:
            raise ValueError("content does not match its digest")
        image = Image(id=f"sha256:{hex_id}", raw=raw, config=validate_config(raw))
        if image.top_layer:
            self.layers.acquire(image.top_layer)
        self._images[image.id] = image
        try:
            self._parents[image.id] = (self._metadata / hex_id / "parent").read_text().strip()
        except FileNotFoundError:
            pass

    def create(self, raw: bytes) -> Image:
        """Store a config (its layers must be registered); an existing image is returned."""
        config = validate_config(raw)
        image = Image(id="sha256:" + hashlib.sha256(raw).hexdigest(), raw=raw, config=config)
        with self._lock:
            existing = self._images.get(image.id)
            if existing is not None:
                return existing
            if image.top_layer:
                try:
                    self.layers.acquire(image.top_layer)
                except NotFound:
                    raise InvalidParameter(
                        f"failed to get layer {image.top_layer}: layer does not exist"
                    ) from None
            try:
                atomic_write(self._content / image.id.removeprefix("sha256:"), raw)
            except BaseException:
                if image.top_layer:
                    self.layers.release(image.top_layer)
                raise
            self._images[image.id] = image
            return image

    def find(self, image_id: str) -> Image | None:
        return self._images.get(image_id)

    def get(self, image_id: str) -> Image:
        image = self._images.get(image_id)
        if image is None:
            raise NotFound(f"No such image: {image_id}")
        return image

    def search(self, term: str) -> Image | None:
        """A full ID, or a unique prefix of one (with or without `sha256:`)."""
        hex_prefix = term.removeprefix("sha256:")
        if not hex_prefix or not re.fullmatch(r"[a-f0-9]+", hex_prefix):
            return None
        matches = [i for i in self._images if i[7:].startswith(hex_prefix)]
        return self._images[matches[0]] if len(matches) == 1 else None

    def images(self) -> list[Image]:
        return list(self._images.values())

    def delete(self, image_id: str) -> list[Layer]:
        """Forget the image; returns the layers that went with it."""
        with self._lock:
            image = self._images.pop(image_id, None)
            if image is None:
                raise NotFound(f"No such image: {image_id}")
            self._parents.pop(image_id, None)
            hex_id = image_id.removeprefix("sha256:")
            (self._content / hex_id).unlink(missing_ok=True)
            remove_dir(self._tmp, self._metadata / hex_id)
        return self.layers.release(image.top_layer) if image.top_layer else []

    def _meta(self, image_id: str) -> Path:
        path = self._metadata / image_id.removeprefix("sha256:")
        path.mkdir(exist_ok=True, mode=0o700)
        return path

    def set_parent(self, image_id: str, parent_id: str) -> None:
        with self._lock:
            self.get(image_id), self.get(parent_id)
            atomic_write(self._meta(image_id) / "parent", parent_id.encode())
            self._parents[image_id] = parent_id

    def parent(self, image_id: str) -> str | None:
        return self._parents.get(image_id)

    def children(self, image_id: str) -> list[str]:
        return [child for child, parent in self._parents.items() if parent == image_id]

    def set_last_updated(self, image_id: str) -> None:
        with self._lock:
            self.get(image_id)
            atomic_write(
                self._meta(image_id) / "lastUpdated", rfc3339_nano(time.time_ns()).encode()
            )

    def last_updated(self, image_id: str) -> str:
        try:
            return (self._metadata / image_id.removeprefix("sha256:") / "lastUpdated").read_text()
        except OSError:
            return ""


# -- filters ------------------------------------------------------------------------


def _invalid_filter(name: str, values: Sequence[str]) -> InvalidParameter:
    return InvalidParameter(f"invalid filter '{name}={','.join(values)}'")


def _bool_filter(filters: Mapping[str, Sequence[str]], name: str, default: bool) -> bool:
    values = filters.get(name) or []
    if not values:
        return default
    lowered = {v.lower() for v in values}
    if lowered <= {"true", "1"}:
        return True
    if lowered <= {"false", "0"}:
        return False
    raise _invalid_filter(name, values)


def match_labels(filters: Sequence[str], labels: Mapping[str, str]) -> bool:
    """Every `key` or `key=value` in `filters` holds (dockerd's MatchKVList)."""
    for item in filters:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _path_match(pattern: str, name: str) -> bool:
    """Go's path.Match: `*` and `?` stop at `/`, `[...]` classes with `^` negation."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif char == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("^", "]") else i + 1)
            if end < 0:
                raise InvalidParameter("syntax error in pattern")
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            out.append(f"[{'^' if negate else ''}{body.replace(chr(92), chr(92) * 2)}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.fullmatch("".join(out), name) is not None


def reference_matches(pattern: str, ref: Reference) -> bool:
    """dockerd's FamiliarMatch: the pattern against busybox:latest, then against busybox."""
    return _path_match(pattern, ref.familiar()) or _path_match(pattern, ref.familiar_name)


def parse_until(value: str, now: float | None = None) -> int:
    """An `until` filter value (Unix time, RFC 3339 or a Go duration ago) -> ns."""
    now = time.time() if now is None else now
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds, _, fraction = value.partition(".")
        return int(seconds) * 1_000_000_000 + int((fraction or "0")[:9].ljust(9, "0"))
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", value)
    if parts and "".join(n + u for n, u in parts) == value:
        return int((now - sum(float(n) * units[u] for n, u in parts)) * 1e9)
    for candidate in (value, value + "T00:00:00Z", value + "Z"):
        parsed = parse_time(candidate)
        if parsed is not None:
            return parsed
    raise InvalidParameter(f"failed to parse value as time or duration: {value!r}")


# -- the image service's operations -------------------------------------------------


@dataclass(frozen=True)
class Listing:
    image: Image
    repo_tags: list[str]
    repo_digests: list[str]
    size: int


class _DeleteConflict(Conflict):
    def __init__(self, image_id: str, message: str, *, hard: bool, used: bool) -> None:
        forced = "cannot be forced" if hard else "must be forced"
        super().__init__(f"conflict: unable to delete {short_id(image_id)} ({forced}) - {message}")
        self.used = used


_CHILD, _RUNNING, _REFERENCE, _STOPPED = 1, 2, 4, 8
_HARD = _CHILD | _RUNNING
_SOFT = _REFERENCE | _STOPPED


def _no_containers(image_id: str) -> Sequence[tuple[str, bool]]:
    return ()


def _single_reference(refs: list[Reference]) -> bool:
    """All references in one repository and at most one tag (dockerd's isSingleReference)."""
    if len(refs) <= 1:
        return len(refs) == 1
    tagged = [r for r in refs if not r.digest]
    if len(tagged) > 1:
        return False
    digest_names = {r.name for r in refs if r.digest}
    single = tagged[0] if tagged else refs[0]
    return len(digest_names) == 1 and single.name in digest_names


def _is_id_prefix(image_id: str, text: str) -> bool:
    return image_id.startswith(text) or image_id.partition(":")[2].startswith(text)


class Images:
    """The stores of one graph driver under `<data-root>/image/<driver>/`."""

    def __init__(
        self, data_root: Path, driver: GraphDriver, usage: ContainerUsage = _no_containers
    ) -> None:
        base = data_root / "image" / driver.name
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.driver = driver
        self.layers = LayerStore(base / "layerdb", driver)
        self.store = ImageStore(base / "imagedb", self.layers)
        self.refs = ReferenceStore(base / "repositories.json")
        self.usage = usage
        for layer in self.layers.collect_garbage():
            log.info("layer store: removed %s, which no image used", layer.chain_id)

    # -- lookups ---------------------------------------------------------------------

    def get_image(self, name: str) -> Image:
        """By full ID or digest, reference, or unique ID prefix (dockerd's GetImage)."""
        ref = parse_any(name)
        if isinstance(ref, str):
            image = self.store.find(ref)
            if image is None:
                raise NotFound(f"No such image: {ref}")
            return image
        image_id = self.refs.get(ref)
        image = self.store.find(image_id) if image_id else None
        if image is not None:
            return image
        image = self.store.search(name)
        if image is None:
            raise NotFound(f"No such image: {ref.with_default_tag().familiar()}")
        return image

    def references(self, image_id: str) -> list[Reference]:
        return self.refs.references(image_id)

    def size(self, image: Image) -> int:
        return sum(layer.size for layer in self.layers.chain(image.top_layer))

    # -- changes ---------------------------------------------------------------------

    def create_image(self, raw: bytes, parent: str | None = None) -> Image:
        image = self.store.create(raw)
        if parent:
            self.store.set_parent(image.id, parent)
        return image

    def tag(self, image: Image, ref: Reference) -> str | None:
        """Tag (moving the tag if it pointed elsewhere); returns the image it left."""
        previous = self.refs.add(ref, image.id)
        self.store.set_last_updated(image.id)
        return previous

    # -- list, history ------------------------------------------------------------------

    def list_images(
        self, filters: Mapping[str, Sequence[str]], *, all: bool = False
    ) -> list[Listing]:
        """dockerd's image list: dangling, label, reference, before, since, until."""
        dangling_only = False
        if filters.get("dangling"):
            dangling_only = _bool_filter(filters, "dangling", False)
        before: int | None = None
        for name in filters.get("before") or []:
            created = self.get_image(name).created_ns
            if created is not None and (before is None or created < before):
                before = created
        for value in filters.get("until") or []:
            until = parse_until(value)
            if before is None or until < before:
                before = until
        since: int | None = None
        for name in filters.get("since") or []:
            created = self.get_image(name).created_ns
            if created is not None and (since is None or created > since):
                since = created
        patterns = filters.get("reference") or []
        listings = []
        for image in self.store.images():
            children = self.store.children(image.id)
            if dangling_only and children:
                continue  # only heads
            created = image.created_ns
            if before is not None and (created is None or created >= before):
                continue
            if since is not None and (created is None or created <= since):
                continue
            if filters.get("label") and not match_labels(filters["label"], image.labels):
                continue
            tags: list[str] = []
            digests: list[str] = []
            for ref in self.refs.references(image.id):
                if patterns and not any(reference_matches(p, ref) for p in patterns):
                    continue
                (digests if ref.digest else tags).append(ref.familiar())
            if not tags and not digests:
                if not (all or not children):
                    continue  # an intermediate image
                if filters.get("dangling") and not dangling_only:
                    continue
                if patterns:
                    continue
            elif dangling_only and tags:
                continue
            listings.append(Listing(image, tags, digests, self.size(image)))
        listings.sort(key=lambda item: item.image.created_ns or 0, reverse=True)
        return listings

    def history(self, name: str) -> list[dict[str, Any]]:
        """`docker history`: newest first; IDs and tags only where images are known."""
        image = self.get_image(name)
        rows: list[dict[str, Any]] = []
        chains = chain_ids(image.diff_ids)
        layer_index = 0
        for entry in image.config.get("history") or []:
            size = 0
            if not entry.get("empty_layer"):
                if layer_index >= len(chains):
                    raise InvalidParameter("too many non-empty layers in History section")
                size = self.layers.get(chains[layer_index]).size
                layer_index += 1
            created = parse_time(entry.get("created") or "")
            rows.insert(0, {
                "Id": "<missing>",
                "Created": created // 1_000_000_000 if created else 0,
                "CreatedBy": entry.get("created_by", ""),
                "Tags": None,
                "Size": size,
                "Comment": entry.get("comment", ""),
            })  # fmt: skip
        current: Image | None = image
        for row in rows:
            if current is None:
                break
            row["Id"] = current.id
            row["Tags"] = [r.familiar() for r in self.refs.references(current.id) if r.tag] or None
            parent = current.config.get("parent") or ""
            current = self.store.find(parent) if parent else None
        return rows

    # -- docker rmi ---------------------------------------------------------------------

    def delete(self, name: str, *, force: bool = False, prune: bool = True) -> list[dict[str, str]]:
        """dockerd's ImageDelete: untag by reference, or delete by ID, with its conflicts.
        Returns the records `docker rmi` prints ({"Untagged": ...}, {"Deleted": ...})."""
        image = self.get_image(name)
        records: list[dict[str, str]] = []
        refs = self.refs.references(image.id)
        quiet = False
        if not _is_id_prefix(image.id, name):
            # A reference: remove it; keep a single reference a container still needs.
            if not force and _single_reference(refs):
                using = next(iter(self.usage(image.id)), None)
                if using is not None:
                    raise Conflict(
                        f'conflict: unable to remove repository reference "{name}" (must force)'
                        f" - container {short_id(using[0])} is using its referenced image "
                        f"{image.short_id}"
                    )
            parsed = parse_named(name).with_default_tag()
            self._untag(parsed, records)
            refs = self.refs.references(image.id)
            if not parsed.digest and not any(not r.digest and r.name == parsed.name for r in refs):
                # The last tag of the repository went: its digests go with it.
                for ref in [r for r in refs if r.digest and r.name == parsed.name]:
                    self._untag(ref, records)
                refs = self.refs.references(image.id)
            if refs:
                return records
            quiet = True
        elif _single_reference(refs):
            mask = _HARD if force else _HARD | _STOPPED
            conflict = self._conflict(image.id, mask)
            if conflict is not None:
                raise conflict
            for ref in refs:
                self._untag(ref, records)
        self._delete(image.id, records, force=force, prune=prune, quiet=quiet)
        return records

    def _untag(self, ref: Reference, records: list[dict[str, str]]) -> None:
        try:
            self.refs.delete(ref)
        except NotFound:
            pass  # idempotent, as dockerd's removeImageRef
        records.append({"Untagged": ref.for_store().familiar()})

    def _conflict(self, image_id: str, mask: int) -> _DeleteConflict | None:
        if mask & _CHILD and self.store.children(image_id):
            return _DeleteConflict(
                image_id, "image has dependent child images", hard=True, used=False
            )
        containers = list(self.usage(image_id))
        running = next((c for c, up in containers if up), None)
        if mask & _RUNNING and running is not None:
            return _DeleteConflict(
                image_id, f"image is being used by running container {short_id(running)}",
                hard=True, used=True,
            )  # fmt: skip
        if mask & _REFERENCE and self.refs.references(image_id):
            return _DeleteConflict(
                image_id, "image is referenced in multiple repositories", hard=False, used=False
            )
        stopped = next((c for c, up in containers if not up), None)
        if mask & _STOPPED and stopped is not None:
            return _DeleteConflict(
                image_id, f"image is being used by stopped container {short_id(stopped)}",
                hard=False, used=True,
            )  # fmt: skip
        return None

    def _delete(
        self, image_id: str, records: list[dict[str, str]], *, force: bool, prune: bool,
        quiet: bool,
    ) -> None:  # fmt: skip
        conflict = self._conflict(image_id, _HARD if force else _HARD | _SOFT)
        if conflict is not None:
            dangling = not self.refs.references(image_id) and not self.store.children(image_id)
            if quiet and (not dangling or conflict.used):
                return  # an untag that leaves the image to whoever still uses it
            raise conflict
        parent = self.store.parent(image_id)
        for ref in self.refs.references(image_id):
            self._untag(ref, records)
        removed = self.store.delete(image_id)
        records.append({"Deleted": image_id})
        records.extend({"Deleted": layer.chain_id} for layer in removed)
        if prune and parent and self.store.find(parent):
            self._delete(parent, records, force=False, prune=True, quiet=True)

    # -- prune --------------------------------------------------------------------------

    def prune(self, filters: Mapping[str, Sequence[str]]) -> tuple[list[dict[str, str]], int]:
        """dockerd's ImagesPrune: dangling images (or all unused with dangling=false).
        Returns the records and the bytes reclaimed."""
        dangling_only = _bool_filter(filters, "dangling", True)
        until = None
        for value in filters.get("until") or []:
            until = parse_until(value)
        sizes = {layer.chain_id: layer.size for layer in self.layers.layers()}
        records: list[dict[str, str]] = []
        for image in self.store.images():
            if self.store.find(image.id) is None:
                continue  # went with an image deleted before it
            refs = self.refs.references(image.id)
            children = self.store.children(image.id)
            if dangling_only and children:
                continue
            if not refs and children:
                continue
            created = image.created_ns
            if until is not None and (created is None or created > until):
                continue
            labels = image.labels
            if filters.get("label") and not match_labels(filters["label"], labels):
                continue
            if filters.get("label!") and match_labels(filters["label!"], labels):
                continue
            targets = [str(r) for r in refs] if refs else [image.id.removeprefix("sha256:")]
            if refs and dangling_only and any(r.tag for r in refs):
                continue
            for target in targets:
                try:
                    records += self.delete(target, force=False, prune=True)
                except (Conflict, NotFound) as exc:
                    log.debug("prune: %s stays: %s", target, exc)
        reclaimed = sum(sizes.get(r["Deleted"], 0) for r in records if "Deleted" in r)
        return records, reclaimed
