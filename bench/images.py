"""`docker load -i` and `docker save -o` throughput on a ~100 MB incompressible image."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from bench.engines import Engine
from tests.fixtures.busybox import _info, image_config

FILES_PER_LAYER = 50
FILE_SIZE = 1 << 20
TAG = "bench-big:latest"


def _write_layer(path: Path, index: int) -> str:
    """A layer tar of FILES_PER_LAYER random files; returns its sha256 hex."""
    with tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_info(f"layer{index}/", tarfile.DIRTYPE, 0o755))
        for n in range(FILES_PER_LAYER):
            data = os.urandom(FILE_SIZE)
            info = _info(f"layer{index}/f{n:03d}.bin", tarfile.REGTYPE, 0o644, len(data))
            tar.addfile(info, _Reader(data))
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _Reader:
    """The smallest file-like tarfile.addfile needs (avoids a BytesIO copy)."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else self._pos + size
        chunk = bytes(self._view[self._pos : end])
        self._pos += len(chunk)
        return chunk


def build_archive(directory: Path) -> Path:
    """A `docker save` archive with two ~50 MB layers of random bytes, at directory/big.tar."""
    layers = []
    for index in range(2):
        path = directory / f"layer{index}.tar"
        layers.append((path, _write_layer(path, index)))
    config = image_config([f"sha256:{hex_}" for _, hex_ in layers])
    image_hex = hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        [
            {
                "Config": f"{image_hex}.json",
                "RepoTags": [TAG],
                "Layers": [f"{hex_}/layer.tar" for _, hex_ in layers],
            }
        ]
    ).encode()
    archive = directory / "big.tar"
    with tarfile.open(archive, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        entries: list[tuple[str, Path | bytes]] = [
            (f"{image_hex}.json", config),
            ("manifest.json", manifest),
        ]
        for path, hex_ in layers:
            tar.addfile(_info(f"{hex_}/", tarfile.DIRTYPE, 0o755))
            entries.append((f"{hex_}/layer.tar", path))
        for name, content in sorted(entries, key=lambda e: e[0]):
            if isinstance(content, Path):
                with content.open("rb") as f:
                    size = content.stat().st_size
                    tar.addfile(_info(name, tarfile.REGTYPE, 0o644, size), f)
            else:
                data = content
                tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(data)), _Reader(data))
    for path, _ in layers:
        path.unlink()
    return archive


def docker(engine: Engine, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DOCKER_HOST": f"unix://{engine.sock}"}
    return subprocess.run(["docker", *args], env=env, capture_output=True, check=True)


def measure(engine: Engine, archive: Path) -> dict[str, float]:
    """MB/s of `docker load -i` and `docker save -o` of the archive (MB = 1e6 bytes)."""
    megabytes = archive.stat().st_size / 1e6
    with tempfile.TemporaryDirectory(prefix="bench-save-", dir="/tmp") as out:
        start = time.perf_counter()
        docker(engine, "load", "-i", str(archive))
        load_s = time.perf_counter() - start
        target = Path(out) / "saved.tar"
        start = time.perf_counter()
        docker(engine, "save", "-o", str(target), TAG)
        save_s = time.perf_counter() - start
        saved_mb = target.stat().st_size / 1e6
    docker(engine, "rmi", TAG)
    return {"load_mbps": megabytes / load_s, "save_mbps": saved_mb / save_s}
