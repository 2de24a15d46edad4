"""The plain manifests in manifests/: valid, complete, and equal to the chart's default render."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

MANIFESTS_DIR = Path(__file__).resolve().parents[2] / "manifests"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1"
# Left out of kustomization.yaml on purpose: clusters without prometheus-operator reject it.
OPTIONAL_FILES = {"servicemonitor.yaml"}
# Labels only Helm sets; the plain manifests have no release to name.
HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by"}


def _manifest_files() -> list[Path]:
    files = sorted(MANIFESTS_DIR.rglob("*.yaml")) + sorted(MANIFESTS_DIR.rglob("*.yml"))
    assert files, f"no manifests in {MANIFESTS_DIR}"
    return files


def _objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _manifest_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for path in _manifest_files():
        if path.name == "kustomization.yaml":
            continue
        for obj in _objects(path):
            key = (obj["kind"], obj["metadata"]["name"])
            assert key not in objects, f"{key} defined twice in manifests/"
            objects[key] = obj
    return objects


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS_DIR / "kustomization.yaml").read_text(encoding="utf-8"))


def test_kustomization_lists_every_manifest_but_the_optional_ones():
    kustomization = _kustomization()
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    for resource in resources:
        assert (MANIFESTS_DIR / resource).is_file(), f"kustomization lists missing {resource}"
    files = {
        str(path.relative_to(MANIFESTS_DIR))
        for path in _manifest_files()
        if path.name != "kustomization.yaml"
    }
    assert files == set(resources) | OPTIONAL_FILES


def test_every_manifest_passes_the_kubernetes_schemas(validate_k8s):
    for path in _manifest_files():
        if path.name == "kustomization.yaml":
            continue
        objects = _objects(path)
        assert objects, f"{path} holds no object"
        for obj in objects:
            validate_k8s(obj)


def test_the_plain_set_has_what_kubectl_users_need():
    kinds = sorted(kind for kind, _ in _manifest_objects())
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]


def test_config_map_is_a_valid_sidecar_config(sidecar_check_config):
    text = _manifest_objects()[("ConfigMap", "lifespan-sidecar")]["data"]["sidecar.yaml"]
    result = sidecar_check_config(text)
    assert result.returncode == 0, result.stderr


def test_checksum_annotation_matches_the_config_map(config_checksum):
    objects = _manifest_objects()
    text = objects[("ConfigMap", "lifespan-sidecar")]["data"]["sidecar.yaml"]
    deployment = objects[("Deployment", "lifespan-sidecar")]
    annotation = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert annotation == config_checksum(text), (
        "manifests/deployment.yaml: set checksum/config to "
        f"{config_checksum(text)} (sha256 of configmap.yaml's sidecar.yaml)"
    )


def _normalized(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop what legitimately differs between a Helm release and the plain manifests."""
    obj = copy.deepcopy({key: value for key, value in obj.items() if not key.startswith("_")})
    metadata = obj["metadata"]
    metadata.pop("namespace", None)  # the plain manifests take the namespace from kubectl
    for labels in (metadata.get("labels", {}), _template_labels(obj)):
        for label in HELM_ONLY_LABELS:
            labels.pop(label, None)
    if obj["kind"] == "ServiceMonitor":
        # The chart pins the release namespace; a plain ServiceMonitor defaults to its own.
        obj["spec"].pop("namespaceSelector", None)
    if obj["kind"] == "Secret":
        # The plain Secret holds a placeholder as stringData, for users to replace; the chart
        # generates a token as data (and refuses the placeholder). Only the keys must agree.
        data = obj.pop("stringData", None) or obj.pop("data")
        obj["keys"] = sorted(data)
    return obj


def _placeholder_token() -> str:
    secret = _manifest_objects()[("Secret", "lifespan-sidecar-admin")]
    token: str = secret["stringData"]["token"]
    return token


def _template_labels(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] != "Deployment":
        return {}
    labels: dict[str, Any] = obj["spec"]["template"]["metadata"]["labels"]
    return labels


def test_manifests_equal_the_charts_default_render(chart_helm):
    # The default values, in a cluster with prometheus-operator so the ServiceMonitor renders.
    # The Secret's value differs: a placeholder here, a generated token there
    # (test_default_render_is_the_same_with_a_generated_token shows nothing else depends on it).
    release = chart_helm.render(
        {"metrics": {"serviceMonitor": {"enabled": True}}},
        api_versions=(SERVICE_MONITOR_API,),
    )
    rendered = {
        (obj["kind"], obj["metadata"]["name"]): _normalized(obj)
        for obj in release.objects
        if obj["kind"] != "Pod"  # the helm test pod has no kubectl counterpart
    }
    plain = {key: _normalized(obj) for key, obj in _manifest_objects().items()}
    assert sorted(plain) == sorted(rendered)
    for key, obj in rendered.items():
        # Whole objects: probes, ports, preStop, grace period, config text, security context,
        # selectors, strategy and the checksum all have to match.
        assert plain[key] == obj, f"manifests/ {key} differs from the chart's default render"


def test_default_render_is_the_same_with_a_generated_token(chart_helm):
    """The token changes the Secret's value and nothing else."""
    generated = chart_helm.render()
    inline = chart_helm.render({"adminAuth": {"token": "an-inline-token-0123456789"}})
    assert len(generated.objects) == len(inline.objects)
    for ours, theirs in zip(generated.objects, inline.objects, strict=True):
        if ours["kind"] == "Secret":
            ours, theirs = ({**obj, "data": None} for obj in (ours, theirs))
        assert ours == theirs, ours["kind"]


def test_the_token_stays_out_of_the_deployment_and_is_a_marked_placeholder():
    objects = _manifest_objects()
    token = _placeholder_token()
    # The sidecar refuses this very placeholder (exit 2, telling how to make a token), so
    # applying the manifests unchanged fails loudly instead of running with a public token.
    assert token == "REPLACE-ME-with-a-random-token"
    text = (MANIFESTS_DIR / "secret.yaml").read_text(encoding="utf-8")
    assert "REPLACE THE PLACEHOLDER BELOW BEFORE APPLYING" in text
    assert "openssl rand -hex 32" in text
    for key, obj in objects.items():
        if key != ("Secret", "lifespan-sidecar-admin"):
            assert token not in json.dumps(obj), key
    container = objects[("Deployment", "lifespan-sidecar")]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["env"] == [
        {
            "name": "SIDECAR_ADMIN_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "lifespan-sidecar-admin", "key": "token"}},
        }
    ]
    assert container["lifecycle"]["preStop"] == {
        "exec": {"command": ["sidecar", "prestop", "--config", "/etc/sidecar/sidecar.yaml"]}
    }
