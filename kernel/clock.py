"""RFC 3339 timestamps as Docker writes and reads them."""

from __future__ import annotations

import calendar
import re
import time

_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d\d):(\d\d))?"
)


def rfc3339(ns: int) -> str:
    """Fixed nine fraction digits, UTC: container state times and log lines."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
    return f"{seconds}.{ns % 1_000_000_000:09d}Z"


def rfc3339_nano(ns: int) -> str:
    """Go's RFC3339Nano: trailing zeros of the fraction trimmed, UTC (image times)."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
    fraction = f"{ns % 1_000_000_000:09d}".rstrip("0")
    return f"{seconds}.{fraction}Z" if fraction else f"{seconds}Z"


def now_rfc3339() -> str:
    return rfc3339(time.time_ns())


def parse_time(text: str) -> int | None:
    """RFC 3339 (any fraction, `Z` or an offset) -> nanoseconds since the epoch."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if match[9]:
        offset = int(match[10]) * 3600 + int(match[11]) * 60
        seconds -= offset if match[9] == "+" else -offset
    fraction = (match[7] or "0")[:9].ljust(9, "0")
    return seconds * 1_000_000_000 + int(fraction)


def unix_seconds(text: str) -> int:
    """Whole seconds of an RFC 3339 time; 0 when it is empty or not one."""
    ns = parse_time(text or "")
    return ns // 1_000_000_000 if ns else 0
