"""Daemon logging in dockerd's two formats (logrus text and JSON), level changeable live."""

from __future__ import annotations

import json
import logging
import sys

from kernel.clock import rfc3339

LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}
_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "fatal",
}

ROOT = "pydockerd"


class _LogrusFormatter(logging.Formatter):
    """The fields logrus writes: time, level, msg (with any traceback in msg)."""

    def fields(self, record: logging.LogRecord) -> tuple[str, str, str]:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return rfc3339(int(record.created * 1e9)), _NAMES.get(record.levelno, "info"), message


class TextFormatter(_LogrusFormatter):
    def format(self, record: logging.LogRecord) -> str:
        time, level, message = self.fields(record)
        return f'time="{time}" level={level} msg={json.dumps(message)}'


class JsonFormatter(_LogrusFormatter):
    def format(self, record: logging.LogRecord) -> str:
        time, level, message = self.fields(record)
        return json.dumps({"level": level, "msg": message, "time": time})


def setup(*, level: str, debug: bool, log_format: str) -> None:
    root = logging.getLogger(ROOT)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.handlers[:] = [handler]
    root.propagate = False
    set_level(level=level, debug=debug)


def set_level(*, level: str, debug: bool) -> None:
    """Apply `log-level`, or debug when `debug` is on (as dockerd does)."""
    level_number = LEVELS.get(level.lower(), logging.INFO)
    logging.getLogger(ROOT).setLevel(logging.DEBUG if debug else level_number)
