"""A small volume plugin for the tests: the Docker plugin protocol (JSON over HTTP on a
unix socket) served by a stdlib thread; each volume is a directory under `state`."""

from __future__ import annotations

import json
import os
import shutil
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    plugin: VolumePlugin


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None  # unix sockets have no client address to log

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        answer = self.server.plugin.handle(self.path.lstrip("/"), body)
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.docker.plugins.v1.2+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class VolumePlugin:
    def __init__(self, sock: Path, state: Path) -> None:
        self.sock = sock
        self.state = state
        self.volumes: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def handle(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls.append(method)
            name = str(body.get("Name", ""))
            path = str(self.state / name)
            if method == "Plugin.Activate":
                return {"Implements": ["VolumeDriver"]}
            if method == "VolumeDriver.Capabilities":
                return {"Capabilities": {"Scope": "local"}}
            if method == "VolumeDriver.Create":
                os.makedirs(path, exist_ok=True)
                self.volumes[name] = {"Opts": body.get("Opts") or {}, "mounts": 0}
                return {"Err": ""}
            if name not in self.volumes and method != "VolumeDriver.List":
                return {"Err": f"no such volume {name}"}
            if method == "VolumeDriver.Remove":
                del self.volumes[name]
                shutil.rmtree(path, ignore_errors=True)
                return {"Err": ""}
            if method in ("VolumeDriver.Mount", "VolumeDriver.Path"):
                if method.endswith("Mount"):
                    self.volumes[name]["mounts"] += 1
                return {"Mountpoint": path, "Err": ""}
            if method == "VolumeDriver.Unmount":
                self.volumes[name]["mounts"] -= 1
                return {"Err": ""}
            if method == "VolumeDriver.Get":
                return {"Volume": {"Name": name, "Mountpoint": path}, "Err": ""}
            if method == "VolumeDriver.List":
                return {
                    "Volumes": [
                        {"Name": n, "Mountpoint": str(self.state / n)} for n in self.volumes
                    ],
                    "Err": "",
                }
            return {"Err": f"unknown method {method}"}

    def __enter__(self) -> VolumePlugin:
        self._server = _Server(str(self.sock), _Handler)
        self._server.plugin = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self.sock.unlink(missing_ok=True)
