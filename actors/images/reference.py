"""Image references as distribution/reference parses them (`busybox` is
docker.io/library/busybox:latest), their familiar forms, and the reference store that maps
tags and digests to image IDs, persisted as dockerd's `repositories.json`."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from kernel.errors import Conflict, InvalidParameter, NotFound
from kernel.fsutil import atomic_write

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[_.]|__|[-]+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
_REFERENCE = re.compile(rf"^{_NAME}(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$")
_TAG_ONLY = re.compile(rf"^{_TAG}$")
_IDENTIFIER = re.compile(r"^[a-f0-9]{64}$")
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}


class InvalidReference(InvalidParameter):
    """A reference that does not parse (dockerd's texts)."""


def _parse_digest(text: str) -> str:
    """go-digest's Parse: a registered algorithm and hex of the right length."""
    algorithm, sep, encoded = text.partition(":")
    if not sep or not algorithm or not encoded:
        raise InvalidReference("invalid checksum digest format")
    length = _DIGEST_HEX.get(algorithm)
    if length is None:
        raise InvalidReference("unsupported digest algorithm")
    if len(encoded) != length:
        raise InvalidReference("invalid checksum digest length")
    if not re.fullmatch(r"[a-f0-9]+", encoded):
        raise InvalidReference("invalid checksum digest format")
    return text


@dataclass(frozen=True, order=True)
class Reference:
    """A normalised reference: `name` is fully qualified (docker.io/library/busybox);
    a tag, a digest, both (a pull by digest may keep its tag), or neither."""

    name: str
    tag: str = ""
    digest: str = ""

    @property
    def domain(self) -> str:
        return self.name.partition("/")[0]

    @property
    def path(self) -> str:
        return self.name.partition("/")[2]

    @property
    def familiar_name(self) -> str:
        """busybox, me/app, localhost:5000/app: the name as `docker images` shows it."""
        domain, _, path = self.name.partition("/")
        if domain != DEFAULT_DOMAIN:
            return self.name
        if path.startswith(OFFICIAL_PREFIX) and "/" not in path[len(OFFICIAL_PREFIX) :]:
            return path[len(OFFICIAL_PREFIX) :]
        return path

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def familiar(self) -> str:
        """busybox:latest, localhost:5000/app@sha256:..."""
        return self.familiar_name + self._suffix()

    def __str__(self) -> str:
        return self.name + self._suffix()

    @property
    def name_only(self) -> bool:
        return not self.tag and not self.digest

    def with_default_tag(self) -> Reference:
        """TagNameOnly: a bare name means its `latest` tag."""
        return Reference(self.name, DEFAULT_TAG) if self.name_only else self

    def for_store(self) -> Reference:
        """What the reference store keys by: the digest wins over a tag (favorDigest)."""
        if self.digest:
            return Reference(self.name, digest=self.digest)
        return self.with_default_tag()


def _split_docker_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep:
        return DEFAULT_DOMAIN, OFFICIAL_PREFIX + name
    if first == "localhost" or "." in first or ":" in first or first.lower() != first:
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def _parse_plain(text: str) -> Reference:
    """distribution/reference's Parse (no normalisation)."""
    if not text:
        raise InvalidReference("repository name must have at least one component")
    match = _REFERENCE.match(text)
    if match is None:
        lowered = text.lower()
        if lowered != text and _REFERENCE.match(lowered):
            raise InvalidReference("repository name must be lowercase")
        raise InvalidReference("invalid reference format")
    if len(match["path"]) > NAME_MAX:
        raise InvalidReference(f"repository name must not be more than {NAME_MAX} characters")
    domain = match["domain"]
    name = f"{domain}/{match['path']}" if domain else match["path"]
    digest = _parse_digest(match["digest"]) if match["digest"] else ""
    return Reference(name, match["tag"] or "", digest)


def parse_named(text: str) -> Reference:
    """ParseNormalizedNamed: `busybox` -> docker.io/library/busybox (no tag added)."""
    if _IDENTIFIER.match(text):
        raise InvalidReference(
            f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = _split_docker_domain(text)
    remote = remainder.split(":", 1)[0]
    if remote.lower() != remote:
        raise InvalidReference(
            f"invalid reference format: repository name ({remote}) must be lowercase"
        )
    return _parse_plain(f"{domain}/{remainder}")


def parse(text: str) -> Reference:
    """A normalised reference with dockerd's default tag: `busybox` -> ...busybox:latest."""
    return parse_named(text).with_default_tag()


def parse_any(text: str) -> Reference | str:
    """ParseAnyReference: a full image ID or digest (returned as `sha256:<hex>`), or a
    normalised name (returned as a Reference, tag not defaulted)."""
    if _IDENTIFIER.match(text):
        return f"sha256:{text}"
    try:
        return _parse_digest(text)
    except InvalidReference:
        pass
    return parse_named(text)


def repo_tag(repo: str, tag: str) -> Reference:
    """The reference for the API's `repo` and `tag` parameters (tag, import, commit)."""
    if not repo:
        raise InvalidReference("repository name must have at least one component")
    ref = parse_named(repo)
    if ref.digest:
        raise InvalidReference("cannot import digest reference")
    if tag:
        if not _TAG_ONLY.match(tag):
            raise InvalidReference("invalid tag format")
        ref = Reference(ref.name, tag)
    return ref.with_default_tag()


class ReferenceStore:
    """Tags and digests to image IDs, as dockerd's `repositories.json`:
    {"Repositories": {"busybox": {"busybox:latest": "sha256:..."}}}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._by_ref: dict[Reference, str] = {}
        if path.exists():
            data = json.loads(path.read_bytes() or b"{}")
            for repository in (data.get("Repositories") or {}).values():
                for text, image_id in (repository or {}).items():
                    try:
                        self._by_ref[parse_named(text)] = image_id
                    except InvalidParameter:
                        continue  # as dockerd: should never happen, skip it

    def _save(self) -> None:
        repositories: dict[str, dict[str, str]] = {}
        for ref, image_id in sorted(self._by_ref.items()):
            repositories.setdefault(ref.familiar_name, {})[ref.familiar()] = image_id
        data = json.dumps({"Repositories": repositories}, separators=(",", ":")).encode()
        atomic_write(self.path, data, mode=0o600)

    def add(self, ref: Reference, image_id: str, *, force: bool = True) -> str | None:
        """Point `ref` at `image_id`; returns the image it pointed at before, if another."""
        ref = ref.for_store()
        if ref.familiar_name == "sha256":
            raise InvalidReference(
                "refusing to create an ambiguous tag using digest algorithm as name"
            )
        with self._lock:
            previous = self._by_ref.get(ref)
            if previous is not None and previous != image_id:
                if ref.digest:
                    raise Conflict(f"Cannot overwrite digest {ref.digest}")
                if not force:
                    raise Conflict(
                        f"Conflict: Tag {ref.familiar()} is already set to image {previous}, "
                        "if you want to replace it, please use the force option"
                    )
            if previous != image_id:
                self._by_ref[ref] = image_id
                self._save()
            return previous if previous != image_id else None

    def delete(self, ref: Reference) -> str:
        """Remove `ref`; returns the image ID it pointed at."""
        ref = ref.for_store()
        with self._lock:
            image_id = self._by_ref.pop(ref, None)
            if image_id is None:
                raise NotFound(f"No such image: {ref.familiar()}")
            self._save()
            return image_id

    def get(self, ref: Reference) -> str | None:
        return self._by_ref.get(ref.for_store())

    def references(self, image_id: str) -> list[Reference]:
        """Every reference to the image, sorted as dockerd sorts them (by full string)."""
        return sorted((r for r, i in self._by_ref.items() if i == image_id), key=str)

    def by_name(self, name: str) -> list[tuple[Reference, str]]:
        """Every reference in repository `name` (fully qualified), with its image ID."""
        return sorted(((r, i) for r, i in self._by_ref.items() if r.name == name),
                      key=lambda pair: str(pair[0]))  # fmt: skip

    def all(self) -> dict[Reference, str]:
        return dict(self._by_ref)
