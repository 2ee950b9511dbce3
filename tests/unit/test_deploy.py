"""The deployment files, checked statically (no Docker engine or cluster here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.settings_doc import all_variables

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KNOWN = set(all_variables())
# The oldest Kubernetes release the manifests promise to apply to (deploy/k8s/base/kbatch.yaml).
KUBERNETES_VERSION = "1.30.0"


def kbatch_env_names(document: Any) -> set[str]:
    """Every KBATCH_* name a YAML document sets, wherever it sits."""
    text = yaml.safe_dump(document)
    return set(re.findall(r"\b(KBATCH_[A-Z0-9_]+)\b", text))


def compose_client() -> bool:
    """`docker compose` where the plugin exists (a bare docker client has no compose)."""
    if not shutil.which("docker"):
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return probe.returncode == 0


def test_compose_services_ports_env_and_gpus() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {
        "kafka",
        "topics",
        "ingest",
        "scheduler",
        "inference-0",
        "inference-1",
        "prometheus",
        "grafana",
    } <= set(services)
    for name in ("ingest", "scheduler", "inference-0", "inference-1"):
        assert services[name]["restart"] == "unless-stopped", name
    unknown = kbatch_env_names(compose) - KNOWN
    assert unknown == set(), f"compose sets unknown settings {unknown}"
    for name in ("inference-0", "inference-1"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    for service in services.values():
        assert "image" in service or service["build"]["dockerfile"] == "deploy/Dockerfile"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert {"AS service", "AS vllm"} <= {m.group(0) for m in re.finditer(r"AS \w+", dockerfile)}
    if compose_client():
        check = subprocess.run(
            ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stderr


def test_prometheus_scrapes_what_compose_runs() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for job in scrape["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            env = compose[host]["environment"]
            assert port in {v for k, v in env.items() if k.endswith("HTTP_PORT")}, target


def test_kubernetes_probes_and_settings() -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "base" / "kbatch.yaml").read_text()))
    workloads = [d for d in documents if d["kind"] in ("Deployment", "StatefulSet")]
    assert {w["metadata"]["name"] for w in workloads} == {
        "kbatch-ingest",
        "kbatch-scheduler",
        "kbatch-inference",
    }
    for workload in workloads:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"]["path"] == "/healthz", workload["metadata"][
                    "name"
                ]
    unknown = set().union(*(kbatch_env_names(d) for d in documents)) - KNOWN
    assert unknown == set(), f"manifests set unknown settings {unknown}"


def manifests() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted((DEPLOY / "k8s" / "base").glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def test_every_manifest_is_valid_for_the_kubernetes_it_targets() -> None:
    documents = manifests()
    assert {d["kind"] for d in documents} >= {"Deployment", "StatefulSet", "Service", "Job"}
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_refuses_a_misspelt_field() -> None:
    [deployment, *_] = [d for d in manifests() if d["kind"] == "Deployment"]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
