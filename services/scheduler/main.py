"""`kbatch scheduler`: run the faust app until SIGTERM."""

from __future__ import annotations

import faust

from services import build_info
from services.lifecycle import exit_now
from services.logs import configure_logging, get_logger
from services.scheduler.app import SchedulerService
from services.scheduler.settings import SchedulerSettings

log = get_logger("scheduler")


def run(settings: SchedulerSettings | None = None) -> None:
    settings = settings or SchedulerSettings()
    configure_logging(settings.log_level, settings.log_format)
    build_info.record("scheduler")
    service = SchedulerService(settings)
    service.create_changelogs()
    app = service.app
    # faust's Worker owns the event loop and stops the app on SIGTERM/SIGINT.
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    try:
        worker.execute_from_commandline()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    log.info("scheduler stopped", code=code)
    # Every service has stopped by now, but faust-streaming 0.15's consumer thread
    # can outlive a failed final offset commit and would hold interpreter exit
    # forever; what it had not committed is re-read by the next scheduler.
    exit_now(code)
