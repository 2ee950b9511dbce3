"""The schemas and broker files ship inside the wheel, not only in a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_installed_wheel_loads_its_schemas_without_a_checkout(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
    )
    [wheel] = tmp_path.glob("kbatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "services/_data/schemas/kbatch.InferenceRequest.v2.avsc" in names
    assert "services/_data/kafka/pom.xml" in names
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    probe = (
        "import services.codec as c, services.resources as r;"
        "print(r.data_dir('schemas'));print(c.default_catalog().names())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(target) in out.splitlines()[0]
    assert "kbatch.InferenceRequest" in out
