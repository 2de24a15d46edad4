"""The images, really built with podman and run the way the chart runs them.

Three images: the repository's Dockerfile (the sidecar and its demo app), and the two
recipes for an existing app in examples/fastapi-app (from a requirements file, and from the
app's wheel), each built `FROM` the first. No container registry is reachable here, so the
base image (the Dockerfile's PYTHON_IMAGE, `python:3.11-slim-bookworm` elsewhere) is a
Debian 12 root filesystem made by debootstrap, once per machine (podman keeps it); set
TEST_PYTHON_IMAGE to use another one. ../shared/CONTAINER-NOTES.md explains every flag.

Each container runs as the chart's pod does: the user and group of podSecurityContext, a
read-only root filesystem with a tmpfs on /tmp, no capabilities, no privilege escalation,
the chart's ConfigMap mounted at /etc/sidecar and its args, the admin token from the chart's
Secret in SIDECAR_ADMIN_TOKEN, and the ports from environment variables.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..conftest import WAIT, require_binaries
from .conftest import Helm

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_APP = ROOT / "examples" / "fastapi-app"
ORPHAN_APP = Path(__file__).resolve().parent / "orphan_app.py"
#: The base image made from Debian's packages when TEST_PYTHON_IMAGE is not set.
LOCAL_PYTHON_IMAGE = "localhost/python:3.11-bookworm-local"
#: podman's default limits are above this machine's hard limits (setrlimit fails).
ULIMITS = ["--ulimit", "nofile=10000:10000", "--ulimit", "nproc=5000:5000"]
# A build downloads wheels from the package index; debootstrap downloads Debian packages.
BUILD_TIMEOUT = 900

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT * 2)


# -- podman ------------------------------------------------------------------------------------


@dataclass
class Podman:
    """The podman command line with the flags this kind of machine needs."""

    path: str
    # crun fails on the hybrid cgroup setup; runc with cgroupfs works.
    global_flags: tuple[str, ...] = ("--runtime", "runc", "--cgroup-manager", "cgroupfs")

    def __call__(
        self, *args: str, timeout: float = WAIT, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.path, *self.global_flags, *args],
            input=stdin.decode() if stdin is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def image_exists(self, name: str) -> bool:
        return self("image", "exists", name, check=False).returncode == 0

    def build(
        self, context: Path, tag: str, *, dockerfile: str = "Dockerfile", **args: str
    ) -> None:
        # The default OCI isolation fails with cgroups in hybrid mode; chroot works. No layer
        # cache: podman 4.3 cannot bind-mount from a build stage that came from the cache
        # (`RUN --mount=type=bind,from=build` finds nothing when only later steps rebuild),
        # and no intermediate images are left behind.
        flags = [f"--build-arg={key}={value}" for key, value in args.items()]
        self(
            "build",
            "--layers=false",
            "--isolation",
            "chroot",
            "--network",
            "host",
            "--file",
            str(context / dockerfile),
            *flags,
            "--tag",
            tag,
            str(context),
            timeout=BUILD_TIMEOUT,
        )


@pytest.fixture(scope="session")
def podman() -> Podman:
    tools = require_binaries("podman", "runc")
    return Podman(tools["podman"])


def _make_debian_python_image(podman: Podman, name: str) -> None:
    """A Debian 12 root filesystem with Python 3.11, imported as an image."""
    tools = require_binaries("debootstrap", "tar")
    with tempfile.TemporaryDirectory(prefix="python-rootfs-") as work:
        rootfs = Path(work) / "rootfs"
        subprocess.run(
            [
                tools["debootstrap"],
                "--variant=minbase",
                "--include=python3,python3-venv,python3-pip,ca-certificates",
                "bookworm",
                str(rootfs),
                "http://deb.debian.org/debian",
            ],
            check=True,
            capture_output=True,
            timeout=BUILD_TIMEOUT,
        )
        # What the official python image has and Debian's Python lacks: pip may install into
        # the system environment, and `python` exists.
        (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        python = rootfs / "usr/bin/python"
        python.unlink(missing_ok=True)
        python.symlink_to("python3")
        # pip inside the build reaches the index through this machine's TLS setup, whose root
        # certificate is in the host's bundle only.
        shutil.copyfile(
            "/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt"
        )
        archive = Path(work) / "rootfs.tar"
        subprocess.run([tools["tar"], "-C", str(rootfs), "-cf", str(archive), "."], check=True)
        podman("import", str(archive), name, timeout=BUILD_TIMEOUT)


@pytest.fixture(scope="session")
def python_image(podman: Podman) -> str:
    """The base image with Python 3.11: TEST_PYTHON_IMAGE, or one made from Debian's packages."""
    given = os.environ.get("TEST_PYTHON_IMAGE")
    if given:
        return given
    if not podman.image_exists(LOCAL_PYTHON_IMAGE):
        _make_debian_python_image(podman, LOCAL_PYTHON_IMAGE)
    return LOCAL_PYTHON_IMAGE


@pytest.fixture(scope="session")
def image_tag() -> str:
    """A tag of this session's own, so parallel runs from other checkouts never collide."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def sidecar_image(podman: Podman, python_image: str, image_tag: str) -> Iterator[str]:
    """The repository's Dockerfile, unchanged, built on the base image."""
    name = f"localhost/lifespan-sidecar:{image_tag}"
    podman.build(ROOT, name, PYTHON_IMAGE=python_image)
    yield name
    podman("rmi", "--force", name, check=False, timeout=120)


@pytest.fixture(scope="session")
def example_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/fastapi-app with the app's wheel built into dist/, as its recipe says."""
    context = tmp_path_factory.mktemp("example") / "fastapi-app"
    shutil.copytree(EXAMPLE_APP, context, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", "dist", "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    assert [path.name for path in (context / "dist").iterdir()] == ["myapp-1.0.0-py3-none-any.whl"]
    return context


@pytest.fixture(scope="session")
def example_images(
    podman: Podman, sidecar_image: str, example_context: Path, image_tag: str
) -> Iterator[dict[str, str]]:
    """The two recipes for an existing app, each built FROM the sidecar image."""
    images = {}
    for variant, dockerfile in (("requirements", "Dockerfile"), ("wheel", "Dockerfile.wheel")):
        name = f"localhost/myapp-{variant}:{image_tag}"
        podman.build(example_context, name, dockerfile=dockerfile, SIDECAR_IMAGE=sidecar_image)
        images[variant] = name
    yield images
    for name in images.values():
        podman("rmi", "--force", name, check=False, timeout=120)


# -- containers run as the chart runs them -----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout: float = 2) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


@dataclass
class PodSpec:
    """What the chart's Deployment tells the container runtime, for one app target."""

    config_dir: Path
    args: list[str]
    user: str
    token: str
    grace_period_s: int
    prestop: list[str]
    security: dict[str, Any]


def _pod_spec(chart_helm: Helm, target: str, directory: Path) -> PodSpec:
    release = chart_helm.render({"config": {"app": {"target": target}}})
    container, pod = release.container, release.pod_spec
    # The ConfigMap as the kubelet mounts it: a directory readable by the container's user.
    directory.mkdir(mode=0o755)
    (directory / "sidecar.yaml").write_text(release.config_text, encoding="utf-8")
    (directory / "sidecar.yaml").chmod(0o644)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/sidecar", mount
    security = pod["securityContext"]
    secret = release.one("Secret")
    return PodSpec(
        config_dir=directory,
        args=container["args"],
        user=f"{security['runAsUser']}:{security['runAsGroup']}",
        token=base64.b64decode(secret["data"]["token"]).decode(),
        grace_period_s=pod["terminationGracePeriodSeconds"],
        prestop=container["lifecycle"]["preStop"]["exec"]["command"],
        security=container["securityContext"],
    )


@dataclass
class Container:
    podman: Podman
    name: str
    app_port: int
    admin_port: int

    def logs(self) -> str:
        result = self.podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.podman("exec", self.name, *command, check=check)

    def exit_code(self) -> int:
        state = self.podman("inspect", "--format", "{{.State.ExitCode}}", self.name)
        return int(state.stdout.strip())

    def running(self) -> bool:
        state = self.podman("inspect", "--format", "{{.State.Running}}", self.name)
        return state.stdout.strip() == "true"

    def wait_ready(self) -> None:
        """Poll /readyz on the admin port until 200, within WAIT."""
        url = f"http://127.0.0.1:{self.admin_port}/readyz?verbose"
        deadline = time.monotonic() + WAIT
        last = ""
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"the container exited:\n{self.logs()}")
            try:
                status, body = _get(url)
            except OSError as exc:  # not listening yet
                last = repr(exc)
            else:
                if status == 200:
                    return
                last = f"{status} {body.decode(errors='replace')}"
            time.sleep(0.1)
        raise AssertionError(f"{url} not ready within {WAIT}s: {last}\n{self.logs()}")

    def app(self, path: str = "/") -> tuple[int, bytes]:
        return _get(f"http://127.0.0.1:{self.app_port}{path}", timeout=WAIT)


@dataclass
class Runner:
    """Start containers from an image with the chart's pod settings; removed at teardown."""

    podman: Podman
    containers: list[Container] = field(default_factory=list)

    def options(self, spec: PodSpec, *, app_port: int, admin_port: int) -> list[str]:
        assert spec.security["readOnlyRootFilesystem"] is True
        assert spec.security["allowPrivilegeEscalation"] is False
        assert spec.security["capabilities"] == {"drop": ["ALL"]}
        return [
            "--network",
            "host",
            "--user",
            spec.user,
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            *ULIMITS,
            "--volume",
            f"{spec.config_dir}:/etc/sidecar:ro",
            "--env",
            f"SIDECAR_ADMIN_TOKEN={spec.token}",
            "--env",
            f"SIDECAR_SERVER_PORT={app_port}",
            "--env",
            f"SIDECAR_ADMIN_PORT={admin_port}",
        ]

    def start(
        self,
        image: str,
        spec: PodSpec,
        *extra: str,
        args: list[str] | None = None,
    ) -> Container:
        container = Container(self.podman, f"sidecar-test-{uuid.uuid4().hex[:12]}", 0, 0)
        container.app_port, container.admin_port = _free_port(), _free_port()
        self.containers.append(container)
        options = self.options(spec, app_port=container.app_port, admin_port=container.admin_port)
        self.podman(
            "run",
            "--detach",
            "--name",
            container.name,
            *options,
            *extra,
            image,
            *(spec.args if args is None else args),
            timeout=60,
        )
        return container

    def run_to_exit(self, image: str, spec: PodSpec, *extra: str) -> tuple[int, str]:
        """Start a container that is expected to exit; return its exit code and its log."""
        container = self.start(image, spec, *extra)
        # `podman wait` prints the exit code once the container has stopped.
        code = int(self.podman("wait", container.name, timeout=WAIT * 2).stdout.strip())
        return code, container.logs()

    def cleanup(self) -> None:
        for container in self.containers:
            self.podman("rm", "--force", "--time", "0", container.name, check=False, timeout=60)


@pytest.fixture
def runner(podman: Podman) -> Iterator[Runner]:
    runner = Runner(podman)
    yield runner
    runner.cleanup()


# -- the three images --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageCase:
    """One image and how to tell that its app answers, and how to make its startup fail."""

    target: str
    greeting: str
    startup_failure_env: dict[str, str]
    startup_failure_log: str


IMAGE_CASES = {
    "sidecar": ImageCase(
        target="sidecar.examples.demo:app",
        greeting="hello from the demo app",
        # The demo's startup takes longer than the sidecar allows it.
        startup_failure_env={
            "DEMO_STARTUP_SECONDS": "30",
            "SIDECAR_LIFESPAN_STARTUP_TIMEOUT": "0.5",
        },
        startup_failure_log="did not complete within 0.5s (lifespan.startup_timeout)",
    ),
    "myapp-requirements": ImageCase(
        target="myapp.main:app",
        greeting="hello from myapp",
        startup_failure_env={"MYAPP_GREETING": ""},
        startup_failure_log="MYAPP_GREETING is set but empty",
    ),
    "myapp-wheel": ImageCase(
        target="myapp.main:app",
        greeting="hello from myapp",
        startup_failure_env={"MYAPP_GREETING": ""},
        startup_failure_log="MYAPP_GREETING is set but empty",
    ),
}


@pytest.fixture(params=sorted(IMAGE_CASES))
def image_case(
    request: pytest.FixtureRequest,
    chart_helm: Helm,
    tmp_path: Path,
) -> tuple[str, ImageCase, PodSpec]:
    """(image, case, pod spec) for each of the three images."""
    name: str = request.param
    if name == "sidecar":
        image: str = request.getfixturevalue("sidecar_image")
    else:
        images: dict[str, str] = request.getfixturevalue("example_images")
        image = images[name.removeprefix("myapp-")]
    case = IMAGE_CASES[name]
    return image, case, _pod_spec(chart_helm, case.target, tmp_path / "etc-sidecar")


def _env_flags(env: dict[str, str]) -> list[str]:
    return [flag for key, value in env.items() for flag in ("--env", f"{key}={value}")]


def test_image_serves_the_app_and_the_probes_as_the_chart_runs_it(
    image_case: tuple[str, ImageCase, PodSpec], runner: Runner
) -> None:
    image, case, spec = image_case
    container = runner.start(image, spec)
    container.wait_ready()
    status, body = container.app("/")
    assert status == 200, body
    assert json.loads(body)["greeting"] == case.greeting
    # PID 1 is tini, its only child the sidecar, both as the pod's user.
    processes = {}
    listing = container.exec("sh", "-c", 'for f in /proc/[0-9]*/status; do cat "$f"; echo; done')
    for status_file in listing.stdout.split("\n\n"):
        fields = dict(re.findall(r"^(\w+):\s*(.*)$", status_file, flags=re.MULTILINE))
        if fields:
            processes[int(fields["Pid"])] = fields
    assert processes[1]["Name"] == "tini", processes[1]
    children = [fields for fields in processes.values() if fields["PPid"] == "1"]
    sidecar = next(fields for fields in children if fields["Name"].startswith("sidecar"))
    uid, gid = spec.user.split(":")
    for fields in (processes[1], sidecar):
        assert fields["Uid"].split()[0] == uid
        assert fields["Gid"].split()[0] == gid
        assert fields["CapEff"] == "0000000000000000"
        assert fields["NoNewPrivs"] == "1"
    # The root filesystem is read-only; /tmp is not.
    refused = container.exec("sh", "-c", "touch /app/x", check=False)
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr
    container.exec("sh", "-c", "touch /tmp/x")


def test_podman_stop_drains_runs_lifespan_shutdown_and_exits_0(
    image_case: tuple[str, ImageCase, PodSpec], runner: Runner
) -> None:
    image, _, spec = image_case
    container = runner.start(image, spec)
    container.wait_ready()
    # SIGTERM to PID 1 (tini), which passes it on; SIGKILL only after the pod's grace period.
    started = time.monotonic()
    runner.podman("stop", "--time", str(spec.grace_period_s), container.name, timeout=120)
    elapsed = time.monotonic() - started
    logs = container.logs()
    assert container.exit_code() == 0, logs
    events = _events(logs)
    assert events.index("received SIGTERM") < events.index("drain started")
    assert events.index("drain started") < events.index("lifespan shutdown complete")
    assert events[-1] == "phase stopping -> stopped", events
    # The documented bound: the chart's terminationGracePeriodSeconds.
    assert elapsed < spec.grace_period_s, f"stopped after {elapsed:.1f}s\n{logs}"


def _events(logs: str) -> list[str]:
    """The shutdown steps in the (JSON) log, in order."""
    events = []
    for line in logs.splitlines():
        if not line.startswith("{"):
            continue
        message = json.loads(line)["message"]
        if message.startswith("received SIG"):
            events.append(message)
        elif "(drain started)" in message:
            events.append("drain started")
        elif message.startswith("lifespan shutdown complete"):
            events.append("lifespan shutdown complete")
        elif message.startswith("phase stopping -> stopped"):
            events.append("phase stopping -> stopped")
    return events


def test_configuration_error_exits_2_with_the_message_in_the_log(
    image_case: tuple[str, ImageCase, PodSpec], runner: Runner
) -> None:
    image, _, spec = image_case
    code, log = runner.run_to_exit(image, spec, "--env", "SIDECAR_SHUTDOWN_DRAIN_DELAY=soon")
    assert code == 2, log
    assert "SIDECAR_SHUTDOWN_DRAIN_DELAY" in log, log
    assert "invalid value 'soon' for shutdown.drain_delay" in log, log


def test_startup_failure_exits_3_with_the_reason_in_the_log(
    image_case: tuple[str, ImageCase, PodSpec], runner: Runner
) -> None:
    image, case, spec = image_case
    code, log = runner.run_to_exit(image, spec, *_env_flags(case.startup_failure_env))
    assert code == 3, log
    assert case.startup_failure_log in log, log


# -- the demo image: the kubelet's stop sequence, and zombies ----------------------------------


@pytest.fixture
def demo_spec(chart_helm: Helm, tmp_path: Path) -> PodSpec:
    return _pod_spec(chart_helm, "sidecar.examples.demo:app", tmp_path / "etc-sidecar")


def test_exec_prestop_hook_then_sigterm_as_the_kubelet_does(
    sidecar_image: str, demo_spec: PodSpec, runner: Runner
) -> None:
    container = runner.start(sidecar_image, demo_spec)
    container.wait_ready()
    # The hook runs in the container, with its environment (the token from the Secret).
    hook = container.exec(*demo_spec.prestop)
    assert hook.stdout.strip() == "drained", hook.stdout + hook.stderr
    status, body = _get(f"http://127.0.0.1:{container.admin_port}/readyz")
    assert status == 503, body
    status, _ = container.app("/")  # still served until SIGTERM closes the listener
    assert status == 200
    runner.podman("stop", "--time", str(demo_spec.grace_period_s), container.name, timeout=120)
    assert container.exit_code() == 0, container.logs()
    assert _events(container.logs())[-1] == "phase stopping -> stopped"


def _orphan_setup(tmp_path: Path) -> Path:
    app_dir = tmp_path / "app"
    app_dir.mkdir(mode=0o755)
    shutil.copyfile(ORPHAN_APP, app_dir / "orphan_app.py")
    (app_dir / "orphan_app.py").chmod(0o644)
    return app_dir


def _status(container: Container, pid: str) -> str | None:
    """/proc/<pid>/status in the container, None once the process is gone (reaped)."""
    result = container.exec("cat", f"/proc/{pid}/status", check=False)
    return result.stdout if result.returncode == 0 else None


def _start_orphan(container: Container) -> str:
    status, body = container.app("/orphan")
    assert status == 200, container.logs()
    pid = body.decode()
    info = _status(container, pid)
    assert info is not None, f"the orphan {pid} is not running"
    # Its parent exited, so the kernel re-parented it to PID 1 of the container.
    assert re.search(r"^PPid:\s*1$", info, flags=re.MULTILINE), info
    container.exec("sh", "-c", f"kill {pid}")
    return pid


def _wait_status(container: Container, pid: str, done: Callable[[str | None], bool]) -> str | None:
    deadline = time.monotonic() + WAIT
    info = _status(container, pid)
    while not done(info) and time.monotonic() < deadline:
        time.sleep(0.1)
        info = _status(container, pid)
    return info


def _zombie(info: str | None) -> bool:
    return info is not None and bool(re.search(r"^State:\s*Z", info, flags=re.MULTILINE))


def test_tini_reaps_an_orphan_the_app_leaves(
    sidecar_image: str, demo_spec: PodSpec, runner: Runner, tmp_path: Path
) -> None:
    app_dir = _orphan_setup(tmp_path)
    container = runner.start(
        sidecar_image,
        demo_spec,
        "--volume",
        f"{app_dir}:/app:ro",
        args=[*demo_spec.args, "orphan_app:app"],
    )
    container.wait_ready()
    pid = _start_orphan(container)
    info = _wait_status(container, pid, lambda info: info is None)
    assert info is None, f"the orphan {pid} was not reaped:\n{info}"


def test_without_tini_the_orphan_stays_a_zombie(
    sidecar_image: str, demo_spec: PodSpec, runner: Runner, tmp_path: Path
) -> None:
    """The control: the same app with the sidecar as PID 1, which reaps only its own children."""
    app_dir = _orphan_setup(tmp_path)
    container = runner.start(
        sidecar_image,
        demo_spec,
        "--volume",
        f"{app_dir}:/app:ro",
        "--entrypoint",
        "sidecar",
        args=[*demo_spec.args, "orphan_app:app"],
    )
    container.wait_ready()
    pid = _start_orphan(container)
    info = _wait_status(container, pid, _zombie)
    assert _zombie(info), f"expected {pid} to be left a zombie:\n{info}"
