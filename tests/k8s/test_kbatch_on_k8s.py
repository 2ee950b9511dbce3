"""kbatch on a real Kubernetes: `kubectl apply -k deploy/k8s/cpu` as a user runs it, on
the single-node cluster `make test-k8s` starts (deploy/k8s/local/cluster.sh), with Kafka
in the cluster from the local image and every image imported, none pulled.

Every workload rolls out and passes its probes; ingest and the scheduler find Kafka and
each other by service name; a batch through the official `openai` client (over
`kubectl port-forward`) is answered by the llamacpp worker pods; a worker pod deleted
mid-batch is replaced by its StatefulSet and a `kubectl rollout restart` of the workers
mid-batch loses nothing: every request answered once; Prometheus in the cluster scrapes
every kbatch pod.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from services.harness.kafka import wait_for
from tests.deploy.test_compose import assert_answered_by_llamacpp, finished, live_workers, submit

pytestmark = pytest.mark.timeout(900)

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
NAMESPACE = "kbatch"
WORKLOADS = (
    "deployment/kbatch-ingest",
    "deployment/kbatch-scheduler",
    "statefulset/kbatch-inference",
)


def kubectl(*args: str, check: bool = True, timeout_s: float = 300) -> str:
    done = subprocess.run(
        [os.environ.get("KUBECTL", "kubectl"), "-n", NAMESPACE, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr or done.stdout}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PortForward:
    """`kubectl port-forward` to a service, on a free local port, for the test's length."""

    def __init__(self, service: str, port: int) -> None:
        self.local = free_port()
        self._process = subprocess.Popen(
            [os.environ.get("KUBECTL", "kubectl"), "-n", NAMESPACE, "port-forward",
             f"service/{service}", f"{self.local}:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.local}"

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


def storage() -> str:
    """A hostPath volume for ingest's claim: this cluster has no storage provisioner."""
    path = REPO_ROOT / ".kbatch" / "k8s" / "run" / "volumes" / "kbatch-files"
    path.mkdir(parents=True, exist_ok=True)
    # A hostPath volume ignores fsGroup: owned by the pods' user, as a provisioner's would be.
    os.chown(path, 65534, 65534)
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": "kbatch-files"},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": str(path)},
                "claimRef": {"namespace": NAMESPACE, "name": "kbatch-files"},
            },
        }
    )


def apply(document: str) -> None:
    subprocess.run(
        [os.environ.get("KUBECTL", "kubectl"), "apply", "-f", "-"],
        input=document, text=True, check=True, capture_output=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ingest() -> Iterator[openai.OpenAI]:
    subprocess.run(
        [os.environ.get("KUBECTL", "kubectl"), "create", "namespace", NAMESPACE],
        check=True, capture_output=True,
    )  # fmt: skip
    apply(storage())
    kubectl("apply", "-f", str(K8S / "local" / "kafka.yaml"))
    kubectl("rollout", "status", "statefulset/kafka", "--timeout=300s")
    kubectl("apply", "-k", str(K8S / "cpu"))
    kubectl("wait", "--for=condition=complete", "job/kbatch-topics", "--timeout=300s")
    for workload in WORKLOADS:
        kubectl("rollout", "status", workload, "--timeout=300s")
    forward = PortForward("kbatch-ingest", 8080)
    try:
        wait_for(lambda: live_workers(forward.url) >= 2, 300, "two live llamacpp workers", 1.0)
        yield openai.OpenAI(base_url=f"{forward.url}/v1", api_key="unused", max_retries=2)
    finally:
        forward.close()
        logs = REPO_ROOT / ".kbatch" / "k8s" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for workload in (*WORKLOADS, "statefulset/kafka"):
            (logs / f"{workload.replace('/', '-')}.log").write_text(
                kubectl("logs", workload, "--all-containers", "--tail=2000", check=False)
            )
        subprocess.run(
            [os.environ.get("KUBECTL", "kubectl"), "delete", "namespace", NAMESPACE,
             "--wait=true", "--timeout=180s"],
            capture_output=True, check=False,
        )  # fmt: skip
        subprocess.run(
            [os.environ.get("KUBECTL", "kubectl"), "delete", "pv", "kbatch-files"],
            capture_output=True, check=False,
        )  # fmt: skip


def pods(selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(kubectl("get", "pods", "-l", selector, "-o", "json"))[
        "items"
    ]
    return items


def test_every_workload_rolls_out_and_passes_its_probes(ingest: openai.OpenAI) -> None:
    for app in ("kbatch-ingest", "kbatch-scheduler", "kbatch-inference"):
        found = pods(f"app={app}")
        assert found, app
        for pod in found:
            conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
            assert conditions["Ready"] == "True", (app, pod["status"])
    # Ingest reached the scheduler (kbatch-scheduler:8070) and Kafka (kafka:9092) by name:
    # it lists the tiny model with the workers the scheduler sees.
    assert "kbatch-tiny" in {m.id for m in ingest.models.list()}


def test_a_batch_is_answered_by_the_worker_pods(ingest: openai.OpenAI, tmp_path: Path) -> None:
    ids = [f"k8s-{i:02d}" for i in range(20)]
    batch = finished(ingest, submit(ingest, tmp_path, ids, max_tokens=8), 300)
    assert_answered_by_llamacpp(ingest, batch, ids)
    text = ingest.files.content(batch.output_file_id).text
    workers = {
        json.loads(line)["response"]["body"]["kbatch"]["worker_id"] for line in text.splitlines()
    }
    assert workers <= {"kbatch-inference-0", "kbatch-inference-1"}, workers


def under_way(client: openai.OpenAI, batch_id: str) -> bool:
    """Some of the batch answered, most of it not: the moment to disrupt it."""
    batch = client.batches.retrieve(batch_id)
    counts = batch.request_counts
    if batch.status in ("completed", "failed", "expired", "cancelled"):
        raise AssertionError(f"the batch ended before it could be disrupted: {batch}")
    return counts is not None and 0 < counts.completed < counts.total // 2


def disrupted_batch(
    ingest: openai.OpenAI, tmp_path: Path, name: str, disrupt: Callable[[], object]
) -> None:
    """A 400-line batch, disrupted once it is under way: it still ends with every line
    answered once."""
    ids = [f"{name}-{i:03d}" for i in range(400)]
    batch_id = submit(ingest, tmp_path, ids, max_tokens=48)
    wait_for(lambda: under_way(ingest, batch_id), 180, "the batch under way", 0.2)
    disrupt()
    batch = finished(ingest, batch_id, 600)
    assert_answered_by_llamacpp(ingest, batch, ids)
    kubectl("rollout", "status", "statefulset/kbatch-inference", "--timeout=300s")


def worker_uid(name: str) -> str:
    [uid] = [p["metadata"]["uid"] for p in pods("app=kbatch-inference")
             if p["metadata"]["name"] == name]  # fmt: skip
    return str(uid)


def test_a_deleted_worker_pod_is_replaced_and_the_batch_completes_once(
    ingest: openai.OpenAI, tmp_path: Path
) -> None:
    before = worker_uid("kbatch-inference-0")
    disrupted_batch(
        ingest,
        tmp_path,
        "deleted",
        lambda: kubectl("delete", "pod", "kbatch-inference-0", "--wait=false"),
    )
    assert worker_uid("kbatch-inference-0") != before


def test_a_rollout_restart_of_the_workers_mid_batch_loses_nothing(
    ingest: openai.OpenAI, tmp_path: Path
) -> None:
    restarted = [p["metadata"]["uid"] for p in pods("app=kbatch-inference")]
    disrupted_batch(
        ingest,
        tmp_path,
        "restart",
        lambda: kubectl("rollout", "restart", "statefulset/kbatch-inference"),
    )
    assert not set(restarted) & {p["metadata"]["uid"] for p in pods("app=kbatch-inference")}


def test_prometheus_in_the_cluster_scrapes_every_kbatch_pod(ingest: openai.OpenAI) -> None:
    kubectl("apply", "-f", str(K8S / "local" / "prometheus.yaml"))
    kubectl("rollout", "status", "deployment/prometheus", "--timeout=300s")
    forward = PortForward("prometheus", 9090)
    workers = {f"{p['status']['podIP']}:8090" for p in pods("app=kbatch-inference")}
    try:

        def all_up() -> bool:
            try:
                active = httpx.get(f"{forward.url}/api/v1/targets", timeout=5).json()["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            up = {
                (t["labels"]["job"], t["labels"]["instance"])
                for t in active["activeTargets"]
                if t["health"] == "up"
            }
            jobs = {job for job, _ in up}
            scraped = {instance for job, instance in up if job == "kbatch-inference"}
            return {"kbatch-ingest", "kbatch-scheduler"} <= jobs and scraped == workers

        wait_for(all_up, 180, "Prometheus scraping ingest, the scheduler and every worker", 2.0)
    finally:
        forward.close()


def test_the_gpu_base_is_accepted_by_the_api_server(ingest: openai.OpenAI) -> None:
    """The vLLM workers' GPU request and toleration pass the API server's validation and
    defaulting (no device plugin runs here, so they cannot be scheduled)."""
    listed = json.loads(kubectl("apply", "--dry-run=server", "-k", str(K8S / "base"), "-o", "json"))
    [workers] = [i for i in listed["items"] if i["kind"] == "StatefulSet"]
    pod = workers["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
