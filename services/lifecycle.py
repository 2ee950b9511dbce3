"""Graceful shutdown: the first SIGTERM/SIGINT asks to stop, a second exits at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import NoReturn

from services.logs import get_logger

log = get_logger("lifecycle")
EXIT_ON_SECOND_SIGNAL = 130


def install_stop_signals(stop: asyncio.Event) -> None:
    """Set `stop` on the first signal; the handler only sets state, the service drains."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal, exiting now", signal=signal.Signals(signum).name)
            exit_now(EXIT_ON_SECOND_SIGNAL)
        log.info("stop requested", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Wait for `event`, or for `timeout_s` to pass, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)


def exit_now(code: int) -> NoReturn:
    """Exit at once, skipping cleanup that would block (threads stuck in librdkafka).

    The log lines that explain why are flushed first: os._exit drops buffers.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
