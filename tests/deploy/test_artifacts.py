"""The release artifacts: the wheel and sdist (`python -m build`, `twine check`), the wheel
installed into a clean virtual environment and serving from there, and the packaged chart
(`helm package` through helm-python-sdk), whose appVersion is the package's version."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import helm_python as helm
import pytest
import yaml

from sidecar import __version__

from ..conftest import WAIT
from .conftest import CHART_DIR, Helm

ROOT = Path(__file__).resolve().parents[2]
# Building runs pip in an isolated environment (setuptools from the index); installing the
# wheel downloads its dependencies.
BUILD_TIMEOUT = 600

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT * 2)


def _run(*command: str, cwd: Path, timeout: float = BUILD_TIMEOUT) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "PYTHON"))}
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """`python -m build`: the sdist, then the wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", str(out), str(ROOT), cwd=out)
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1, wheels
    assert len(sdists) == 1, sdists
    return Dist(wheel=wheels[0], sdist=sdists[0])


def test_artifacts_are_named_after_the_version(dist: Dist) -> None:
    assert dist.wheel.name == f"lifespan_sidecar-{__version__}-py3-none-any.whl"
    assert dist.sdist.name == f"lifespan_sidecar-{__version__}.tar.gz"


def test_twine_check_passes(dist: Dist) -> None:
    output = _run(
        sys.executable, "-m", "twine", "check", "--strict", str(dist.wheel), str(dist.sdist),
        cwd=dist.wheel.parent,
    )  # fmt: skip
    assert output.count("PASSED") == 2, output


def test_wheel_holds_the_package_and_nothing_else(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(f"lifespan_sidecar-{__version__}.dist-info/METADATA").decode()
        entry_points = wheel.read(f"lifespan_sidecar-{__version__}.dist-info/entry_points.txt")
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"sidecar", f"lifespan_sidecar-{__version__}.dist-info"}, top_level
    for needed in ("sidecar/cli.py", "sidecar/py.typed", "sidecar/examples/demo.py"):
        assert needed in names, needed
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert f"Version: {__version__}" in metadata
    assert "Requires-Dist: aiohttp" in metadata
    assert b"sidecar = sidecar.cli:main" in entry_points


def test_sdist_builds_from_what_it_holds(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in ("pyproject.toml", "README.md", "sidecar/cli.py", "sidecar/py.typed"):
        assert needed in names, needed
    # The wheel was built from this sdist (python -m build's default), so it is complete.


@dataclass
class Venv:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"


@pytest.fixture(scope="session")
def installed(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A new virtual environment with the wheel installed, nothing from the checkout."""
    root = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    env = Venv(root)
    _run(str(env.bin / "python"), "-m", "pip", "install", "--quiet", str(dist.wheel), cwd=root)
    return env


def test_the_installed_sidecar_comes_from_the_wheel(installed: Venv) -> None:
    where = _run(
        str(installed.bin / "python"), "-c", "import sidecar; print(sidecar.__file__)",
        cwd=installed.root,
    )  # fmt: skip
    assert Path(where.strip()).is_relative_to(installed.root), where
    assert not Path(where.strip()).is_relative_to(ROOT), where
    version = _run(str(installed.bin / "sidecar"), "--version", cwd=installed.root)
    assert __version__ in version


@pytest.fixture
def served(installed: Venv) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """The installed `sidecar run` serving the demo on free ports (read back from its log)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "PYTHON"))}
    env["DEMO_STARTUP_SECONDS"] = "0"
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [
                str(installed.bin / "sidecar"), "run", "--host", "127.0.0.1", "--port", "0",
                "--admin-host", "127.0.0.1", "--admin-port", "0", "sidecar.examples.demo:app",
            ],
            cwd=installed.root, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            app_url, admin_url = _wait_urls(process, log)
            yield process, app_url, admin_url
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=WAIT)


def _wait_urls(process: subprocess.Popen[str], log: IO[str]) -> tuple[str, str]:
    deadline = time.monotonic() + WAIT
    text = ""
    while time.monotonic() < deadline:
        log.seek(0)
        text = log.read()
        admin = re.search(r"admin endpoints on (http://\S+)", text)
        app = re.search(r"serving the app on (http://\S+)", text)
        if admin and app and "phase starting -> ready" in text:
            return app.group(1), admin.group(1)
        assert process.poll() is None, text
        time.sleep(0.05)
    raise AssertionError(f"the installed sidecar did not turn ready within {WAIT}s:\n{text}")


def test_the_installed_sidecar_serves_the_demo(
    served: tuple[subprocess.Popen[str], str, str],
) -> None:
    process, app_url, admin_url = served
    with urllib.request.urlopen(app_url + "/", timeout=WAIT) as response:
        assert json.loads(response.read())["greeting"] == "hello from the demo app"
    with urllib.request.urlopen(admin_url + "/readyz", timeout=WAIT) as response:
        assert response.status == 200
    process.terminate()
    assert process.wait(timeout=WAIT) == 0


# -- the chart ------------------------------------------------------------------------------------


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == __version__, (
        f"charts/lifespan-sidecar/Chart.yaml appVersion {chart['appVersion']!r} differs from "
        f"sidecar/_version.py {__version__!r}: set appVersion to {__version__!r}"
    )


@pytest.fixture(scope="session")
def chart_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chart")
    archive = Path(helm.package(CHART_DIR, destination=out, app_version=__version__))
    assert archive.parent == out
    return archive


def test_packaged_chart_carries_the_version_and_leaves_ci_files_out(chart_archive: Path) -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart_archive.name == f"lifespan-sidecar-{chart['version']}.tgz"
    with tarfile.open(chart_archive) as archive:
        names = set(archive.getnames())
        member = archive.extractfile("lifespan-sidecar/Chart.yaml")
        assert member is not None
        packaged = yaml.safe_load(member.read())
    assert packaged["appVersion"] == __version__
    assert packaged["version"] == chart["version"]
    for needed in (
        "values.yaml",
        "values.schema.json",
        "README.md",
        "files/alerts.yaml",
        "files/dashboard.json",
        "templates/deployment.yaml",
        "templates/NOTES.txt",
    ):
        assert f"lifespan-sidecar/{needed}" in names, needed  # fmt: skip
    assert not [name for name in names if name.startswith("lifespan-sidecar/ci/")]
    assert helm.digest(chart_archive).startswith("sha256:")


def test_packaged_chart_renders_like_the_directory(chart_archive: Path, chart_helm: Helm) -> None:
    with helm.Chart.load_archive(chart_archive.read_bytes()) as packaged:
        assert packaged.metadata["appVersion"] == __version__
        from_archive = Helm(packaged).render({"adminAuth": {"token": "a-token-for-the-compare-0"}})
    from_directory = chart_helm.render({"adminAuth": {"token": "a-token-for-the-compare-0"}})
    assert from_archive.objects == from_directory.objects
    image = from_archive.container["image"]
    assert image == f"lifespan-sidecar:{__version__}"
