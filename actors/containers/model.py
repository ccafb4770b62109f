"""A container as the containers actor keeps it, persists it and shows it to the API.

Field names are the Engine API's, so inspect is the record itself plus derived fields.
`Config` and `HostConfig` stay plain JSON objects: every field a client sent survives a
round trip through inspect, and the actor reads the ones it acts on.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from actors.containers.mounts import MountPoint
from kernel.clock import now_rfc3339, unix_seconds

ZERO_TIME = "0001-01-01T00:00:00Z"


class State(msgspec.Struct, kw_only=True):
    Status: str = "created"  # created running paused restarting removing exited dead
    Running: bool = False
    Paused: bool = False
    Restarting: bool = False
    OOMKilled: bool = False
    Dead: bool = False
    Pid: int = 0
    ExitCode: int = 0
    Error: str = ""
    StartedAt: str = ZERO_TIME
    FinishedAt: str = ZERO_TIME

    def set_running(self, pid: int) -> None:
        self.Status, self.Running, self.Paused, self.Restarting = "running", True, False, False
        self.Pid, self.ExitCode, self.Error, self.OOMKilled = pid, 0, "", False
        self.StartedAt = now_rfc3339()

    def set_exited(self, code: int, *, oom: bool = False, error: str = "") -> None:
        self.Status, self.Running, self.Paused, self.Restarting = "exited", False, False, False
        self.Pid, self.ExitCode, self.OOMKilled, self.Error = 0, code, oom, error
        self.FinishedAt = now_rfc3339()


class Container(msgspec.Struct, kw_only=True):
    Id: str
    Created: str
    Path: str
    Args: list[str]
    Config: dict[str, Any]
    HostConfig: dict[str, Any]
    State: State
    Image: str
    Name: str
    Driver: str = ""
    LogPath: str = ""
    ResolvConfPath: str = ""
    HostnamePath: str = ""
    HostsPath: str = ""
    RestartCount: int = 0
    Platform: str = "linux"
    NetworkSettings: dict[str, Any] = msgspec.field(default_factory=dict)
    Mounts: list[dict[str, Any]] = msgspec.field(default_factory=list)
    # The container's mounts as planned at create (actors/containers/mounts.py); `Mounts`
    # is their API view, kept in step by `sync_mounts`.
    MountPoints: list[MountPoint] = msgspec.field(default_factory=list)
    # Bookkeeping dockerd keeps too (restart policies, `dead` after a torn removal).
    HasBeenStartedBefore: bool = False
    HasBeenManuallyStopped: bool = False
    RemovalInProgress: bool = False

    @property
    def short_id(self) -> str:
        return self.Id[:12]

    @property
    def log_driver(self) -> str:
        return str((self.HostConfig.get("LogConfig") or {}).get("Type") or "json-file")

    @property
    def tty(self) -> bool:
        return bool(self.Config.get("Tty"))

    def image_name(self) -> str:
        return str(self.Config.get("Image") or self.Image)

    def sync_mounts(self) -> None:
        self.Mounts = [point.api() for point in self.MountPoints]

    def inspect(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        for key in (
            "HasBeenStartedBefore",
            "HasBeenManuallyStopped",
            "RemovalInProgress",
            "MountPoints",
        ):
            data.pop(key)
        data["ExecIDs"] = None
        data["MountLabel"] = ""
        data["ProcessLabel"] = ""
        data["AppArmorProfile"] = ""
        data["GraphDriver"] = {"Name": self.Driver, "Data": None}
        return data

    def summary(self) -> dict[str, Any]:
        """The `/containers/json` entry (docker ps)."""
        ports: list[dict[str, Any]] = []
        for private, bindings in (self.NetworkSettings.get("Ports") or {}).items():
            port, _, proto = private.partition("/")
            for binding in bindings or [{}]:
                entry: dict[str, Any] = {"PrivatePort": int(port), "Type": proto or "tcp"}
                if binding.get("HostPort"):
                    entry["PublicPort"] = int(binding["HostPort"])
                    entry["IP"] = binding.get("HostIp") or "0.0.0.0"
                ports.append(entry)
        command = " ".join(
            msgspec.json.encode(a).decode() if " " in a else a for a in [self.Path, *self.Args] if a
        )
        return {
            "Id": self.Id,
            "Names": [self.Name],
            "Image": self.image_name(),
            "ImageID": self.Image,
            "Command": command,
            "Created": unix_seconds(self.Created),
            "Ports": ports,
            "Labels": self.Config.get("Labels") or {},
            "State": self.State.Status,
            "Status": status_text(self.State),
            "HostConfig": {"NetworkMode": self.HostConfig.get("NetworkMode") or "default"},
            "NetworkSettings": {"Networks": self.NetworkSettings.get("Networks") or {}},
            "Mounts": self.Mounts,
        }


def human_duration(seconds: float) -> str:
    """Go's units.HumanDuration, as `docker ps` shows ages."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def status_text(state: State) -> str:
    """The human `Status` column of docker ps (moby container/state.go String)."""
    now = time.time()

    def since(rfc3339: str) -> str:
        return human_duration(now - unix_seconds(rfc3339))

    if state.Restarting:
        return f"Restarting ({state.ExitCode}) {since(state.FinishedAt)} ago"
    if state.Running:
        return (
            f"Up {since(state.StartedAt)} (Paused)"
            if state.Paused
            else f"Up {since(state.StartedAt)}"
        )
    if state.Status == "removing":
        return "Removal In Progress"
    if state.Dead:
        return "Dead"
    if state.StartedAt == ZERO_TIME:
        return "Created"
    if state.FinishedAt == ZERO_TIME:
        return ""
    return f"Exited ({state.ExitCode}) {since(state.FinishedAt)} ago"
