"""The Dockerfile: lint-clean, consistent with the CLI and the chart, and buildable.

No Docker engine runs here, so the build is replayed: every stage gets a fresh virtual
environment standing in for the base image's Python and a directory standing in for its
filesystem, COPY copies from the build context (filtered by .dockerignore), and every RUN
runs with `sh -c` after its container paths are mapped into that directory. The image's
ENTRYPOINT and CMD are then run the same way.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import venv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import assert_hadolint_clean

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
# pip downloads the dependency wheels from the package index: allow for a slow mirror.
BUILD_TIMEOUT = 600
#: The init process in front of `sidecar` in the ENTRYPOINT (Debian's tini).
INIT = ["/usr/bin/tini", "--"]


def _installs_debian_packages(command: str) -> bool:
    return command.startswith("apt-get ")


# -- a small Dockerfile reader ---------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    flags: dict[str, str]
    arguments: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join continuation lines and drop comments, as the Dockerfile parser does."""
    lines: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        lines.append((start, buffer))
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a continuation line"
    return lines


def _split_flags(rest: str) -> tuple[dict[str, str], str]:
    flags = {}
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        name, _, value = flag[2:].partition("=")
        flags[name] = value
        rest = rest.lstrip()
    return flags, rest


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Return the global ARG defaults and the stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, logical in _logical_lines(text):
        keyword, _, rest = logical.partition(" ")
        keyword = keyword.upper()
        flags, rest = _split_flags(rest.strip())
        if keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], rest)
            base, _, name = image.partition(" AS ")
            stages.append(Stage(name=name.strip() or str(len(stages)), base=base.strip()))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            assert stages, f"line {line}: {keyword} before FROM"
            stages[-1].instructions.append(Instruction(keyword, flags, rest, line))
    return global_args, stages


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.arguments)
    assert isinstance(value, list), f"line {instruction.line}: {instruction.keyword} not exec form"
    return value


def _env_pairs(arguments: str) -> dict[str, str]:
    pairs = {}
    for token in shlex.split(arguments):
        name, sep, value = token.partition("=")
        assert sep, f"ENV {arguments!r}: use the NAME=value form"
        pairs[name] = value
    return pairs


def _final(stages: list[Stage], keyword: str) -> Instruction | None:
    found = [i for i in stages[-1].instructions if i.keyword == keyword]
    return found[-1] if found else None


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


# -- lint --------------------------------------------------------------------------------------


def test_hadolint_reports_nothing() -> None:
    assert_hadolint_clean(DOCKERFILE)


def test_every_hadolint_ignore_is_explained():
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"#\s*hadolint ignore=(.+)", line.strip())
        if not match:
            continue
        for rule in match.group(1).split(","):
            comment = []
            for previous in reversed(lines[:index]):
                if not previous.startswith("#"):
                    break
                comment.append(previous)
            assert any(rule.strip() in text for text in comment), (
                f"Dockerfile line {index + 1}: ignoring {rule} needs a comment above saying why"
            )


# -- the image's contract with the CLI and the chart ------------------------------------------


def test_entrypoint_is_the_sidecar_cli_under_tini_in_exec_form(dockerfile):
    _, stages = dockerfile
    entrypoint = _final(stages, "ENTRYPOINT")
    assert entrypoint is not None
    # Exec form: tini is PID 1 (it reaps orphans) and passes SIGTERM on to `sidecar`, its
    # only child, with no shell in between.
    assert exec_form(entrypoint) == [*INIT, "sidecar"]
    installs = [
        i.arguments
        for i in stages[-1].instructions
        if i.keyword == "RUN" and _installs_debian_packages(i.arguments)
    ]
    assert any(re.search(r"\btini(=\S+)?\b", command) for command in installs), installs
    from sidecar.cli import main

    cmd = exec_form(_final(stages, "CMD"))
    assert cmd[0] in main.commands, f"CMD starts with {cmd[0]!r}, not a sidecar command"
    assert cmd[0] == "run"
    assert cmd[cmd.index("--config") + 1] == "/etc/sidecar/sidecar.yaml"
    assert cmd[-1] == "sidecar.examples.demo:app"


def test_no_healthcheck(dockerfile):
    # Kubernetes ignores HEALTHCHECK; the chart's probes are the health checks.
    _, stages = dockerfile
    assert all(i.keyword != "HEALTHCHECK" for s in stages for i in s.instructions)


def test_runtime_image_settings(dockerfile):
    _, stages = dockerfile
    assert len(stages) >= 2, "multi-stage: build the wheel in one stage, install it in another"
    assert all(re.fullmatch(r"python:3\.11-slim(-\w+)?", s.base) for s in stages), [
        s.base for s in stages
    ]
    env: dict[str, str] = {}
    for instruction in stages[-1].instructions:
        if instruction.keyword == "ENV":
            env |= _env_pairs(instruction.arguments)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    user = _final(stages, "USER")
    # A numeric non-root user:group, so the kubelet's runAsNonRoot check can verify it.
    assert user is not None
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user.arguments), user.arguments


def test_image_matches_the_chart(dockerfile, chart_helm):
    _, stages = dockerfile
    release = chart_helm.render()
    container, pod = release.container, release.pod_spec
    # Ports: EXPOSE lists the app and admin ports the chart's container declares.
    expose = _final(stages, "EXPOSE")
    assert expose is not None
    exposed = sorted(int(port.split("/")[0]) for port in expose.arguments.split())
    assert exposed == sorted(port["containerPort"] for port in container["ports"])
    # The chart replaces CMD only: the same subcommand and config path, ENTRYPOINT kept.
    cmd = exec_form(_final(stages, "CMD"))
    assert "command" not in container
    assert container["args"] == cmd[: len(container["args"])]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert os.path.dirname(cmd[cmd.index("--config") + 1]) == mount["mountPath"]
    # The chart's securityContext runs as the image's user.
    user, group = _final(stages, "USER").arguments.split(":")
    assert pod["securityContext"]["runAsUser"] == int(user)
    assert pod["securityContext"]["runAsGroup"] == int(group)


def test_exposed_ports_are_the_sidecars_defaults(dockerfile):
    from sidecar.config import Config

    _, stages = dockerfile
    exposed = sorted(int(p.split("/")[0]) for p in _final(stages, "EXPOSE").arguments.split())
    assert exposed == sorted([Config().server.port, Config().admin.port])


# -- the build, replayed -------------------------------------------------------------------------


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        pattern = pattern.strip("/")
        regex = ""
        for part in re.split(r"(\*\*/?)", pattern):
            if part.startswith("**"):
                regex += "(.*/)?" if part.endswith("/") else ".*"
            else:
                regex += fnmatch.translate(part).removeprefix("(?s:").removesuffix(")\\Z")
        # A pattern that names a directory also covers everything below it.
        patterns.append((negated, re.compile(f"(?s:{regex})(/.*)?")))
    return patterns


def _in_context(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Apply .dockerignore: the last matching pattern decides."""
    included = True
    for negated, regex in patterns:
        if regex.fullmatch(relative):
            included = negated
    return included


def _copy_from_context(sources: list[str], destination: Path) -> None:
    patterns = _dockerignore_patterns()
    for source in sources:
        path = ROOT / source.rstrip("/")
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        copied = 0
        for file in files:
            relative = str(file.relative_to(ROOT))
            if not _in_context(relative, patterns):
                continue
            if path.is_file():
                target = destination / file.name if destination.is_dir() else destination
            else:
                target = destination / file.relative_to(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
            copied += 1
        assert copied, f"COPY {source}: .dockerignore leaves nothing of it in the build context"


class Replay:
    """Replay one stage: a venv for the base image's Python, a directory for its filesystem."""

    def __init__(self, stage: Stage, work: Path, stages: dict[str, Replay], env: Path) -> None:
        self.stage = stage
        self.root = work / f"{stage.name}-root"
        self.root.mkdir()
        self.venv = env
        self.stages = stages
        self.workdir = "/"
        self.env: dict[str, str] = {}
        self.log: list[str] = []

    def host(self, container_path: str) -> Path:
        absolute = (
            container_path
            if container_path.startswith("/")
            else (f"{self.workdir.rstrip('/')}/{container_path}")
        )
        return self.root / absolute.lstrip("/")

    def environment(self) -> dict[str, str]:
        base = {
            key: value
            for key, value in os.environ.items()
            # Keep PIP_* (a machine's index mirror); drop what would change Python or the
            # sidecar's settings.
            if not key.startswith(("SIDECAR_", "PYTHON", "VIRTUAL_ENV"))
        }
        bin_dir = str(self.venv / "bin")
        return (
            base
            | self.env
            | {"PATH": f"{bin_dir}:{base.get('PATH', '')}", "VIRTUAL_ENV": str(self.venv)}
        )

    def map_paths(self, command: str, mounts: dict[str, Path]) -> str:
        """Point the container paths of a shell command at this replay's directories."""

        def replace(match: re.Match[str]) -> str:
            path = match.group(0)
            for target, source in mounts.items():
                if path == target or path.startswith(target + "/"):
                    return str(source) + path[len(target) :]
            return str(self.host(path))

        return re.sub(r"(?<![\w.:/-])/[\w.-]+(?:/[\w.-]+)*/?", replace, command)

    def sh(
        self, command: str, *, timeout: float = BUILD_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        cwd = self.host(self.workdir)
        cwd.mkdir(parents=True, exist_ok=True)
        return subprocess.run(
            ["sh", "-c", command],
            cwd=cwd,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run_instruction(self, instruction: Instruction) -> None:
        keyword, arguments = instruction.keyword, instruction.arguments
        if keyword == "WORKDIR":
            self.workdir = (
                arguments
                if arguments.startswith("/")
                else (f"{self.workdir.rstrip('/')}/{arguments}")
            )
            self.host(self.workdir).mkdir(parents=True, exist_ok=True)
        elif keyword == "ENV":
            self.env |= _env_pairs(arguments)
        elif keyword == "COPY":
            *sources, destination = shlex.split(arguments)
            target = self.host(destination)
            if destination.endswith("/") or len(sources) > 1:
                target.mkdir(parents=True, exist_ok=True)
            if "from" in instruction.flags:
                source_stage = self.stages[instruction.flags["from"]]
                for source in sources:
                    shutil.copytree(source_stage.host(source), target, dirs_exist_ok=True)
            else:
                _copy_from_context(sources, target)
        elif keyword == "RUN" and _installs_debian_packages(arguments):
            # The replay has no Debian system to install into (the host's is not the image's);
            # tests/deploy/test_image.py builds the real image, where this step runs.
            self.log.append(f"# skipped, Debian packages: {arguments}")
        elif keyword == "RUN":
            mounts = {}
            if "mount" in instruction.flags:
                options = dict(item.split("=", 1) for item in instruction.flags["mount"].split(","))
                assert options["type"] == "bind", instruction.flags["mount"]
                source_stage = self.stages[options["from"]]
                mounts[options["target"]] = source_stage.host(options["source"])
            command = self.map_paths(arguments, mounts)
            result = self.sh(command)
            self.log.append(f"$ {command}\n{result.stdout}{result.stderr}")
            assert result.returncode == 0, (
                f"Dockerfile line {instruction.line}: RUN {arguments}\n"
                f"replayed as: {command}\n{result.stdout}\n{result.stderr}"
            )
        elif keyword in {"USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL", "ARG"}:
            pass  # metadata: checked by the tests above
        else:
            raise AssertionError(f"line {instruction.line}: the replay cannot do {keyword} yet")


@pytest.fixture(scope="module")
def built_image(dockerfile, tmp_path_factory) -> Replay:
    """Replay every stage of the build; return the final stage."""
    _, stages = dockerfile
    work = tmp_path_factory.mktemp("docker-build")
    # A fresh venv per stage stands in for the base image's Python. Creating one (ensurepip)
    # takes seconds, so they are all made at once, up front.
    envs = [work / f"{stage.name}-venv" for stage in stages]
    with ThreadPoolExecutor(max_workers=len(envs)) as pool:
        list(pool.map(venv.EnvBuilder(with_pip=True, clear=True).create, envs))
    replays: dict[str, Replay] = {}
    for stage, env in zip(stages, envs, strict=True):
        replay = Replay(stage, work, replays, env)
        replays[stage.name] = replay
        for instruction in stage.instructions:
            replay.run_instruction(instruction)
    return replays[stages[-1].name]


def _run_image(image: Replay, args: list[str]) -> subprocess.CompletedProcess[str]:
    entrypoint = exec_form(_final([image.stage], "ENTRYPOINT"))
    # tini only starts its child and waits for it; the replay runs the child directly.
    assert entrypoint[: len(INIT)] == INIT, entrypoint
    entrypoint = entrypoint[len(INIT) :]
    command = shlex.join(
        image.map_paths(arg, {}) if arg.startswith("/") else arg for arg in [*entrypoint, *args]
    )
    return image.sh(command, timeout=60)


def test_build_installs_the_wheel_with_uvloop(built_image):
    site = built_image.sh('python -c "import sidecar, uvloop; print(sidecar.__file__)"')
    assert site.returncode == 0, site.stderr
    # Installed from the wheel into the venv, not the repository's editable checkout.
    assert str(built_image.venv) in site.stdout, site.stdout


def test_built_image_reports_its_version(built_image):
    from sidecar import __version__

    result = _run_image(built_image, ["--version"])
    assert result.returncode == 0, result.stderr
    assert __version__ in result.stdout


def test_built_image_default_cmd_has_a_valid_config(built_image, dockerfile):
    _, stages = dockerfile
    cmd = exec_form(_final(stages, "CMD"))
    # check-config takes the same arguments as run, and exits instead of serving.
    result = _run_image(built_image, ["check-config", *cmd[1:]])
    assert result.returncode == 0, result.stderr
    effective: dict[str, Any] = yaml.safe_load(result.stdout)
    assert effective["app"]["target"] == cmd[-1]
    exposed = sorted(int(p.split("/")[0]) for p in _final(stages, "EXPOSE").arguments.split())
    assert sorted([effective["server"]["port"], effective["admin"]["port"]]) == exposed


def test_built_image_accepts_the_config_the_chart_mounts(built_image, chart_helm, tmp_path):
    for values in ({}, {"config": {"lifespan": {"mode": "on", "startup_attempts": 3}}}):
        release = chart_helm.render(values)
        config = tmp_path / "sidecar.yaml"
        config.write_text(release.config_text, encoding="utf-8")
        result = built_image.sh(f"sidecar check-config --config {shlex.quote(str(config))}")
        assert result.returncode == 0, result.stderr
        effective = yaml.safe_load(result.stdout)
        assert effective["app"]["target"] == "sidecar.examples.demo:app"
        ports = {p["name"]: p["containerPort"] for p in release.container["ports"]}
        assert ports == {"http": effective["server"]["port"], "admin": effective["admin"]["port"]}


def test_build_context_filter_keeps_what_the_build_needs():
    patterns = _dockerignore_patterns()
    for needed in ("pyproject.toml", "README.md", "sidecar/cli.py", "sidecar/py.typed"):
        assert _in_context(needed, patterns), needed
    for excluded in ("tests/deploy/conftest.py", ".git/HEAD", "sidecar/__pycache__/cli.pyc"):
        assert not _in_context(excluded, patterns), excluded
