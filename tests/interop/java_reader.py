"""Build and run the Java results reader (tests/interop/java): Avro's own
BinaryMessageDecoder, compiled against Avro from Maven Central, reading a results topic.

The build is cached under a directory named by a hash of the pom and the source, so it
runs once per change: `mvn dependency:copy-dependencies` (jars into ~/.m2, then copied
beside the classes) and one `javac`. No Maven compiler or jar plugin is needed.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import json_reader

JAVA_DIR = Path(__file__).resolve().with_name("java")
MAIN_CLASS = "dev.kbatch.interop.ResultsReader"
_SOURCES = sorted((JAVA_DIR / "src" / "main" / "java").rglob("*.java"))
# A JVM that starts fast on two cores: the reader runs for seconds, not hours.
_JVM_OPTIONS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xmx256m")


class JavaBuildError(Exception):
    """The JDK or Maven is missing, or the reader did not build."""


@dataclass(frozen=True)
class ReaderRun:
    """What one run of the reader printed: records by (partition, offset), as Avro JSON."""

    returncode: int
    records: dict[tuple[int, int], str]
    stderr: str

    def decoded(self, schema: Any) -> dict[tuple[int, int], dict[str, Any]]:
        """The records as dicts, read with `schema` (the reader's: the latest version)."""
        return {key: from_avro_json(text, schema) for key, text in self.records.items()}


@dataclass(frozen=True)
class ResultsReader:
    """A built reader: its classes and the jars they run against."""

    home: Path
    java: str

    def read(
        self, bootstrap: str, topic: str, schemas: Path, count: int, timeout_s: float = 60
    ) -> ReaderRun:
        """Read `count` committed records of `topic` from the start, decoding each with
        every kbatch.InferenceResult version in `schemas` registered."""
        command = [
            self.java,
            *_JVM_OPTIONS,
            "-cp",
            f"{self.home / 'classes'}:{self.home / 'lib'}/*",
            MAIN_CLASS,
            *("--bootstrap", bootstrap, "--topic", topic, "--schemas", str(schemas)),
            *("--count", str(count), "--timeout-s", str(timeout_s)),
        ]
        # The reader keeps its own deadline; this one only bounds a JVM that hangs
        # (subprocess.run kills it on expiry).
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s + 60, check=False
        )
        records: dict[tuple[int, int], str] = {}
        for line in done.stdout.splitlines():
            printed = json.loads(line)
            key = (int(printed["partition"]), int(printed["offset"]))
            records[key] = json.dumps(printed["record"])
        return ReaderRun(done.returncode, records, done.stderr)


def from_avro_json(text: str, schema: Any) -> dict[str, Any]:
    """One record in Avro's JSON encoding (unions wrapped by branch name), as a dict."""
    records = list(json_reader(io.StringIO(text), schema))
    if len(records) != 1 or not isinstance(records[0], dict):
        raise ValueError(f"expected one Avro JSON record, got {len(records)}")
    return records[0]


def build_reader(cache: Path) -> ResultsReader:
    """The reader built under `cache` (once per change of the pom or source)."""
    tools = {name: shutil.which(name) for name in ("java", "javac", "mvn")}
    missing = sorted(name for name, path in tools.items() if path is None)
    if missing:
        raise JavaBuildError(
            f"{', '.join(missing)} not found: the Java interop test needs a JDK 17+ and"
            " Maven (Debian: apt-get install default-jdk-headless maven; `make test` does)"
        )
    java, javac, mvn = (str(tools[name]) for name in ("java", "javac", "mvn"))
    key = _source_key()
    # Absolute: Maven resolves a relative output directory against the pom's folder.
    home = cache.resolve() / key
    if not (home / ".complete").exists():
        _build(home, javac, mvn)
    return ResultsReader(home, java)


def _source_key() -> str:
    digest = hashlib.sha256((JAVA_DIR / "pom.xml").read_bytes())
    for source in _SOURCES:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _build(home: Path, javac: str, mvn: str) -> None:
    """Build in a staging directory and rename it into place, so a build that fails or
    races another one never leaves a half-built reader behind."""
    cache = home.parent
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{home.name}-", dir=cache))
    try:
        lib, classes = staging / "lib", staging / "classes"
        pom = str(JAVA_DIR / "pom.xml")
        copy_jars = [f"-DoutputDirectory={lib}", "-DincludeScope=runtime", "-Dstyle.color=never"]
        _run(
            [mvn, "-q", "-B", "-f", pom, "dependency:copy-dependencies", *copy_jars],
            "mvn dependency:copy-dependencies",
        )
        strict = ["--release", "17", "-Xlint:all", "-Werror"]
        _run(
            [javac, *strict, "-d", str(classes), "-cp", f"{lib}/*", *map(str, _SOURCES)],
            "javac",
        )
        (staging / ".complete").touch()
        try:
            staging.rename(home)
        except OSError:
            if not (home / ".complete").exists():  # else another build won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for stale in cache.iterdir():
        if stale.name != home.name and not stale.name.startswith("."):
            shutil.rmtree(stale, ignore_errors=True)


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise JavaBuildError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
