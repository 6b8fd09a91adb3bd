"""The shipped deployments: the Kubernetes manifest valid against Kubernetes' own schemas, the
compose file against the Compose Specification's schema, both wired to Cog's health check,
draining, the queue bound in cog.yaml and the one nginx config (tests/server/test_proxy.py runs it)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from harness.server import cog_environment, max_concurrency
from scripts.proxy import DEFAULTS, ENVSUBST_FILTER, TEMPLATE

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes.yaml"
COMPOSE = ROOT / "deploy" / "compose.yaml"
# The Compose Specification's own JSON schema (what `docker compose` validates with), from
# github.com/compose-spec/compose-spec, schema/compose-spec.json at a08f8d5 (2025-10-28), Apache-2.0.
COMPOSE_SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
KUBERNETES_VERSION = "1.31.0"


def documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def containers() -> dict[str, dict]:
    """The Deployment's containers by name."""
    deployment = next(d for d in documents() if d["kind"] == "Deployment")
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


@pytest.mark.parametrize("document", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_kubernetes(document: dict) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_deployment_runs_one_gpu_per_pod_ready_when_ready_and_drains() -> None:
    deployment = next(d for d in documents() if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = containers()["gen4-image"]
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
    env = {e["name"]: e["value"] for e in containers()["gen4-image"]["env"]}
    assert cog_environment().items() <= env.items()


def test_kubernetes_image_is_pinned_and_pods_land_on_gpu_nodes_one_disruption_at_a_time() -> None:
    deployment = next(d for d in documents() if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    model, proxy = containers()["gen4-image"], containers()["proxy"]
    # The model by digest; nginx by its exact version (never a moving tag).
    assert re.fullmatch(r"[^:@\s]+(:[\w.-]+)?@sha256:[0-9a-f]{64}", model["image"]), model["image"]
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+(-alpine)?", proxy["image"]), proxy["image"]
    assert any("gpu" in key for key in pod["nodeSelector"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    (budget,) = [d for d in documents() if d["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    # Room for one replica at a time to go: fewer than all, and never zero.
    assert budget["spec"]["maxUnavailable"] == 1 < deployment["spec"]["replicas"]


def test_kubernetes_proxy_is_the_only_way_in() -> None:
    """coglet on loopback; the Service reaches nginx, whose config is the shipped template verbatim,
    with the settings scripts/proxy.py defaults to, and the token from the Secret."""
    model, proxy = containers()["gen4-image"], containers()["proxy"]
    command = model["command"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    (service,) = [d for d in documents() if d["kind"] == "Service"]
    target = service["spec"]["ports"][0]["targetPort"]
    assert target in {p["name"] for p in proxy["ports"]}
    assert target not in {p["name"] for p in model.get("ports", [])}
    (config,) = [d for d in documents() if d["kind"] == "ConfigMap"]
    assert config["data"] == {"default.conf.template": TEMPLATE.read_text()}
    mount = next(m for m in proxy["volumeMounts"] if m["name"] == "proxy-config")
    assert mount["mountPath"] == "/etc/nginx/templates"
    env = {e["name"]: e for e in proxy["env"]}
    assert env.pop("NGINX_ENVSUBST_FILTER")["value"] == ENVSUBST_FILTER
    token = env.pop("GEN4_PROXY_TOKEN")["valueFrom"]["secretKeyRef"]
    (secret,) = [d for d in documents() if d["kind"] == "Secret" and d["metadata"]["name"] == token["name"]]
    assert secret["stringData"][token["key"]] == DEFAULTS["GEN4_PROXY_TOKEN"]  # not required unless set
    values = {name: e["value"] for name, e in env.items()}
    assert values == {k: v for k, v in DEFAULTS.items() if k != "GEN4_PROXY_TOKEN"}
    port = next(p["containerPort"] for p in proxy["ports"] if p["name"] == target)
    assert env["GEN4_PROXY_LISTEN"]["value"] == str(port)


def test_kubernetes_liveness_is_the_healthcheck_script() -> None:
    model = containers()["gen4-image"]
    command = model["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["python", "scripts/healthcheck.py"]
    assert (ROOT / command[1]).is_file()
    # The probe's own timeout covers the script's (10 s for the health answer).
    assert model["livenessProbe"]["timeoutSeconds"] > 10


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_valid_compose() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, errors


def interpolated_default(value: str) -> str:
    """What compose makes of "${NAME:-default}" when NAME is not set (a plain value stays)."""
    match = re.fullmatch(r"\$\{(\w+)(?::-(.*))?\}", value)
    return value if match is None else (match.group(2) or "")


def test_compose_proxy_runs_the_shipped_config_in_front_of_an_unpublished_model() -> None:
    services = compose()["services"]
    model, proxy = services["model"], services["proxy"]
    assert "ports" not in model, "coglet's port must not be published: clients go through nginx"
    assert proxy["image"] == containers()["proxy"]["image"], "the same nginx as on Kubernetes"
    host_side = (COMPOSE.parent / "nginx" / "gen4.conf.template").resolve()
    mounts = {(COMPOSE.parent / v.split(":")[0]).resolve(): v.split(":")[1] for v in proxy["volumes"]}
    assert mounts[host_side] == "/etc/nginx/templates/default.conf.template"
    assert host_side == TEMPLATE.resolve()
    env = dict(proxy["environment"])
    assert env.pop("NGINX_ENVSUBST_FILTER") == ENVSUBST_FILTER
    defaults = {name: interpolated_default(str(value)) for name, value in env.items()}
    # The upstream is the model service's coglet port; everything else as scripts/proxy.py.
    assert defaults.pop("GEN4_PROXY_UPSTREAM") == "model:5000"
    assert defaults == {k: v for k, v in DEFAULTS.items() if k != "GEN4_PROXY_UPSTREAM"}
    (published,) = proxy["ports"]
    assert interpolated_default(published.rsplit(":", 1)[0]) == "8080"
    assert published.rsplit(":", 1)[1] == defaults["GEN4_PROXY_LISTEN"]


def test_compose_model_has_its_gpu_weights_and_liveness() -> None:
    model = compose()["services"]["model"]
    test = model["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "scripts/healthcheck.py"]
    assert (ROOT / test[2]).is_file()
    assert model["healthcheck"]["timeout"] == "15s"  # above the script's own 10 s
    (device,) = model["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == 1
    weights = next(v for v in model["volumes"] if v.endswith(":/src/weights"))
    assert (COMPOSE.parent / weights.split(":")[0]).resolve() == ROOT / "weights"
    assert model["environment"]["WEIGHTS_DIR"] == "/src/weights"
