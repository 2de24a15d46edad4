"""The Helm chart, rendered by the Helm v4 engine for a matrix of values.

Each case is checked three ways: every object passes the Kubernetes schemas (strict), the
pod spec is wired to the sidecar's effective config (as `sidecar check-config` reads the
ConfigMap), and the optional objects appear exactly when their conditions hold.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from sidecar.auth import AdminGuard
from sidecar.config import SECTIONS, key_specs

from .conftest import GATEWAY_API, KUBE_VERSIONS, OPTIONAL_APIS, Helm, Release

Validate = Callable[[dict[str, Any]], None]

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "lifespan-sidecar"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1"
SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
STANDARD_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
}


#: adminAuth as values.yaml sets it; a case's values are merged over it.
ADMIN_AUTH_DEFAULTS: dict[str, Any] = yaml.safe_load(
    (CHART_DIR / "values.yaml").read_text(encoding="utf-8")
)["adminAuth"]
#: The exec preStop hook: `sidecar prestop` with the mounted config file.
PRESTOP_EXEC = ["sidecar", "prestop", "--config", "/etc/sidecar/sidecar.yaml"]
#: A caller outside the pod, as the kubelet's httpGet hook is (it comes from the node).
NODE_ADDRESS = "10.1.2.3"


def _admin_auth(values: dict[str, Any]) -> dict[str, Any]:
    return {**ADMIN_AUTH_DEFAULTS, **values.get("adminAuth", {})}


def _admin_secret(release) -> dict[str, Any] | None:
    """The chart's own admin Secret, if it rendered one."""
    secrets = release.all("Secret")
    assert len(secrets) <= 1, [obj["metadata"]["name"] for obj in secrets]
    return secrets[0] if secrets else None


def _secret_token(secret: dict[str, Any]) -> str:
    assert set(secret["data"]) == {"token"}, secret["data"]
    return base64.b64decode(secret["data"]["token"], validate=True).decode()


def _port(container: dict[str, Any], name: str) -> int:
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    return ports[name]


def _startup_budget_needed(effective: dict[str, Any], margin: float) -> float:
    lifespan = effective["lifespan"]
    attempts = lifespan["startup_attempts"]
    return (
        lifespan["startup_timeout"] * attempts
        + lifespan["retry_backoff_max"] * (attempts - 1)
        + lifespan["failure_linger"]
        + margin
    )


# -- lint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", [f"v{version}" for version in KUBE_VERSIONS])
def test_lint_strict_passes_for_every_case(chart_helm, values_case, kube_version):
    name, values = values_case
    report = chart_helm.lint(values, kube_version=kube_version)
    # Severity 1 is INFO ("icon is recommended"); warnings (2) and errors (3) must not occur.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, f"{name}: {problems}"
    assert not report["errors"], f"{name}: {report['errors']}"


# -- every case: schema validity and wiring ----------------------------------------------------


def test_every_object_passes_the_kubernetes_schemas(case_release, validate_k8s):
    assert case_release.objects
    for obj in case_release.objects:
        validate_k8s(obj)


def test_config_map_is_a_valid_sidecar_config(case_check):
    assert case_check.returncode == 0, case_check.stderr
    effective = case_check.effective
    assert effective["app"]["target"], "the chart runs `sidecar run` without APP"


def test_pod_is_wired_to_the_effective_config(case_release, case_check):
    values = case_release.values
    assert case_check.returncode == 0, case_check.stderr
    effective = case_check.effective
    pod, container = case_release.pod_spec, case_release.container

    # Ports: named, numbered as the sidecar binds them.
    assert _port(container, "http") == effective["server"]["port"]
    assert _port(container, "admin") == effective["admin"]["port"]
    assert effective["server"]["host"] in ("0.0.0.0", "::")
    assert effective["admin"]["host"] in ("0.0.0.0", "::")

    # Probes: the right endpoint each, all on the admin port (by name).
    for probe, path in (
        ("startupProbe", "/startupz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/livez"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "admin"}, probe
    assert container["livenessProbe"]["successThreshold"] == 1
    assert container["startupProbe"]["successThreshold"] == 1

    # The startup probe outlasts the slowest healthy startup the config allows.
    startup = container["startupProbe"]
    budget = startup["failureThreshold"] * startup["periodSeconds"]
    margin = values.get("probes", {}).get("startup", {}).get("marginSeconds", 10)
    assert budget >= _startup_budget_needed(effective, margin)
    assert budget >= effective["lifespan"]["startup_timeout"]

    # preStop drains through the admin port before SIGTERM: by default `sidecar prestop` over
    # loopback, reading the same config file as `sidecar run`; an httpGet hook carries the
    # token only when there is one.
    auth = _admin_auth(values)
    pre_stop = container["lifecycle"]["preStop"]
    if auth["preStopHook"] == "exec":
        assert pre_stop == {"exec": {"command": PRESTOP_EXEC}}
        assert pre_stop["exec"]["command"][-1] == container["args"][-1]
    else:
        expected: dict[str, Any] = {"path": "/prestop", "port": "admin"}
        if auth["enabled"]:
            expected["httpHeaders"] = [
                {"name": "Authorization", "value": f"Bearer {auth['token']}"}
            ]
        assert pre_stop == {"httpGet": expected}

    # The grace period covers drain + in-flight requests + lifespan shutdown + the linger.
    shutdown = (
        effective["shutdown"]["drain_delay"]
        + effective["shutdown"]["graceful_timeout"]
        + effective["lifespan"]["shutdown_timeout"]
        + effective["lifespan"]["failure_linger"]
    )
    assert pod["terminationGracePeriodSeconds"] >= shutdown
    if values.get("terminationGracePeriodSeconds") is None:
        assert pod["terminationGracePeriodSeconds"] == math.ceil(shutdown) + 5

    # The container runs the config file the ConfigMap provides.
    assert container["args"] == ["run", "--config", "/etc/sidecar/sidecar.yaml"]
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert mounts["config"]["mountPath"] == "/etc/sidecar"
    assert mounts["config"]["readOnly"] is True
    configmap = case_release.one("ConfigMap")
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert "sidecar.yaml" in configmap["data"]

    # Service links would feed SIDECAR_* variables into the sidecar's settings. The only
    # SIDECAR_* variable is the chart's own admin token, taken from a Secret.
    assert pod["enableServiceLinks"] is False
    env = {entry["name"]: entry for entry in container.get("env", [])}
    sidecar_env = {name for name in env if name.startswith("SIDECAR_")}
    if auth["enabled"]:
        assert sidecar_env == {"SIDECAR_ADMIN_TOKEN"}
        secret = _admin_secret(case_release)
        name = auth["existingSecret"] or secret["metadata"]["name"]
        key = auth["existingSecretKey"] if auth["existingSecret"] else "token"
        assert env["SIDECAR_ADMIN_TOKEN"] == {
            "name": "SIDECAR_ADMIN_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": name, "key": key}},
        }
    else:
        assert not sidecar_env


def test_admin_secret_exists_exactly_when_the_chart_owns_the_token(case_release):
    auth = _admin_auth(case_release.values)
    secret = _admin_secret(case_release)
    if not auth["enabled"] or auth["existingSecret"]:
        assert secret is None
        return
    assert secret["metadata"]["name"] == f"{case_release.deployment['metadata']['name']}-admin"
    assert secret["type"] == "Opaque"
    token = _secret_token(secret)
    if auth["token"]:
        assert token == auth["token"]
    else:
        assert re.fullmatch(r"[A-Za-z0-9]{48}", token), token


def test_no_token_in_the_pod_spec_or_config_unless_httpget_asks(case_release):
    secret = _admin_secret(case_release)
    if secret is None:
        return
    token = _secret_token(secret)
    encoded = secret["data"]["token"]
    httpget = _admin_auth(case_release.values)["preStopHook"] == "httpGet"
    for obj in case_release.objects:
        if obj is secret:
            continue
        text = json.dumps(obj)
        assert encoded not in text, f"{obj['kind']} holds the base64 token"
        if obj["kind"] == "Deployment" and httpget:
            assert text.count(token) == 1  # the Authorization header, nothing else
        else:
            assert token not in text, f"{obj['kind']}/{obj['metadata']['name']} holds the token"


def test_the_sidecar_accepts_the_prestop_hook_and_refuses_strangers(case_release, case_check):
    """The hook the chart renders, put to the sidecar's own guard with the pod's settings."""
    auth = _admin_auth(case_release.values)
    secret = _admin_secret(case_release)
    token = _secret_token(secret) if secret else ("from-an-existing-secret" * auth["enabled"])
    admin = case_check.effective["admin"]
    guard = AdminGuard(token, admin["allow_from"], trust_loopback=admin["trust_loopback"])
    pre_stop = case_release.container["lifecycle"]["preStop"]
    if "exec" in pre_stop:
        # `sidecar prestop` runs in the container, with its environment: it sends the
        # token the container gets from the Secret, and loopback alone is not enough.
        env = {item["name"]: item for item in case_release.container.get("env", [])}
        if auth["enabled"]:
            assert "SIDECAR_ADMIN_TOKEN" in env
            assert guard.check("127.0.0.1", None) is not None
        assert guard.check("127.0.0.1", f"Bearer {token}" if token else None) is None
    else:
        headers = {h["name"]: h["value"] for h in pre_stop["httpGet"].get("httpHeaders", [])}
        assert guard.check(NODE_ADDRESS, headers.get("Authorization")) is None
    if auth["enabled"]:
        for authorization in (None, "Bearer not-the-token"):
            refused = guard.check(NODE_ADDRESS, authorization)
            assert refused is not None, authorization
            assert refused.status == 401, authorization


def test_checksum_annotation_follows_the_config(case_release, config_checksum):
    annotations = case_release.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] == config_checksum(case_release.config_text)


def test_pod_meets_the_restricted_pod_security_profile(case_release):
    pod, container = case_release.pod_spec, case_release.container
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    # The sidecar and every container the values add (the examples in ci/ set theirs).
    for each in [*pod.get("initContainers", []), *pod["containers"]]:
        security = each["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, each["name"]
        assert security["readOnlyRootFilesystem"] is True, each["name"]
        assert security["capabilities"] == {"drop": ["ALL"]}, each["name"]
    tmp = next(mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp")
    volume = next(volume for volume in pod["volumes"] if volume["name"] == tmp["name"])
    assert "emptyDir" in volume
    assert pod["automountServiceAccountToken"] is False


def test_rollout_never_drops_capacity(case_release):
    strategy = case_release.deployment["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_labels_and_selectors(case_release):
    deployment = case_release.deployment
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert set(selector) == SELECTOR_KEYS
    assert selector["app.kubernetes.io/instance"] == "lifespan-sidecar"
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template_labels.items()
    part_of = case_release.values.get("partOf", "")
    for obj in case_release.objects:
        labels = obj["metadata"]["labels"]
        missing = STANDARD_LABELS - set(labels)
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
        assert labels.get("app.kubernetes.io/part-of", "") == part_of, obj["kind"]
    assert template_labels.get("app.kubernetes.io/part-of", "") == part_of
    for service in case_release.all("Service"):
        assert service["spec"]["selector"] == selector
    for pdb in case_release.all("PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"] == selector
    for policy in case_release.all("NetworkPolicy"):
        assert policy["spec"]["podSelector"]["matchLabels"] == selector
    # The helm test pod must not count as one of the app's pods.
    for pod in case_release.all("Pod"):
        assert not selector.items() <= pod["metadata"]["labels"].items()


def test_services_expose_named_ports_only_where_intended(case_release):
    app = case_release.one("Service", "lifespan-sidecar")
    assert [port["targetPort"] for port in app["spec"]["ports"]] == ["http"]
    metrics = case_release.all("Service")
    metrics = [svc for svc in metrics if svc["metadata"]["name"].endswith("-metrics")]
    enabled = case_release.values.get("metrics", {}).get("service", {}).get("enabled", True)
    assert len(metrics) == (1 if enabled else 0)
    for svc in metrics:
        assert [port["targetPort"] for port in svc["spec"]["ports"]] == ["admin"]


def test_optional_objects_follow_their_conditions(case_release):
    values = case_release.values
    autoscaling = values.get("autoscaling", {}).get("enabled", False)
    replicas = values.get("replicaCount", 2)
    kinds = case_release.kinds()
    assert ("HorizontalPodAutoscaler" in kinds) == autoscaling
    assert ("PodDisruptionBudget" in kinds) == (autoscaling or replicas > 1)
    assert ("replicas" in case_release.deployment["spec"]) == (not autoscaling)
    assert ("NetworkPolicy" in kinds) == values.get("networkPolicy", {}).get("enabled", False)
    create_sa = values.get("serviceAccount", {}).get("create", True)
    assert ("ServiceAccount" in kinds) == create_sa
    monitor = values.get("metrics", {}).get("serviceMonitor", {}).get("enabled", False)
    assert ("ServiceMonitor" in kinds) == monitor
    pod_monitor = values.get("metrics", {}).get("podMonitor", {}).get("enabled", False)
    assert ("PodMonitor" in kinds) == pod_monitor
    assert ("Ingress" in kinds) == values.get("ingress", {}).get("enabled", False)
    assert ("HTTPRoute" in kinds) == values.get("httpRoute", {}).get("enabled", False)
    metrics_service = values.get("metrics", {}).get("service", {}).get("enabled", True)
    tests = values.get("tests", {}).get("enabled", True)
    assert ("Pod" in kinds) == (tests and metrics_service)


# -- specific cases ----------------------------------------------------------------------------


def test_default_values_give_the_documented_numbers(chart_helm):
    release = chart_helm.render()
    # drain 5 + graceful 20 + lifespan shutdown 30 + failure linger 35 + margin 5
    assert release.pod_spec["terminationGracePeriodSeconds"] == 95
    startup = release.container["startupProbe"]
    # (startup 60 + failure linger 35 + margin 10) / period 2, rounded up
    assert (startup["failureThreshold"], startup["periodSeconds"]) == (53, 2)
    assert release.deployment["spec"]["replicas"] == 2
    assert release.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert "ServiceMonitor" not in release.kinds()
    assert "terminationGracePeriodSeconds is 95" in release.notes


def test_autoscaling_renders_an_autoscaling_v2_hpa(chart_helm):
    values = {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 7}}
    release = chart_helm.render(values)
    hpa = release.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": release.deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 7)
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in release.deployment["spec"]
    assert release.one("PodDisruptionBudget")


def test_single_replica_gets_no_pdb_and_a_warning(chart_helm):
    release = chart_helm.render({"replicaCount": 1})
    assert "PodDisruptionBudget" not in release.kinds()
    assert "replicaCount is 1" in release.notes


def test_service_monitor_needs_the_operator_api(chart_helm):
    values = {"metrics": {"serviceMonitor": {"enabled": True}}}
    without = chart_helm.render(values)
    assert "ServiceMonitor" not in without.kinds()
    assert "does not serve the\nmonitoring.coreos.com/v1 API" in without.notes
    with_api = chart_helm.render(values, api_versions=(SERVICE_MONITOR_API,))
    monitor = with_api.one("ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [
        {"port": "admin", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    metrics_service = with_api.one("Service", "lifespan-sidecar-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        metrics_service["metadata"]["labels"].items()
    )
    app_service = with_api.one("Service", "lifespan-sidecar")
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= (
        app_service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["apps"]}
    disabled = chart_helm.render({}, api_versions=(SERVICE_MONITOR_API,))
    assert "ServiceMonitor" not in disabled.kinds()


def test_custom_timeouts_move_the_grace_period_and_startup_budget(chart_helm):
    config = {
        "lifespan": {"startup_timeout": 200, "shutdown_timeout": 40},
        "shutdown": {"drain_delay": 12.5, "graceful_timeout": 30},
    }
    release = chart_helm.render({"config": config})
    assert release.pod_spec["terminationGracePeriodSeconds"] == 123  # ceil(82.5 + 35) + 5
    startup = release.container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 245  # 200 + 35 + 10


def test_explicit_grace_period_is_kept_when_long_enough(chart_helm):
    release = chart_helm.render({"terminationGracePeriodSeconds": 91})
    assert release.pod_spec["terminationGracePeriodSeconds"] == 91


def test_null_config_keys_fall_back_to_the_sidecar_defaults(chart_helm, sidecar_check_config):
    # A null removes the chart's default; the sidecar then uses its own, and so must the chart.
    values = {"config": {"shutdown": {"drain_delay": None}, "lifespan": {"startup_timeout": None}}}
    release = chart_helm.render(values)
    effective = sidecar_check_config(release.config_text).effective
    assert "drain_delay" not in yaml.safe_load(release.config_text)["shutdown"]
    shutdown = (
        effective["shutdown"]["drain_delay"]
        + effective["shutdown"]["graceful_timeout"]
        + effective["lifespan"]["shutdown_timeout"]
        + effective["lifespan"]["failure_linger"]
    )
    assert release.pod_spec["terminationGracePeriodSeconds"] == math.ceil(shutdown) + 5
    startup = release.container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= (
        effective["lifespan"]["startup_timeout"] + 10
    )


def test_config_change_changes_the_pod_template(chart_helm):
    before = chart_helm.render()
    after = chart_helm.render({"config": {"logging": {"level": "debug"}}})
    key = "checksum/config"
    annotations = [
        r.deployment["spec"]["template"]["metadata"]["annotations"][key] for r in (before, after)
    ]
    assert annotations[0] != annotations[1]


#: networkPolicy.metricsFrom as values.yaml sets it: kube-prometheus-stack's Prometheus.
DEFAULT_METRICS_FROM = [
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
]


def _admin_peers(release: Release) -> list[dict[str, Any]] | None:
    """The peers of the NetworkPolicy's admin-port rule; None when there is no such rule."""
    rules = {
        rule["ports"][0]["port"]: rule for rule in release.one("NetworkPolicy")["spec"]["ingress"]
    }
    assert set(rules) <= {"http", "admin"}
    assert rules["http"]["ports"] == [{"port": "http", "protocol": "TCP"}]
    return rules["admin"]["from"] if "admin" in rules else None


def test_network_policy_limits_the_admin_port(chart_helm: Helm) -> None:
    release = chart_helm.render({"networkPolicy": {"enabled": True}})
    policy = release.one("NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert "from" not in policy["spec"]["ingress"][0]  # the app port: open unless appFrom
    # The documented Prometheus and the release's helm test pod (and the node, always) may
    # reach the admin port; nobody else.
    test_selector = {
        "app.kubernetes.io/name": "lifespan-sidecar-test",
        "app.kubernetes.io/instance": "lifespan-sidecar",
        "app.kubernetes.io/component": "helm-test",
    }
    assert test_selector.items() <= release.one("Pod")["metadata"]["labels"].items()
    assert _admin_peers(release) == [
        *DEFAULT_METRICS_FROM,
        {"podSelector": {"matchLabels": test_selector}},
    ]

    closed = chart_helm.render(
        {"networkPolicy": {"enabled": True, "metricsFrom": []}, "tests": {"enabled": False}}
    )
    assert _admin_peers(closed) is None  # no rule: the node only


def test_network_policy_admits_prometheus_other_peers_and_node_cidrs(
    chart_helm: Helm, validate_k8s: Validate
) -> None:
    scraper = [{"namespaceSelector": {"matchLabels": {"team": "observability"}}}]
    operator = [{"podSelector": {"matchLabels": {"app": "drain-operator"}}}]
    values = {
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": scraper,
            "adminFrom": operator,
            "nodeCIDRs": ["10.0.0.0/16", "fd00::/64"],
        },
        "tests": {"enabled": False},
    }
    release = chart_helm.render(values)
    validate_k8s(release.one("NetworkPolicy"))
    assert _admin_peers(release) == [
        *scraper,
        *operator,
        {"ipBlock": {"cidr": "10.0.0.0/16"}},
        {"ipBlock": {"cidr": "fd00::/64"}},
    ]


def test_notes_warn_when_the_network_policy_blocks_scraping(chart_helm: Helm) -> None:
    blocked_values = {
        "networkPolicy": {"enabled": True, "metricsFrom": [], "adminFrom": []},
        "tests": {"enabled": False},
    }
    for monitor, kind in (("serviceMonitor", "ServiceMonitor"), ("podMonitor", "PodMonitor")):
        values = {**blocked_values, "metrics": {monitor: {"enabled": True}}}
        release = chart_helm.render(values, api_versions=OPTIONAL_APIS)
        assert _admin_peers(release) is None  # what the warning is about
        assert "WARNING: networkPolicy.enabled is true and both networkPolicy.metricsFrom" in (
            release.notes
        )
        assert f"the {kind} finds its targets, but every scrape fails" in release.notes
    # Prometheus admitted through either list: no warning, and the default says whom it admits.
    admitted = {
        "networkPolicy": {"enabled": True},
        "metrics": {"serviceMonitor": {"enabled": True}},
    }
    notes = chart_helm.render(admitted, api_versions=OPTIONAL_APIS).notes
    assert "WARNING: networkPolicy" not in notes
    assert "admits Prometheus to the admin port only from networkPolicy.metricsFrom" in notes
    assert "kubernetes.io/metadata.name: monitoring" in notes
    via_admin = {
        "networkPolicy": {"enabled": True, "metricsFrom": [], "adminFrom": DEFAULT_METRICS_FROM},
        "metrics": {"serviceMonitor": {"enabled": True}},
    }
    assert "WARNING: networkPolicy" not in chart_helm.render(via_admin).notes
    # Nothing scrapes: nothing to warn about.
    assert "WARNING: networkPolicy" not in chart_helm.render(blocked_values).notes


def test_helm_test_pod_checks_readyz_through_the_metrics_service(chart_helm):
    release = chart_helm.render()
    pod = release.one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    service = release.one("Service", "lifespan-sidecar-metrics")
    url = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/readyz"
    assert url in script
    compile(script, "helm-test", "exec")  # the inline Python at least parses
    security = pod["spec"]["containers"][0]["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


# -- who may drain the pod ---------------------------------------------------------------------


def test_default_render_drains_with_exec_and_a_generated_secret(chart_helm, validate_k8s):
    first, second = chart_helm.render(), chart_helm.render()
    for release in (first, second):
        assert release.container["lifecycle"]["preStop"] == {"exec": {"command": PRESTOP_EXEC}}
        env = release.container["env"]
        assert env == [
            {
                "name": "SIDECAR_ADMIN_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "lifespan-sidecar-admin", "key": "token"}},
            }
        ]
        secret = release.one("Secret", "lifespan-sidecar-admin")
        validate_k8s(secret)
        token = _secret_token(secret)
        assert token not in json.dumps(release.deployment)
        assert secret["data"]["token"] not in json.dumps(release.deployment)
    # Without a cluster to look the Secret up in, each render draws a new token; the pod
    # template does not depend on it, so a new token alone never rolls the pods.
    tokens = {_secret_token(release.one("Secret")) for release in (first, second)}
    assert len(tokens) == 2
    assert first.deployment == second.deployment


def test_generated_token_is_kept_on_upgrade(fake_cluster):
    installed = fake_cluster.render()
    secret = installed.one("Secret", "lifespan-sidecar-admin")
    assert "/api/v1/namespaces/apps/secrets/lifespan-sidecar-admin" in fake_cluster.requests
    fake_cluster.add_secret(secret)
    for _ in range(2):
        upgraded = fake_cluster.render(upgrade=True)
        assert upgraded.one("Secret")["data"] == secret["data"]
    # A Secret without the key (edited by hand) gets a fresh token rather than an empty one.
    fake_cluster.add_secret({**secret, "data": {}})
    repaired = _secret_token(fake_cluster.render(upgrade=True).one("Secret"))
    assert re.fullmatch(r"[A-Za-z0-9]{48}", repaired)
    assert repaired != _secret_token(secret)


def test_inline_token_wins_over_the_one_in_the_cluster(fake_cluster):
    fake_cluster.add_secret(fake_cluster.render().one("Secret"))
    token = "an-inline-token-0123456789"
    upgraded = fake_cluster.render({"adminAuth": {"token": token}}, upgrade=True)
    assert _secret_token(upgraded.one("Secret")) == token
    assert token not in json.dumps(upgraded.deployment)  # exec hook: only the Secret has it


def test_existing_secret_is_referenced_not_created(chart_helm, validate_k8s):
    values = {"adminAuth": {"existingSecret": "team-admin-token", "existingSecretKey": "bearer"}}
    release = chart_helm.render(values)
    assert "Secret" not in release.kinds()
    assert release.container["env"][0] == {
        "name": "SIDECAR_ADMIN_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "team-admin-token", "key": "bearer"}},
    }
    assert release.container["lifecycle"]["preStop"] == {"exec": {"command": PRESTOP_EXEC}}
    validate_k8s(release.deployment)


def test_httpget_hook_sends_the_inline_token(chart_helm, validate_k8s):
    token = "inline-token-for-the-hook-0123456789"
    release = chart_helm.render({"adminAuth": {"token": token, "preStopHook": "httpGet"}})
    assert release.container["lifecycle"]["preStop"] == {
        "httpGet": {
            "path": "/prestop",
            "port": "admin",
            "httpHeaders": [{"name": "Authorization", "value": f"Bearer {token}"}],
        }
    }
    # The sidecar still reads the token from the Secret, which holds the same value.
    assert _secret_token(release.one("Secret", "lifespan-sidecar-admin")) == token
    assert release.container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == (
        "lifespan-sidecar-admin"
    )
    validate_k8s(release.deployment)


def test_extra_env_still_comes_after_the_token(chart_helm):
    extra = [{"name": "DEMO_STARTUP_SECONDS", "value": "1"}]
    release = chart_helm.render({"extraEnv": extra})
    assert [entry["name"] for entry in release.container["env"]] == [
        "SIDECAR_ADMIN_TOKEN",
        "DEMO_STARTUP_SECONDS",
    ]
    off = chart_helm.render({"adminAuth": {"enabled": False}, "extraEnv": extra})
    assert off.container["env"] == extra
    assert "env" not in chart_helm.render({"adminAuth": {"enabled": False}}).container


def test_notes_tell_where_the_token_is_or_warn_without_one(chart_helm):
    notes = chart_helm.render().notes
    assert "get secret lifespan-sidecar-admin -o jsonpath='{.data.token}' | base64 -d" in notes
    assert "WARNING: adminAuth.enabled is false" not in notes
    existing = chart_helm.render({"adminAuth": {"existingSecret": "x", "existingSecretKey": "k"}})
    assert "get secret x -o jsonpath='{.data.k}'" in existing.notes
    off = chart_helm.render({"adminAuth": {"enabled": False}}).notes
    assert "get secret" not in off
    assert "WARNING: adminAuth.enabled is false and config.admin.allow_from is empty" in off
    allowed = {
        "adminAuth": {"enabled": False},
        "config": {"admin": {"allow_from": "10.0.0.0/8, 127.0.0.1"}},
    }
    assert "WARNING: adminAuth" not in chart_helm.render(allowed).notes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(encoding="utf-8")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:  # 503 while starting
            exc.close()
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not turn ready: {log.read_text(encoding='utf-8')}")


def test_exec_hook_drains_a_running_sidecar_that_requires_the_token(chart_helm, tmp_path):
    """Run the rendered hook command against `sidecar run` with the rendered config and the
    token from the rendered Secret, as the container would."""
    app_port, admin_port = _free_port(), _free_port()
    config = {
        "server": {"port": app_port},
        "admin": {"port": admin_port},
        "shutdown": {"drain_delay": 0.3, "graceful_timeout": 1},
        "lifespan": {"shutdown_timeout": 2},
    }
    release = chart_helm.render({"config": config})
    config_path = tmp_path / "sidecar.yaml"
    config_path.write_text(release.config_text, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith("SIDECAR_")}
    env["SIDECAR_ADMIN_TOKEN"] = _secret_token(release.one("Secret"))
    env["DEMO_STARTUP_SECONDS"] = "0"

    def argv(command: list[str]) -> list[str]:
        assert command[0] == "sidecar"
        mounted = "/etc/sidecar/sidecar.yaml"
        rest = [str(config_path) if arg == mounted else arg for arg in command[1:]]
        return [sys.executable, "-m", "sidecar", *rest]

    log_path = tmp_path / "sidecar.log"
    with log_path.open("w", encoding="utf-8") as log:
        server = subprocess.Popen(
            argv(["sidecar", *release.container["args"]]),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(f"http://127.0.0.1:{admin_port}/readyz", server, log_path)
        hook = release.container["lifecycle"]["preStop"]["exec"]["command"]
        started = time.monotonic()
        result = subprocess.run(
            argv(hook), env=env, capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "drained"
        assert time.monotonic() - started >= 0.3  # it returned after the drain delay
        # Drained: the pod is out of rotation.
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2)
        caught.value.close()
        assert caught.value.code == 503
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# -- invalid values fail with a clear message ----------------------------------------------------

INVALID_RENDERS = {
    "grace period too short": (
        {"terminationGracePeriodSeconds": 30},
        "terminationGracePeriodSeconds=30 is too short: the sidecar may need 90s to stop",
    ),
    "grace period too short for custom timeouts": (
        {"terminationGracePeriodSeconds": 60, "config": {"shutdown": {"graceful_timeout": 40}}},
        "Set it to at least 110",
    ),
    "startup probe too short": (
        {"probes": {"startup": {"failureThreshold": 5}}},
        "probes.startup.failureThreshold=5 x periodSeconds=2 gives the app 10s to start, "
        "less than the 105s",
    ),
    "empty app target": ({"config": {"app": {"target": ""}}}, "config.app.target is empty"),
    "loopback admin host": (
        {"config": {"admin": {"host": "127.0.0.1"}}},
        'config.admin.host is "127.0.0.1": the kubelet and the Service reach the pod',
    ),
    "random port": ({"config": {"server": {"port": 0}}}, "config.server.port is 0"),
    "same ports": (
        {"config": {"server": {"port": 9000}, "admin": {"port": 9000}}},
        "config.server.port and config.admin.port are both 9000",
    ),
    "SIDECAR_ variable in extraEnv": (
        {"extraEnv": [{"name": "SIDECAR_SHUTDOWN_DRAIN_DELAY", "value": "1"}]},
        "extraEnv sets SIDECAR_SHUTDOWN_DRAIN_DELAY: set the matching key under config",
    ),
    "hpa min above max": (
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}},
        "autoscaling.minReplicas (5) is greater than autoscaling.maxReplicas (3)",
    ),
    "hpa on cpu without a cpu request": (
        {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}},
        "autoscaling.targetCPUUtilizationPercentage needs resources.requests.cpu",
    ),
    "servicemonitor without its service": (
        {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
        "metrics.serviceMonitor.enabled needs metrics.service.enabled",
    ),
    "pdb with both bounds": (
        {"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}},
        "set minAvailable or maxUnavailable, not both",
    ),
    "httpGet hook with an existing secret": (
        {"adminAuth": {"preStopHook": "httpGet", "existingSecret": "team-admin-token"}},
        "adminAuth.preStopHook=httpGet needs the admin token in the hook's Authorization "
        'header, but the token is in adminAuth.existingSecret "team-admin-token", which the '
        "chart cannot read",
    ),
    "httpGet hook with a generated token": (
        {"adminAuth": {"preStopHook": "httpGet"}},
        "adminAuth.preStopHook=httpGet needs the admin token in the hook's Authorization "
        "header, but adminAuth.token is empty",
    ),
    "short inline token": (
        {"adminAuth": {"token": "secret"}},
        "adminAuth.token is 6 characters long: the sidecar refuses a token shorter than 16. "
        "Generate one with `openssl rand -hex 32`",
    ),
    "the manifests' placeholder as the token": (
        {"adminAuth": {"token": "REPLACE-ME-with-a-random-token"}},
        "adminAuth.token is the placeholder of manifests/secret.yaml, which is public",
    ),
    "ingress without hosts": (
        {"ingress": {"enabled": True}},
        "ingress.enabled needs at least one entry in ingress.hosts",
    ),
    "httproute without a gateway": (
        {"httpRoute": {"enabled": True}},
        "httpRoute.enabled needs at least one entry in httpRoute.parentRefs",
    ),
    "httproute without rules": (
        {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}], "rules": []}},
        "httpRoute.enabled needs at least one entry in httpRoute.rules",
    ),
    "servicemonitor and podmonitor": (
        {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}},
        "Prometheus would scrape every pod twice",
    ),
    "an extra container named like the sidecar": (
        {"extraContainers": [{"name": "sidecar", "image": "busybox"}]},
        'two containers are named "sidecar"',
    ),
    "an init container and an extra container of one name": (
        {
            "initContainers": [{"name": "proxy", "image": "a", "restartPolicy": "Always"}],
            "extraContainers": [{"name": "proxy", "image": "b"}],
        },
        'two containers are named "proxy"',
    ),
    "inline token and existing secret": (
        {"adminAuth": {"token": "an-inline-token-0123456789", "existingSecret": "x"}},
        "adminAuth.token and adminAuth.existingSecret are both set",
    ),
    "token in the config map": (
        {"config": {"admin": {"token": "a-token-in-a-configmap"}}},
        "config.admin.token is set: the ConfigMap would hold the token in plain text",
    ),
    "an allow-list that refuses the exec hook": (
        {"config": {"admin": {"allow_from": "10.0.0.0/8"}}},
        'config.admin.allow_from is "10.0.0.0/8" but the preStop hook is exec: `sidecar '
        "prestop` runs in the container and calls /prestop over loopback, which that list "
        'refuses. Add 127.0.0.1, e.g. "10.0.0.0/8, 127.0.0.1"',
    ),
    "token file next to adminAuth": (
        {"config": {"admin": {"token_file": "/etc/admin/token"}}},
        "config.admin.token_file is set while adminAuth.enabled is true",
    ),
    "SIDECAR_ADMIN_TOKEN in extraEnv": (
        {
            "adminAuth": {"enabled": False},
            "extraEnv": [{"name": "SIDECAR_ADMIN_TOKEN", "value": "x"}],
        },
        "extraEnv sets SIDECAR_ADMIN_TOKEN: the chart passes the admin token itself; use adminAuth",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_RENDERS))
def test_invalid_values_fail_the_render_with_a_message(chart_helm, case):
    values, message = INVALID_RENDERS[case]
    with pytest.raises(helm.HelmRenderError) as caught:
        chart_helm.render(values)
    assert message in str(caught.value)


INVALID_SCHEMA = {
    "typo at the top": ({"replicaCont": 3}, "additional properties 'replicaCont' not allowed"),
    "typo in a section": (
        {"probes": {"startup": {"periodSecond": 3}}},
        "additional properties 'periodSecond' not allowed",
    ),
    "typo in the sidecar config": (
        {"config": {"lifespan": {"startup_timout": 3}}},
        "additional properties 'startup_timout' not allowed",
    ),
    "unknown config section": (
        {"config": {"servers": {"port": 1}}},
        "additional properties 'servers' not allowed",
    ),
    "string where a number goes": ({"replicaCount": "2"}, "/replicaCount"),
    "yaml 1.1 boolean for lifespan.mode": (
        {"config": {"lifespan": {"mode": True}}},
        "/config/lifespan/mode",
    ),
    "negative drain delay": ({"config": {"shutdown": {"drain_delay": -1}}}, "drain_delay"),
    "port out of range": ({"config": {"admin": {"port": 70000}}}, "/config/admin/port"),
    "bad pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "typo in adminAuth": (
        {"adminAuth": {"enable": False}},
        "additional properties 'enable' not allowed",
    ),
    "typo in adminAuth's secret key": (
        {"adminAuth": {"existingSecretkey": "token"}},
        "additional properties 'existingSecretkey' not allowed",
    ),
    "unknown preStop hook": ({"adminAuth": {"preStopHook": "http"}}, "/adminAuth/preStopHook"),
    "inline token that breaks the header": (
        {"adminAuth": {"token": "a token with spaces\nand a newline"}},
        "/adminAuth/token",
    ),
    "adminAuth.enabled as a string": ({"adminAuth": {"enabled": "false"}}, "/adminAuth/enabled"),
    "typo in ingress": (
        {"ingress": {"enable": True}},
        "additional properties 'enable' not allowed",
    ),
    "ingress path without a slash": (
        {"ingress": {"hosts": [{"host": "a.example.com", "paths": [{"path": "api"}]}]}},
        "/ingress/hosts/0/paths/0/path",
    ),
    "unknown ingress path type": (
        {"ingress": {"hosts": [{"paths": [{"path": "/", "pathType": "prefix"}]}]}},
        "/ingress/hosts/0/paths/0/pathType",
    ),
    "backendRefs in an httproute rule": (
        {"httpRoute": {"rules": [{"backendRefs": [{"name": "other"}]}]}},
        "additional properties 'backendRefs' not allowed",
    ),
    "unknown relabel action": (
        {"metrics": {"podMonitor": {"relabelings": [{"action": "rename"}]}}},
        "/metrics/podMonitor/relabelings/0/action",
    ),
    "typo in a relabeling": (
        {"metrics": {"serviceMonitor": {"metricRelabelings": [{"source_labels": ["a"]}]}}},
        "additional properties 'source_labels' not allowed",
    ),
    "part-of that is no label value": ({"partOf": "my app"}, "/partOf"),
    "command as a string": ({"command": "sidecar run"}, "/command"),
    "node cidr that is no cidr": (
        {"networkPolicy": {"nodeCIDRs": ["10.0.0.0"]}},
        "/networkPolicy/nodeCIDRs/0",
    ),
    "existing secret that is no name": (
        {"adminAuth": {"existingSecret": "My_Secret"}},
        "/adminAuth/existingSecret",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_SCHEMA))
def test_schema_rejects_typos_and_bad_types(chart_helm, case):
    values, message = INVALID_SCHEMA[case]
    with pytest.raises(helm.HelmValuesError) as caught:
        chart_helm.render(values)
    assert message in str(caught.value)
    assert "values don't meet the specifications of the schema" in str(caught.value)


# -- the schema itself -------------------------------------------------------------------------

# Kubernetes objects the chart passes through unchanged; their fields are Kubernetes' to
# check (and test_every_object_passes_the_kubernetes_schemas does, strictly).
PASS_THROUGH = {
    "/autoscaling/behavior",
    "/podSecurityContext",
    "/securityContext",
    "/affinity",
}


def _walk_objects(schema: dict[str, Any], path: str = ""):
    if schema.get("type") == "object" or "properties" in schema:
        yield path, schema
        for name, child in schema.get("properties", {}).items():
            yield from _walk_objects(child, f"{path}/{name}")
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _walk_objects(items, f"{path}[]")


def test_schema_closes_every_object_of_the_chart():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
    open_objects = []
    for path, node in _walk_objects(schema):
        extra = node.get("additionalProperties")
        typed_map = isinstance(extra, dict)  # a map of strings or quantities
        kubernetes_items = path.endswith("[]")  # lists of Kubernetes objects (env, volumes)
        if extra is False or typed_map or kubernetes_items or path in PASS_THROUGH:
            continue
        open_objects.append(path or "/")
    assert not open_objects, f"objects without additionalProperties: false: {open_objects}"


def test_schema_config_section_mirrors_the_sidecar_keys():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
    config = schema["properties"]["config"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == set(SECTIONS)
    json_types = {bool: "boolean", int: "integer", float: "number", str: "string"}
    for spec in key_specs():
        section = config["properties"][spec.section]
        assert section["additionalProperties"] is False
        node = section["properties"].get(spec.name)
        assert node is not None, (
            f"values.schema.json lacks config.{spec.path}: run python -m tests.deploy.sync_schema"
        )
        if spec.path == "health.checks":  # a list of check mappings, closed like the rest
            assert node["type"] == "array", spec.path
            assert node["items"]["additionalProperties"] is False, spec.path
            continue
        choices = getattr(spec.type, "__args__", None)
        if choices is not None and spec.type not in json_types:
            assert node["type"] == "string", spec.path
            assert node["enum"] == list(choices), spec.path
        else:
            assert node["type"] == json_types[spec.type], spec.path
        assert node.get("minimum") == spec.bounds.get("min"), spec.path
        assert node.get("maximum") == spec.bounds.get("max"), spec.path
    for section, node in config["properties"].items():
        names = {spec.name for spec in key_specs() if spec.section == section}
        assert set(node["properties"]) == names, section


def test_default_values_pass_the_schema(chart_helm):
    chart_helm.chart.validate_schema(chart_helm.chart.values)


# -- docs --------------------------------------------------------------------------------------


# Values documented as one block: the sidecar config and Kubernetes objects passed through.
DOCUMENTED_WHOLE = {"config", "resources", "podSecurityContext", "securityContext"}


def _leaf_paths(values: dict[str, Any], prefix: str = ""):
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in DOCUMENTED_WHOLE:
            yield from _leaf_paths(value, f"{path}.")
        else:
            yield path


def test_chart_readme_documents_every_value():
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    readme = (CHART_DIR / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))
    missing = [path for path in _leaf_paths(values) if path not in documented]
    assert not missing, f"charts/lifespan-sidecar/README.md does not document: {missing}"


# -- extension points ----------------------------------------------------------------------------


def test_ingress_routes_every_host_and_path_to_the_app_service(
    chart_helm: Helm, validate_k8s: Validate
) -> None:
    values = {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "60"},
            "hosts": [
                {
                    "host": "app.example.com",
                    "paths": [{"path": "/"}, {"path": "/x", "pathType": "Exact"}],
                },
                {"paths": [{"path": "/any-host", "pathType": "ImplementationSpecific"}]},
            ],
            "tls": [{"secretName": "app-tls", "hosts": ["app.example.com"]}],
        },
        "service": {"port": 8080},
    }
    release = chart_helm.render(values)
    ingress = release.one("Ingress")
    validate_k8s(ingress)
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"] == values["ingress"]["annotations"]
    assert spec["tls"] == values["ingress"]["tls"]
    backend = {"service": {"name": "lifespan-sidecar", "port": {"number": 8080}}}
    assert spec["rules"] == [
        {
            "host": "app.example.com",
            "http": {
                "paths": [
                    {"path": "/", "pathType": "Prefix", "backend": backend},
                    {"path": "/x", "pathType": "Exact", "backend": backend},
                ]
            },
        },
        {
            "http": {
                "paths": [
                    {"path": "/any-host", "pathType": "ImplementationSpecific", "backend": backend}
                ]
            }
        },
    ]
    app_service = release.one("Service", "lifespan-sidecar")
    assert app_service["spec"]["ports"][0]["port"] == 8080
    assert "Ingress" not in chart_helm.render().kinds()
    assert "https://app.example.com/   (Ingress)" in release.notes


def test_httproute_sends_every_rule_to_the_app_service(
    chart_helm: Helm, validate_k8s: Validate
) -> None:
    values = {
        "httpRoute": {
            "enabled": True,
            "parentRefs": [
                {"name": "public", "namespace": "gateway-system", "sectionName": "https"}
            ],
            "hostnames": ["app.example.com"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                    "timeouts": {"request": "30s"},
                },
                {},
            ],
        }
    }
    without_api = chart_helm.render(values)
    assert "HTTPRoute" not in without_api.kinds()
    assert "does not serve the\ngateway.networking.k8s.io/v1 API" in without_api.notes
    release = chart_helm.render(values, api_versions=(GATEWAY_API,))
    route = release.one("HTTPRoute")
    validate_k8s(route)
    spec = route["spec"]
    assert spec["parentRefs"] == values["httpRoute"]["parentRefs"]
    assert spec["hostnames"] == ["app.example.com"]
    backend = [{"name": "lifespan-sidecar", "port": 80}]
    assert spec["rules"] == [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
            "timeouts": {"request": "30s"},
            "backendRefs": backend,
        },
        {"backendRefs": backend},
    ]
    assert "does not serve" not in release.notes
    # The default rule takes every path.
    default_rules = chart_helm.render(
        {"httpRoute": {"enabled": True, "parentRefs": [{"name": "public"}]}},
        api_versions=(GATEWAY_API,),
    ).one("HTTPRoute")["spec"]["rules"]
    assert default_rules == [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backend}
    ]


def test_pod_monitor_scrapes_the_pods_admin_port_with_relabelings(
    chart_helm: Helm, validate_k8s: Validate
) -> None:
    relabelings = [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}]
    metric_relabelings = [{"action": "drop", "regex": "go_.*", "sourceLabels": ["__name__"]}]
    values = {
        "metrics": {
            "service": {"enabled": False},
            "podMonitor": {
                "enabled": True,
                "interval": "15s",
                "labels": {"release": "kps"},
                "relabelings": relabelings,
                "metricRelabelings": metric_relabelings,
            },
        }
    }
    without_api = chart_helm.render(values)
    assert "PodMonitor" not in without_api.kinds()
    assert "no PodMonitor was\ncreated" in without_api.notes
    release = chart_helm.render(values, api_versions=OPTIONAL_APIS)
    monitor = release.one("PodMonitor")
    validate_k8s(monitor)
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert (
        monitor["spec"]["selector"]["matchLabels"]
        == (release.deployment["spec"]["selector"]["matchLabels"])
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["apps"]}
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {
            "port": "admin",
            "path": "/metrics",
            "interval": "15s",
            "scrapeTimeout": "10s",
            "relabelings": relabelings,
            "metricRelabelings": metric_relabelings,
        }
    ]
    # The port it names is the sidecar's admin port, where /metrics is served.
    assert "admin" in [port["name"] for port in release.container["ports"]]
    assert "ServiceMonitor" not in release.kinds()


def test_service_monitor_carries_relabelings(chart_helm: Helm, validate_k8s: Validate) -> None:
    relabelings = [{"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "pod"}]
    values = {"metrics": {"serviceMonitor": {"enabled": True, "relabelings": relabelings}}}
    monitor = chart_helm.render(values, api_versions=OPTIONAL_APIS).one("ServiceMonitor")
    validate_k8s(monitor)
    assert monitor["spec"]["endpoints"][0]["relabelings"] == relabelings
    assert "metricRelabelings" not in monitor["spec"]["endpoints"][0]


def test_init_and_extra_containers_are_added_with_templates_expanded(
    chart_helm: Helm, validate_k8s: Validate
) -> None:
    migrate = {
        "name": "migrate",
        "image": '{{ include "lifespan-sidecar.image" . }}',
        "command": ["python", "-m", "myapp.migrate", "--release", "{{ .Release.Name }}"],
    }
    proxy = {"name": "proxy", "image": "cloud-sql-proxy:2", "restartPolicy": "Always"}
    shipper = {"name": "log-shipper", "image": "fluent-bit:3"}
    values = {
        "image": {"repository": "registry.example.com/my-app", "tag": "1.2.3"},
        "initContainers": [migrate, proxy],
        "extraContainers": [shipper],
    }
    release = chart_helm.render(values)
    validate_k8s(release.deployment)
    pod = release.pod_spec
    assert pod["initContainers"] == [
        {
            "name": "migrate",
            "image": "registry.example.com/my-app:1.2.3",
            "command": ["python", "-m", "myapp.migrate", "--release", "lifespan-sidecar"],
        },
        proxy,
    ]
    assert [c["name"] for c in pod["containers"]] == ["sidecar", "log-shipper"]
    assert pod["containers"][1] == shipper
    assert "initContainers" not in chart_helm.render().pod_spec


def test_command_and_args_replace_the_images_entrypoint_and_cmd(
    chart_helm: Helm, validate_k8s: Validate
) -> None:
    default = chart_helm.render().container
    assert "command" not in default
    assert default["args"] == ["run", "--config", "/etc/sidecar/sidecar.yaml"]
    command = ["/usr/bin/tini", "-g", "--", "sidecar"]
    args = ["run", "--config", "/etc/sidecar/sidecar.yaml", "--log-level", "debug"]
    release = chart_helm.render({"command": command, "args": args})
    validate_k8s(release.deployment)
    assert release.container["command"] == command
    assert release.container["args"] == args


def test_part_of_labels_every_object_when_set(chart_helm: Helm) -> None:
    default = chart_helm.render()
    for obj in default.objects:
        assert "app.kubernetes.io/part-of" not in obj["metadata"]["labels"], obj["kind"]
    release = chart_helm.render({"partOf": "payments"})
    for obj in release.objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "payments", obj["kind"]
    template = release.deployment["spec"]["template"]["metadata"]["labels"]
    assert template["app.kubernetes.io/part-of"] == "payments"
    # Never in a selector: it would make the Deployment's immutable selector depend on it.
    assert "app.kubernetes.io/part-of" not in release.deployment["spec"]["selector"]["matchLabels"]


def test_notes_remind_that_app_from_must_admit_the_ingress_controller(chart_helm: Helm) -> None:
    values = {
        "ingress": {
            "enabled": True,
            "hosts": [{"host": "a.example.com", "paths": [{"path": "/"}]}],
        },
        "networkPolicy": {"enabled": True, "appFrom": [{"podSelector": {}}]},
    }
    assert "it must include your ingress controller's pods" in chart_helm.render(values).notes
    values["networkPolicy"]["appFrom"] = []
    assert "it must include your" not in chart_helm.render(values).notes


def test_kubernetes_validate_has_the_schemas_of_both_versions() -> None:
    available = set(kubernetes_validate.utils.all_versions())
    assert set(KUBE_VERSIONS) <= available, sorted(available)


def test_supported_kubernetes_versions_are_the_documented_ones() -> None:
    readme = (CHART_DIR / "README.md").read_text(encoding="utf-8")
    oldest, newest = (".".join(v.split(".")[:2]) for v in KUBE_VERSIONS)
    assert f"Kubernetes {oldest} or newer" in readme
    assert f"Kubernetes {oldest} and {newest}" in readme
