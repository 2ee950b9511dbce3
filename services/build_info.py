"""`kbatch_build_info`: which kbatch (and Python) a scraped process runs."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import Info

BUILD = Info("kbatch_build", "kbatch build information")


def record(service: str) -> None:
    try:
        kbatch_version = version("kbatch")
    except PackageNotFoundError:
        kbatch_version = "unknown"
    BUILD.info({"version": kbatch_version, "service": service, "python": platform.python_version()})
