"""A single-node KRaft Kafka broker assembled from Maven Central jars.

Used by `kbatch kafka up|down|status`, the test session and the demo. The jars
are copied once per Kafka version into the state directory; Maven's own
repository cache (~/.m2) makes later copies local.
"""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from string import Template

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from services.errors import ConfigurationError, KafkaUnavailableError
from services.resources import data_dir

# Brokers started by this process, kept so they are reaped rather than left as zombies.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class BrokerLayout:
    """Where one local broker keeps its jars, data, logs and pid."""

    home: Path
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    jar_cache: Path | None = None  # shared jar directory; default: inside `home`
    node_id: int = 1
    # A cluster's controllers as (node id, controller port), all on `host`; empty: alone.
    voters: tuple[tuple[int, int], ...] = ()
    cluster_id: str | None = None  # shared by a cluster's nodes; alone: made at format

    @property
    def replication(self) -> int:
        return min(3, max(1, len(self.voters)))

    @property
    def quorum(self) -> str:
        if not self.voters:
            return f"controller.quorum.bootstrap.servers={self.host}:{self.controller_port}"
        voters = ",".join(f"{node}@{self.host}:{port}" for node, port in self.voters)
        return f"controller.quorum.voters={voters}"

    @property
    def jars(self) -> Path:
        # Absolute: Maven resolves a relative output directory against the pom's folder.
        return (self.jar_cache or self.home / "jars").resolve()

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def config(self) -> Path:
        return self.home / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


def fetch_jars(layout: BrokerLayout) -> Path:
    """Copy Kafka and its runtime dependencies from Maven Central (cached). Brokers
    starting together (test workers, a cluster's nodes) share one cache: the first
    fetches while the others wait on its lock, then find the cache complete."""
    marker = layout.jars / ".complete"
    pom = data_dir("kafka") / "pom.xml"
    if marker.exists() and marker.read_text() == pom.read_text():
        return layout.jars
    layout.jars.parent.mkdir(parents=True, exist_ok=True)
    with (layout.jars.parent / f"{layout.jars.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if marker.exists() and marker.read_text() == pom.read_text():
            return layout.jars
        return _fetch_jars_locked(layout, pom, marker)


def _fetch_jars_locked(layout: BrokerLayout, pom: Path, marker: Path) -> Path:
    if shutil.which("mvn") is None:
        raise ConfigurationError("Maven (mvn) is needed to fetch the Kafka jars")
    if layout.jars.exists():
        shutil.rmtree(layout.jars)
    layout.jars.mkdir(parents=True)
    command = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={layout.jars}",
        "-DincludeScope=runtime",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise ConfigurationError(f"mvn failed:\n{completed.stdout}\n{completed.stderr}")
    marker.write_text(pom.read_text())
    return layout.jars


def _java_command(layout: BrokerLayout, main_class: str, *args: str) -> list[str]:
    return [
        "java",
        "-Xms256m",
        "-Xmx1g",
        "-XX:+UseG1GC",
        f"-Dkafka.logs.dir={layout.logs}",
        f"-Dlog4j2.configurationFile={data_dir('kafka') / 'log4j2.properties'}",
        "-cp",
        f"{layout.jars}/*",
        main_class,
        *args,
    ]


def _write_config(layout: BrokerLayout) -> None:
    template = Template((data_dir("kafka") / "server.properties.template").read_text())
    layout.config.write_text(
        template.substitute(
            host=layout.host,
            port=layout.port,
            controller_port=layout.controller_port,
            data_dir=layout.data,
            node_id=layout.node_id,
            quorum=layout.quorum,
            replication=layout.replication,
            min_isr=2 if layout.replication >= 3 else 1,
        )
    )


def format_storage(layout: BrokerLayout) -> None:
    """Format KRaft storage once; an already formatted directory is kept."""
    if (layout.data / "meta.properties").exists():
        return
    layout.data.mkdir(parents=True, exist_ok=True)
    cluster_id = layout.cluster_id or new_cluster_id()
    command = _java_command(
        layout,
        "kafka.tools.StorageTool",
        "format",
        # A static voter set (controller.quorum.voters) is formatted without --standalone.
        *(() if layout.voters else ("--standalone",)),
        # "=" form: a base64 id may begin with "-", which argparse would take for an option.
        f"--cluster-id={cluster_id}",
        f"--config={layout.config}",
    )
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise ConfigurationError(f"storage format failed:\n{completed.stdout}{completed.stderr}")


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def running_pid(layout: BrokerLayout) -> int | None:
    """The broker's pid if its process is alive."""
    try:
        pid = int(layout.pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        # Our own child: poll() reaps it, so a dead broker does not linger as a zombie.
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def answers_metadata(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """Whether a broker at `bootstrap` answers a metadata request."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


def up(layout: BrokerLayout, timeout_s: float = 120.0) -> str:
    """Start the broker in the background; return its bootstrap address once it answers."""
    if running_pid(layout) is not None and answers_metadata(layout.bootstrap):
        return layout.bootstrap
    process = start(layout)
    wait_answering(layout, process, timeout_s)
    return layout.bootstrap


def start(layout: BrokerLayout) -> subprocess.Popen[bytes]:
    """Start the broker process (formatting its storage the first time); do not wait."""
    for directory in (layout.home, layout.logs):
        directory.mkdir(parents=True, exist_ok=True)
    fetch_jars(layout)
    _write_config(layout)
    format_storage(layout)
    with (layout.logs / "stdout.log").open("ab") as out:
        process = subprocess.Popen(
            _java_command(layout, "kafka.Kafka", str(layout.config)),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children[process.pid] = process
    layout.pid_file.write_text(str(process.pid))
    return process


def wait_answering(
    layout: BrokerLayout, process: subprocess.Popen[bytes], timeout_s: float = 120.0
) -> None:
    """Until the broker answers metadata; stopped and raised if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (layout.logs / "stdout.log").read_text(errors="replace")[-4000:]
            raise KafkaUnavailableError(f"broker exited with {process.returncode}:\n{log}")
        if answers_metadata(layout.bootstrap):
            return
        time.sleep(0.5)
    down(layout)
    raise KafkaUnavailableError(f"broker did not answer within {timeout_s}s")


def down(layout: BrokerLayout, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> bool:
    """Stop the broker: SIGTERM (then SIGKILL after `timeout_s`), or `sig` (kill -9)."""
    pid = running_pid(layout)
    if pid is None:
        return False
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running_pid(layout) is None:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    child = _children.pop(pid, None)
    if child is not None:
        child.wait()
    layout.pid_file.unlink(missing_ok=True)
    return True
