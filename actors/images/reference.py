"""Docker image references (distribution/reference): parsing, normalisation, familiar names,
and the reference store (`repositories.json`)."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from kernel.errors import InvalidParameter, NotFound
from kernel.fsutil import atomic_write

DEFAULT_DOMAIN = "docker.io"
OFFICIAL_PREFIX = "library/"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_SUFFIX = rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
_REFERENCE = re.compile(rf"^(?P<name>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*){_SUFFIX}")
_ANY_CASE = re.compile(rf"^(?P<name>(?:{_DOMAIN}/)?[a-zA-Z0-9._-]+(?:/[a-zA-Z0-9._-]+)*){_SUFFIX}")
_HEX64 = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    """A normalised reference: `name` is fully qualified (docker.io/library/busybox)."""

    name: str
    tag: str = ""
    digest: str = ""

    @property
    def familiar_name(self) -> str:
        name = self.name
        if name.startswith(DEFAULT_DOMAIN + "/"):
            name = name[len(DEFAULT_DOMAIN) + 1 :]
            if name.startswith(OFFICIAL_PREFIX) and name.count("/") == 1:
                name = name[len(OFFICIAL_PREFIX) :]
        return name

    def familiar(self) -> str:
        """What `docker images` shows: busybox:latest, localhost:5000/x@sha256:..."""
        if self.digest:
            return f"{self.familiar_name}@{self.digest}"
        return f"{self.familiar_name}:{self.tag}"

    def __str__(self) -> str:
        return f"{self.name}@{self.digest}" if self.digest else f"{self.name}:{self.tag}"

    @property
    def domain(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def path(self) -> str:
        return self.name.split("/", 1)[1]


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    # distribution's rule: a first component is a domain if it has "." or ":", is
    # localhost, or has an upper-case letter (path components never do).
    if not sep or (
        "." not in first and ":" not in first and first != "localhost" and first == first.lower()
    ):
        return DEFAULT_DOMAIN, name
    return first, rest


def parse(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise; `invalid reference format` errors as dockerd words them."""
    match = _REFERENCE.match(text)
    if match is None:
        loose = _ANY_CASE.match(text)
        if loose is not None and loose.group("name") != loose.group("name").lower():
            domain, remainder = _split_domain(loose.group("name"))
            if domain == DEFAULT_DOMAIN and "/" not in remainder:
                remainder = OFFICIAL_PREFIX + remainder
            raise InvalidParameter(
                f"invalid reference format: repository name ({remainder}) must be lowercase"
            )
        raise InvalidParameter("invalid reference format")
    domain, remainder = _split_domain(match.group("name"))
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    name = f"{domain}/{remainder}"
    if len(name) > 255:
        raise InvalidParameter(
            "invalid reference format: repository name must not be more than 255 characters"
        )
    tag = match.group("tag") or ""
    digest = match.group("digest") or ""
    if not tag and not digest and default_tag:
        tag = "latest"
    return Reference(name=name, tag=tag, digest=digest)


def looks_like_id(text: str) -> bool:
    raw = text.removeprefix("sha256:")
    return bool(re.fullmatch(r"[a-f0-9]{1,64}", raw))


class ReferenceStore:
    """Tags and digests to image IDs, persisted as dockerd's repositories.json."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._refs: dict[str, str] = {}  # str(Reference) -> image ID
        self._parsed: dict[str, Reference] = {}
        if path.exists():
            data = json.loads(path.read_bytes() or b"{}")
            for repo in (data.get("Repositories") or {}).values():
                for familiar, image_id in repo.items():
                    ref = parse(familiar)
                    self._refs[str(ref)] = image_id
                    self._parsed[str(ref)] = ref

    def _save(self) -> None:
        repositories: dict[str, dict[str, str]] = {}
        for key, image_id in sorted(self._refs.items()):
            ref = self._parsed[key]
            repositories.setdefault(ref.familiar_name, {})[ref.familiar()] = image_id
        atomic_write(self.path, json.dumps({"Repositories": repositories}).encode())

    def add(self, ref: Reference, image_id: str) -> str | None:
        """Point `ref` at `image_id`; return the image it pointed at before (if another)."""
        with self._lock:
            previous = self._refs.get(str(ref))
            self._refs[str(ref)] = image_id
            self._parsed[str(ref)] = ref
            self._save()
            return previous if previous != image_id else None

    def delete(self, ref: Reference) -> str:
        with self._lock:
            image_id = self._refs.pop(str(ref), None)
            if image_id is None:
                raise NotFound(f"No such image: {ref.familiar()}")
            self._parsed.pop(str(ref), None)
            self._save()
            return image_id

    def get(self, ref: Reference) -> str | None:
        return self._refs.get(str(ref))

    def references(self, image_id: str) -> list[Reference]:
        return sorted(
            (self._parsed[k] for k, v in self._refs.items() if v == image_id),
            key=lambda r: r.familiar(),
        )

    def all(self) -> dict[str, str]:
        return dict(self._refs)

    def parsed(self, key: str) -> Reference:
        return self._parsed[key]
