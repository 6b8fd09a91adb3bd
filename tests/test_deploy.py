"""The Kubernetes example manifest: valid against Kubernetes' own schemas, and wired to Cog's
health check, draining and the queue bound in cog.yaml."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from harness.server import cog_environment, max_concurrency

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kubernetes.yaml"
KUBERNETES_VERSION = "1.31.0"


def documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


@pytest.mark.parametrize("document", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_kubernetes(document: dict) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_deployment_runs_one_gpu_per_pod_ready_when_ready_and_drains() -> None:
    deployment = next(d for d in documents() if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert deployment["spec"]["replicas"] >= 2
    readiness = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "/health-check" in readiness and '"READY"' in readiness
    assert container["command"][-2:] == ["--await-explicit-shutdown", "true"]
    assert container["lifecycle"]["preStop"]["exec"]["command"][:2] == ["python", "scripts/drain.py"]
    timeout = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > timeout + 5
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["COG_MAX_CONCURRENCY"]) == max_concurrency()
    assert env["WEIGHTS_DIR"] == next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "weights")


def test_manifest_sets_the_runtime_environment_of_cog_yaml() -> None:
    deployment = next(d for d in documents() if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert cog_environment().items() <= env.items()
