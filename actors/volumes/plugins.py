"""Volume plugins: discovery (socket, .spec or .json files in the plugin directories), the
plugin protocol (JSON over HTTP/1.1 on a unix socket or TCP) and the driver adapter."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import trio

from actors.volumes.model import Volume
from kernel.errors import InternalError, NotFound
from kernel.unixhttp import UnixHTTPConnection

ACCEPT = "application/vnd.docker.plugins.v1.2+json"
TIMEOUT = 30.0


class PluginClient:
    """One plugin's endpoint; every call is a POST with a JSON body and a JSON answer."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address

    def _connection(self) -> http.client.HTTPConnection:
        url = urlparse(self.address)
        if url.scheme == "unix":
            return UnixHTTPConnection(url.path, TIMEOUT)
        if url.scheme in ("tcp", "http"):
            return http.client.HTTPConnection(url.hostname or "", url.port, timeout=TIMEOUT)
        raise InternalError(f"plugin {self.name}: unsupported address {self.address}")

    def _call_sync(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        connection = self._connection()
        try:
            connection.request(
                "POST",
                f"/{method}",
                body=json.dumps(body).encode(),
                headers={"Accept": ACCEPT, "Content-Type": ACCEPT},
            )
            response = connection.getresponse()
            data = response.read()
        except OSError as exc:
            raise InternalError(f"{method}: plugin {self.name} is not reachable: {exc}") from None
        finally:
            connection.close()
        try:
            answer = json.loads(data or b"{}")
        except ValueError:
            answer = {"Err": data.decode(errors="replace").strip()}
        if response.status != 200 and not answer.get("Err"):
            answer["Err"] = f"plugin {self.name} answered {response.status}"
        return answer if isinstance(answer, dict) else {}

    async def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await trio.to_thread.run_sync(self._call_sync, method, body)
        if answer.get("Err"):
            raise InternalError(f"{method}: {answer['Err']}")
        return answer


def find_plugin(name: str, directories: tuple[str, ...]) -> str | None:
    """The plugin's address, as moby's pkg/plugins registry looks it up."""
    for directory in map(Path, directories):
        for sock in (directory / f"{name}.sock", directory / name / f"{name}.sock"):
            if sock.is_socket():
                return f"unix://{sock}"
        for spec in (directory / f"{name}.spec", directory / name / f"{name}.spec"):
            if spec.is_file():
                return spec.read_text().strip()
        for js in (directory / f"{name}.json", directory / name / f"{name}.json"):
            if js.is_file():
                address = json.loads(js.read_text()).get("Addr", "")
                return str(address)
    return None


class PluginDriver:
    """A volume driver served by a plugin (moby volume/drivers adapter)."""

    def __init__(self, client: PluginClient) -> None:
        self.client = client
        self.name = client.name
        self._scope: str | None = None
        self._paths: dict[str, str] = {}

    async def scope(self) -> str:
        if self._scope is None:
            try:
                answer = await self.client.call("VolumeDriver.Capabilities", {})
                scope = (answer.get("Capabilities") or {}).get("Scope") or "local"
            except InternalError:
                scope = "local"  # older plugins do not implement Capabilities
            self._scope = "global" if scope == "global" else "local"
        return self._scope

    def check_options(self, name: str, options: dict[str, str]) -> None:
        return None  # the plugin judges its own options at Create

    async def create(self, name: str, options: dict[str, str]) -> None:
        await self.client.call("VolumeDriver.Create", {"Name": name, "Opts": options or {}})

    async def remove(self, volume: Volume) -> None:
        await self.client.call("VolumeDriver.Remove", {"Name": volume.Name})

    async def mount(self, volume: Volume, ref: str, first: bool) -> str:
        answer = await self.client.call("VolumeDriver.Mount", {"Name": volume.Name, "ID": ref})
        path = str(answer.get("Mountpoint") or "")
        self._paths[volume.Name] = path
        return path

    async def unmount(self, volume: Volume, ref: str, last: bool) -> None:
        await self.client.call("VolumeDriver.Unmount", {"Name": volume.Name, "ID": ref})

    async def refresh_path(self, volume: Volume) -> str:
        answer = await self.client.call("VolumeDriver.Path", {"Name": volume.Name})
        path = str(answer.get("Mountpoint") or "")
        self._paths[volume.Name] = path
        return path

    async def exists(self, volume: Volume) -> bool:
        try:
            await self.client.call("VolumeDriver.Get", {"Name": volume.Name})
        except InternalError:
            return False
        return True

    def path(self, volume: Volume) -> str:
        return self._paths.get(volume.Name, volume.Mountpoint)

    async def list(self) -> list[tuple[str, str]]:
        """(name, mountpoint) of every volume the plugin has, ours or made outside."""
        answer = await self.client.call("VolumeDriver.List", {})
        return [
            (str(v.get("Name") or ""), str(v.get("Mountpoint") or ""))
            for v in answer.get("Volumes") or []
            if v.get("Name")
        ]


async def activate(name: str, directories: tuple[str, ...]) -> PluginDriver:
    """Find the plugin, handshake, and check that it serves volumes."""
    address = await trio.to_thread.run_sync(find_plugin, name, directories)
    if address is None:
        raise NotFound(f'error looking up volume plugin {name}: plugin "{name}" not found')
    client = PluginClient(name, address)
    answer = await client.call("Plugin.Activate", {})
    if "VolumeDriver" not in (answer.get("Implements") or []):
        raise NotFound(
            f"error looking up volume plugin {name}: plugin {name} does not implement VolumeDriver"
        )
    return PluginDriver(client)
