"""Container stdio through named FIFOs that the containerd shim holds open.

The FIFOs live in exec-root, so after a daemon restart the same paths are reopened and
output written meanwhile (up to the pipe buffer) is still there to read.

Opening is arranged so that nothing ever blocks and EOF means "the shim closed its end":
readers open O_RDONLY|O_NONBLOCK, and until the shim has opened its writer (task create)
we hold a writer of our own so the reader does not see an early EOF. The stdin writer is
opened O_RDWR so it never waits for the shim; closing it is how the process sees EOF.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import trio


@dataclass(frozen=True)
class FifoSet:
    stdin: str
    stdout: str
    stderr: str
    terminal: bool

    @classmethod
    def for_process(cls, directory: Path, process_id: str, *, terminal: bool) -> FifoSet:
        """FIFOs for the container's init process (`init`) or an exec (its ID)."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / f"{process_id}-{name}" for name in ("stdin", "stdout", "stderr")]
        for path in paths:
            try:
                mode = path.lstat().st_mode
                if stat.S_ISFIFO(mode):
                    continue
                path.unlink()
            except FileNotFoundError:
                pass
            os.mkfifo(path, 0o600)
        # With a terminal the shim merges stderr into stdout; it gets no stderr FIFO.
        return cls(
            stdin=str(paths[0]),
            stdout=str(paths[1]),
            stderr="" if terminal else str(paths[2]),
            terminal=terminal,
        )

    def remove(self) -> None:
        for path in (self.stdin, self.stdout, self.stderr):
            if path:
                Path(path).unlink(missing_ok=True)


class ProcessIO:
    """Our ends of one process's FIFOs."""

    def __init__(self, fifos: FifoSet, *, with_stdin: bool, before_create: bool) -> None:
        self.fifos = fifos
        self._holds: list[int] = []
        self.stdout = self._reader(fifos.stdout, before_create)
        self.stderr = self._reader(fifos.stderr, before_create) if fifos.stderr else None
        self.stdin: trio.lowlevel.FdStream | None = None
        if with_stdin:
            fd = os.open(fifos.stdin, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            self.stdin = trio.lowlevel.FdStream(fd)

    def _reader(self, path: str, hold: bool) -> trio.lowlevel.FdStream:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if hold:
            self._holds.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        return trio.lowlevel.FdStream(fd)

    def release_holds(self) -> None:
        """The shim has its writers open (task created): EOF now means it closed them."""
        for fd in self._holds:
            os.close(fd)
        self._holds.clear()

    async def close_stdin(self) -> None:
        if self.stdin is not None:
            await self.stdin.aclose()
            self.stdin = None

    async def aclose(self) -> None:
        self.release_holds()
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                await stream.aclose()
