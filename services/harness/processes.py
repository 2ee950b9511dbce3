"""Run kbatch services as real processes, the way an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import httpx

KBATCH = str(Path(sys.executable).with_name("kbatch"))


def wait_serving(
    url: str,
    timeout_s: float,
    process: subprocess.Popen[bytes] | None = None,
    headers: dict[str, str] | None = None,
    describe: Callable[[], str] = lambda: "",
) -> None:
    """Poll `url` until it answers 200; fail at once if `process` exits meanwhile.
    `describe()` (a log tail, say) is added to the failure."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} before {url} answered: {describe()}")
        try:
            if httpx.get(url, headers=headers, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not answering after {timeout_s}s: {describe()}")


class ServiceProcess:
    """A `kbatch <command>` child process with its log captured to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            [KBATCH, *args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, url: str, timeout_s: float = 60) -> None:
        wait_serving(url, timeout_s, self.process, describe=lambda: f"{self.args}:\n{self.log()}")

    def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM, wait, and return the exit code (SIGKILL only if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        self.process.kill()
        self.process.wait()
        self._log.close()


def stop_all(processes: Iterable[ServiceProcess | None]) -> None:
    """SIGTERM every process, each even when another failed, then require that every
    one exited 0 (a failed check must not leave the rest running)."""
    exits = [(process, process.terminate()) for process in processes if process is not None]
    failed = [f"{p.args} exited {code}:\n{p.log()}" for p, code in exits if code != 0]
    assert not failed, "\n\n".join(failed)
