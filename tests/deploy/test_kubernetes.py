"""The kustomize overlays in k8s/: rendered, validated strictly, and held to the rules every
workload must keep (probes, non-root, read-only root file system, resources)."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.kit.config import DEFAULT_PORTS, RuntimeConfig
from tools import k8s_edge

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OVERLAYS = sorted(p.name for p in (ROOT / "k8s" / "overlays").iterdir() if p.is_dir())
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
GRPC_SERVICES = set(DEFAULT_PORTS)
"""Every agentrt service (replay included): each is a Deployment and a gRPC Service."""

Manifest = dict[str, Any]


@cache
def render(overlay: str) -> str:
    return subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def manifests(overlay: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(render(overlay)) if doc]


def of_kind(overlay: str, *kinds: str) -> Iterator[Manifest]:
    return (m for m in manifests(overlay) if m["kind"] in kinds)


def named(overlay: str, kind: str, name: str) -> Manifest:
    found = [m for m in of_kind(overlay, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: expected one {kind} {name}, found {len(found)}"
    return found[0]


def containers(workload: Manifest) -> list[Manifest]:
    pod = workload["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_there_are_the_dev_and_production_overlays() -> None:
    assert {"dev", "production"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_validates_strictly(overlay: str) -> None:
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-"],
        input=render(overlay),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_unprivileged_with_resources(overlay: str) -> None:
    workloads = list(of_kind(overlay, *WORKLOADS))
    assert len(workloads) >= len(GRPC_SERVICES) + 2  # the services, the edge, the migrations
    for workload in workloads:
        where = f"{overlay}: {workload['kind']} {workload['metadata']['name']}"
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        for container in containers(workload):
            at = f"{where} container {container['name']}"
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, at
            assert security["allowPrivilegeEscalation"] is False, at
            assert security["runAsNonRoot"] is True, at
            assert security["capabilities"]["drop"] == ["ALL"], at
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), at
            if workload["kind"] != "Job":
                assert "readinessProbe" in container, at
                assert "livenessProbe" in container, at


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_is_a_deployment_with_grpc_probes_and_port(overlay: str) -> None:
    for service in GRPC_SERVICES:
        port = DEFAULT_PORTS[service]
        deployment = named(overlay, "Deployment", service)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == service
        named(overlay, "ServiceAccount", service)
        named(overlay, "PodDisruptionBudget", service)
        (container,) = pod["containers"]
        assert container["args"] == ["serve", service]
        assert container["ports"] == [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, (service, probe)
        # /tmp is the only place a service may write.
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], service
        ports = named(overlay, "Service", service)["spec"]["ports"]
        assert [p["name"] for p in ports] == ["grpc"] and ports[0]["port"] == port, service


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_services_reach_each_other_through_headless_services(overlay: str) -> None:
    """Each address names a headless Service of the service's pods, whose DNS name resolves
    to every ready pod, so that the callers' channels balance over them all (a ClusterIP
    would keep each caller's one connection on one pod)."""
    (config,) = (
        m
        for m in of_kind(overlay, "ConfigMap")
        if m["metadata"]["name"].startswith("agentrt-config")
    )
    addresses = RuntimeConfig.from_env(config["data"]).addresses
    assert addresses == {name: f"{name}-pods:{port}" for name, port in DEFAULT_PORTS.items()}
    for service, address in addresses.items():
        host, port = address.split(":")
        headless = named(overlay, "Service", host)["spec"]
        assert headless["clusterIP"] == "None", service
        pods = named(overlay, "Deployment", service)["spec"]["selector"]["matchLabels"]
        assert headless["selector"] == pods, service
        assert [(p["name"], p["port"]) for p in headless["ports"]] == [("grpc", int(port))]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_storage_comes_from_the_secret(overlay: str) -> None:
    for service in [*GRPC_SERVICES, "agentrt-migrate"]:
        kind = "Job" if service == "agentrt-migrate" else "Deployment"
        (container,) = named(overlay, kind, service)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        for variable in ("AGENTRT_DATABASE_URL", "AGENTRT_REDIS_URL"):
            if variable in env:
                assert "value" not in env[variable], (service, variable)
                assert env[variable]["valueFrom"]["secretKeyRef"]["name"].startswith(
                    "agentrt-storage"
                )
        assert "AGENTRT_DATABASE_URL" in env or service == "engine", service
        assert "AGENTRT_REDIS_URL" in env or service == "agentrt-migrate", service


def test_the_dev_overlay_generates_the_secret_and_runs_its_backends() -> None:
    secrets = [m for m in of_kind("dev", "Secret") if m["metadata"]["name"].startswith("agentrt-")]
    assert len(secrets) == 1 and {"database-url", "redis-url"} <= set(secrets[0]["data"])
    named("dev", "StatefulSet", "postgres")
    named("dev", "Deployment", "redis")
    assert not list(of_kind("production", "Secret"))
    assert not [
        m
        for m in of_kind("production", *WORKLOADS)
        if m["metadata"]["name"] in ("postgres", "redis")
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_and_orchestrator_autoscale(overlay: str) -> None:
    scaled = {
        m["spec"]["scaleTargetRef"]["name"] for m in of_kind(overlay, "HorizontalPodAutoscaler")
    }
    assert scaled == {"gateway", "orchestrator"}
    for name in scaled:
        assert "replicas" not in named(overlay, "Deployment", name)["spec"]


def allowed_callers(policy: Manifest) -> set[str]:
    callers = set()
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            selector = peer["podSelector"]
            assert set(peer) == {"podSelector"}, "a peer outside the namespace"
            if "matchLabels" in selector:
                callers.add(selector["matchLabels"]["app.kubernetes.io/component"])
            for expression in selector.get("matchExpressions", []):
                callers.update(expression["values"])
    return callers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_edge_reaches_the_gateway(overlay: str) -> None:
    deny = named(overlay, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    policies = {m["metadata"]["name"]: m for m in of_kind(overlay, "NetworkPolicy")}
    assert allowed_callers(policies["gateway"]) == {"edge"}
    assert allowed_callers(policies["orchestrator"]) == {"gateway"}
    assert allowed_callers(policies["jobs"]) == {"gateway", "orchestrator", "replay"}
    assert "edge" not in set().union(
        *(allowed_callers(policies[s]) for s in GRPC_SERVICES if s != "gateway")
    )
    # Every workload is selected by a policy of its own (beyond the default deny).
    for workload in of_kind(overlay, "Deployment", "StatefulSet"):
        assert workload["metadata"]["name"] in policies, workload["metadata"]["name"]


def test_the_edge_config_is_rendered_from_the_template_of_agentrt_edge() -> None:
    """k8s/base/edge holds what `make k8s-edge` renders from services/edge, not a copy
    kept by hand (`make k8s-check` fails the same way)."""
    assert k8s_edge.stale() == []
    text = k8s_edge.CONFIG.read_text()
    assert "${" not in text
    assert "envoy.filters.http.grpc_json_transcoder" in text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_edge_pod_gets_its_config_and_descriptor_set(overlay: str) -> None:
    pod = named(overlay, "Deployment", "edge")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (volume,) = (v for v in pod["volumes"] if v["name"] == "config")
    config_map = named(overlay, "ConfigMap", volume["configMap"]["name"])
    # What Envoy runs is the committed rendering, its descriptor set mounted where it looks.
    assert args[args.index("-c") + 1] == f"{mounts['config']}/envoy.yaml"
    config = yaml.safe_load(config_map["data"]["envoy.yaml"])
    assert config_map["data"]["envoy.yaml"] == k8s_edge.CONFIG.read_text()
    descriptors = k8s_edge.transcoder(config)["proto_descriptor"]
    assert descriptors == f"{mounts['config']}/agentrt.binpb"
    shipped = base64.b64decode(config_map["binaryData"]["agentrt.binpb"])
    assert shipped == (ROOT / "services" / "edge" / "agentrt.binpb").read_bytes()
