"""The image store (`image/<driver>/imagedb`): image configs keyed by their sha256."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.errors import NotFound
from kernel.fsutil import atomic_write


@dataclass(frozen=True)
class Image:
    id: str  # sha256:<hex of the config bytes>
    raw: bytes
    config: dict[str, Any]

    @property
    def diff_ids(self) -> list[str]:
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.content = root / "content" / "sha256"
        self.metadata = root / "metadata" / "sha256"
        self.content.mkdir(parents=True, exist_ok=True)
        self.metadata.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._cache: dict[str, Image] = {}
        for name in os.listdir(self.content):
            if len(name) == 64:
                self._load(f"sha256:{name}")

    def _load(self, image_id: str) -> Image | None:
        path = self.content / image_id.removeprefix("sha256:")
        try:
            raw = path.read_bytes()
            image = Image(id=image_id, raw=raw, config=json.loads(raw))
        except (OSError, ValueError):
            return None
        self._cache[image_id] = image
        return image

    def add(self, raw: bytes) -> Image:
        image_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        with self._lock:
            if image_id not in self._cache:
                atomic_write(self.content / image_id.removeprefix("sha256:"), raw)
                self._cache[image_id] = Image(id=image_id, raw=raw, config=json.loads(raw))
        return self._cache[image_id]

    def get(self, image_id: str) -> Image:
        image = self._cache.get(image_id)
        if image is None:
            raise NotFound(f"No such image: {image_id}")
        return image

    def by_prefix(self, prefix: str) -> Image | None:
        """Full ID, `sha256:` prefix or a unique short prefix of at least one character."""
        hex_prefix = prefix.removeprefix("sha256:")
        matches = [i for i in self._cache if i.removeprefix("sha256:").startswith(hex_prefix)]
        return self._cache[matches[0]] if len(matches) == 1 else None

    def all(self) -> list[Image]:
        return list(self._cache.values())

    def delete(self, image_id: str) -> None:
        with self._lock:
            self._cache.pop(image_id, None)
            (self.content / image_id.removeprefix("sha256:")).unlink(missing_ok=True)
            meta = self.metadata / image_id.removeprefix("sha256:")
            for child in meta.glob("*") if meta.exists() else []:
                child.unlink()
            if meta.exists():
                meta.rmdir()

    def set_last_tag_time(self, image_id: str) -> None:
        meta = self.metadata / image_id.removeprefix("sha256:")
        meta.mkdir(parents=True, exist_ok=True)
        atomic_write(meta / "lastUpdated", _rfc3339(time.time_ns()).encode())

    def last_tag_time(self, image_id: str) -> str:
        try:
            return (self.metadata / image_id.removeprefix("sha256:") / "lastUpdated").read_text()
        except OSError:
            return "0001-01-01T00:00:00Z"


def _rfc3339(ns: int) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
    return f"{seconds}.{ns % 1_000_000_000:09d}Z"
