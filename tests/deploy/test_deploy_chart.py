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
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from sidecar.auth import AdminGuard
from sidecar.config import SECTIONS, key_specs

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
        + margin
    )


# -- lint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", ["v1.27.0", "v1.33.0"])
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

    # The grace period covers drain + in-flight requests + lifespan shutdown.
    shutdown = (
        effective["shutdown"]["drain_delay"]
        + effective["shutdown"]["graceful_timeout"]
        + effective["lifespan"]["shutdown_timeout"]
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
    allow_from = case_check.effective["admin"]["allow_from"]
    guard = AdminGuard(token, allow_from)
    pre_stop = case_release.container["lifecycle"]["preStop"]
    if "exec" in pre_stop:
        assert guard.check("127.0.0.1", None) is None  # `sidecar prestop` runs in the pod
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
    security = container["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
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
    for obj in case_release.objects:
        labels = obj["metadata"]["labels"]
        missing = STANDARD_LABELS - set(labels)
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
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
    metrics_service = values.get("metrics", {}).get("service", {}).get("enabled", True)
    tests = values.get("tests", {}).get("enabled", True)
    assert ("Pod" in kinds) == (tests and metrics_service)


# -- specific cases ----------------------------------------------------------------------------


def test_default_values_give_the_documented_numbers(chart_helm):
    release = chart_helm.render()
    assert release.pod_spec["terminationGracePeriodSeconds"] == 60  # 5 + 20 + 30 + 5
    startup = release.container["startupProbe"]
    assert (startup["failureThreshold"], startup["periodSeconds"]) == (35, 2)  # (60 + 10) / 2
    assert release.deployment["spec"]["replicas"] == 2
    assert release.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert "ServiceMonitor" not in release.kinds()
    assert "terminationGracePeriodSeconds is 60" in release.notes


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
    assert release.pod_spec["terminationGracePeriodSeconds"] == 88  # ceil(82.5) + 5
    startup = release.container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 210


def test_explicit_grace_period_is_kept_when_long_enough(chart_helm):
    release = chart_helm.render({"terminationGracePeriodSeconds": 55})
    assert release.pod_spec["terminationGracePeriodSeconds"] == 55


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


def test_network_policy_limits_the_admin_port(chart_helm):
    release = chart_helm.render({"networkPolicy": {"enabled": True}})
    policy = release.one("NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert set(rules) == {"http", "admin"}
    assert "from" not in rules["http"]  # the app port stays open unless appFrom is set
    # Only the release's helm test pod (and the node, always) may reach the admin port.
    peers = rules["admin"]["from"]
    test_pod = release.one("Pod")
    assert [peer["podSelector"]["matchLabels"] for peer in peers] == [
        {key: test_pod["metadata"]["labels"][key] for key in peers[0]["podSelector"]["matchLabels"]}
    ]

    closed = chart_helm.render({"networkPolicy": {"enabled": True}, "tests": {"enabled": False}})
    ports = [rule["ports"][0]["port"] for rule in closed.one("NetworkPolicy")["spec"]["ingress"]]
    assert ports == ["http"]


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
    allowed = {"adminAuth": {"enabled": False}, "config": {"admin": {"allow_from": "10.0.0.0/8"}}}
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
        "terminationGracePeriodSeconds=30 is too short: the sidecar may need 55s to stop",
    ),
    "grace period too short for custom timeouts": (
        {"terminationGracePeriodSeconds": 60, "config": {"shutdown": {"graceful_timeout": 40}}},
        "Set it to at least 75",
    ),
    "startup probe too short": (
        {"probes": {"startup": {"failureThreshold": 5}}},
        "probes.startup.failureThreshold=5 x periodSeconds=2 gives the app 10s to start, "
        "less than the 70s",
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
    "inline token and existing secret": (
        {"adminAuth": {"token": "an-inline-token-0123456789", "existingSecret": "x"}},
        "adminAuth.token and adminAuth.existingSecret are both set",
    ),
    "token in the config map": (
        {"config": {"admin": {"token": "a-token-in-a-configmap"}}},
        "config.admin.token is set: the ConfigMap would hold the token in plain text",
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
    "short inline token": ({"adminAuth": {"token": "secret"}}, "/adminAuth/token"),
    "inline token that breaks the header": (
        {"adminAuth": {"token": "a token with spaces\nand a newline"}},
        "/adminAuth/token",
    ),
    "adminAuth.enabled as a string": ({"adminAuth": {"enabled": "false"}}, "/adminAuth/enabled"),
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
        assert node is not None, f"values.schema.json lacks config.{spec.path}"
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
