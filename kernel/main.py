"""The process entrypoint: flags and daemon.json, umask, pidfile, logging, then the daemon."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kernel import VERSION, logs
from kernel.pidfile import PidfileError, remove_pidfile, write_pidfile
from kernel.trionics import collapse

if TYPE_CHECKING:
    import config

log = logging.getLogger("pydockerd")


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    import config

    try:
        options = config.parse_args(argv)
    except config.ConfigError as exc:
        print(f"pydockerd: {exc}", file=sys.stderr)
        return 1
    if options.version:
        print(f"pydockerd version {VERSION}")
        return 0
    try:
        cfg = config.load(options)
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if options.validate:
        print("configuration OK")
        return 0

    os.umask(0o022)
    logs.setup(level=cfg.log_level, debug=cfg.debug, log_format=cfg.log_format)
    pidfile = Path(cfg.pidfile)
    try:
        write_pidfile(pidfile)
    except (PidfileError, OSError) as exc:
        log.error("failed to start daemon: %s", exc)
        return 1
    try:
        return _serve(options, cfg)
    finally:
        remove_pidfile(pidfile)


def _serve(options: config.Options, cfg: config.DaemonConfig) -> int:
    import trio

    from actors.daemon import Daemon
    from kernel.errors import StartupError
    from kernel.supervisor import SupervisorGaveUp

    try:
        daemon = Daemon(options, cfg)
        trio.run(daemon.run)
    except BaseException as exc:  # every failure becomes a log line and exit 1
        cause = collapse(exc)
        if isinstance(cause, KeyboardInterrupt):
            return 130
        if isinstance(cause, SupervisorGaveUp):
            log.error("shutting down: %s", cause)
        elif isinstance(cause, StartupError | OSError):
            log.error("failed to start daemon: %s", cause)
        else:
            log.exception("daemon failed", exc_info=cause)
        return 1
    log.info("Daemon shutdown complete")
    return 0


if __name__ == "__main__":
    main()
