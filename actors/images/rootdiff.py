"""`docker diff`: what a container changed, comparing its root with the image's (dockerd's
naive diff, which works for every graph driver)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

MODIFIED, ADDED, DELETED = 0, 1, 2


def _entries(root: Path) -> dict[str, os.stat_result]:
    found: dict[str, os.stat_result] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(directory, name)
            found["/" + os.path.relpath(full, root)] = os.lstat(full)
    return found


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode) or a.st_mode != b.st_mode:
        return False
    if (a.st_uid, a.st_gid) != (b.st_uid, b.st_gid):
        return False
    if stat.S_ISDIR(a.st_mode):
        return True  # a directory counts as changed only through its children
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


def changes(image_root: Path, container_root: Path) -> list[dict[str, object]]:
    """[{"Path", "Kind"}] sorted by path; parents of changes show as modified."""
    before, after = _entries(image_root), _entries(container_root)
    kinds: dict[str, int] = {}
    for path, info in after.items():
        if path not in before:
            kinds[path] = ADDED
        elif not _same(before[path], info):
            kinds[path] = MODIFIED
    for path in before.keys() - after.keys():
        kinds[path] = DELETED
    for path in list(kinds):
        parent = os.path.dirname(path)
        while parent not in ("/", "") and parent in before and parent in after:
            kinds.setdefault(parent, MODIFIED)
            parent = os.path.dirname(parent)
    # Below an added or deleted directory, dockerd lists only the directory itself.
    listed = sorted(kinds)
    result = []
    for path in listed:
        parent = os.path.dirname(path)
        hidden = False
        while parent not in ("/", ""):
            if kinds.get(parent) == DELETED:
                hidden = True
                break
            parent = os.path.dirname(parent)
        if not hidden:
            result.append({"Path": path, "Kind": kinds[path]})
    return result
