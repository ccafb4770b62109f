"""The signals actor: SIGTERM/SIGINT stop the daemon (the third one at once), SIGHUP
reloads the configuration, SIGUSR1 dumps the actor tree and every task's stack."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("pydockerd.signals")

FORCE_AFTER = 3  # interrupts before giving up on a clean shutdown, as dockerd


async def run(
    *,
    on_stop: Callable[[], None],
    on_reload: Callable[[], Awaitable[None]],
    on_dump: Callable[[], Awaitable[None]],
    stopping: trio.Event,
    task_status: trio.TaskStatus[None],
) -> None:
    interrupts = 0
    with trio.open_signal_receiver(
        signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1
    ) as signals:
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on, stopping, nursery.cancel_scope)
            async for signum in signals:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    interrupts += 1
                    if interrupts >= FORCE_AFTER:
                        log.info(
                            "Forcing pydockerd shutdown without cleanup; %d interrupts received",
                            interrupts,
                        )
                        os._exit(128 + signum)
                    log.info("Processing signal '%s'", signal.Signals(signum).name)
                    on_stop()
                elif signum == signal.SIGHUP:
                    nursery.start_soon(on_reload)
                elif signum == signal.SIGUSR1:
                    nursery.start_soon(on_dump)


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
