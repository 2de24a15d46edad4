"""The documentation holds together: links resolve, shell examples survive zsh, and
docs/architecture.md lists the package's modules in an order the imports respect, none of
them over 500 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from .conftest import ROOT

DOCUMENTS = sorted(
    [
        ROOT / "README.md",
        ROOT / "bench" / "README.md",
        ROOT / "charts" / "lifespan-sidecar" / "README.md",
        *(ROOT / "docs").glob("*.md"),
    ]
)
IDS = [str(path.relative_to(ROOT)) for path in DOCUMENTS]

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)\)")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def code_blocks(text: str) -> list[tuple[str, list[str]]]:
    """Every fenced code block: its info string and its lines."""
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    info = ""
    for line in text.splitlines():
        if _FENCE.match(line):
            if current is None:
                info, current = line[3:].strip(), []
            else:
                blocks.append((info, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but '-' and '_' dropped."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6} +(.+?) *#*$", line)
        if match:
            base = anchor(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_anchor_follows_githubs_rules() -> None:
    assert anchor("Who may drain the pod") == "who-may-drain-the-pod"
    assert anchor("`health.checks` entries") == "healthchecks-entries"
    assert anchor("uvicorn's flags") == "uvicorns-flags"
    assert anchor("NetworkPolicy: the kubelet and Prometheus") == (
        "networkpolicy-the-kubelet-and-prometheus"
    )
    assert anchor("Unsupported lifespan, `mode: auto`") == "unsupported-lifespan-mode-auto"


@pytest.mark.parametrize("path", DOCUMENTS, ids=IDS)
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            file_part, _, fragment = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{target}: no such file")
            elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                broken.append(f"{target}: no heading with the anchor #{fragment}")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def _shell_commands(text: str) -> list[str]:
    """Shell command lines of the code blocks, and inline code that runs curl."""
    commands = []
    for info, lines in code_blocks(text):
        if info in ("sh", "bash", "shell"):
            commands += lines
        elif info == "console":
            commands += [line[2:] for line in lines if line.startswith("$ ")]
    for line in prose_lines(text):
        commands += [code for code in re.findall(r"`([^`]+)`", line) if code.startswith("curl ")]
    return commands


def _unquoted(command: str) -> str:
    """``command`` with its quoted strings and comments removed."""
    command = re.sub(r"'[^']*'|\"[^\"]*\"", "''", command)
    return command.split(" #", 1)[0]


@pytest.mark.parametrize("path", DOCUMENTS, ids=IDS)
def test_urls_with_a_query_are_quoted(path: Path) -> None:
    """zsh expands an unquoted ``?`` (and fails on no match): quote such URLs."""
    bad = [
        command
        for command in _shell_commands(path.read_text(encoding="utf-8"))
        if re.search(r"\S+\?\S*", _unquoted(command))
    ]
    assert not bad, f"{path.relative_to(ROOT)}: quote the URL in: {bad}"


# -- docs/architecture.md --------------------------------------------------------------------

PACKAGE = ROOT / "sidecar"


def _unit(path: Path) -> str:
    """``cli.py`` for a top-level module, ``serving/`` for anything in a subpackage."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) == 1 else parts[0] + "/"


def _imported_units(path: Path) -> set[str]:
    """The package's units that the module at ``path`` imports."""
    package = list(path.relative_to(PACKAGE).parts[:-1])
    units = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
            elif (node.module or "").split(".")[0] == "sidecar":
                base = []
            else:
                continue
            module = [part for part in (node.module or "").split(".") if part]
            if not node.level:
                module = module[1:]
            targets = [base + module] if base + module else [[a.name] for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".")[1:] for a in node.names if a.name.startswith("sidecar.")]
        else:
            continue
        for target in targets:
            if not target:
                continue
            head = PACKAGE / target[0]
            units.add(target[0] + "/" if head.is_dir() else target[0] + ".py")
    return units - {_unit(path)}


def _architecture_rows() -> list[tuple[list[str], str]]:
    """Each row of the table: the units it names, and its description."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if line.startswith("| `"):
            first, description = line.strip("|").split("|", 1)
            rows.append((re.findall(r"`([^`]+)`", first), description))
    return rows


def _package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_architecture_lists_every_module_of_the_package() -> None:
    named = [unit for units, _ in _architecture_rows() for unit in units]
    real = {_unit(path) for path in _package_modules()}
    assert sorted(set(named)) == sorted(real), "docs/architecture.md: the table's modules"
    assert len(named) == len(set(named)), "a module is in two rows"
    for units, description in _architecture_rows():
        for unit in units:
            if unit.endswith("/"):  # every module of a subpackage is named in its row
                for module in sorted((PACKAGE / unit).glob("*.py")):
                    if module.stem != "__init__":
                        assert f"`{module.stem}`" in description, f"{unit}{module.name}"


def test_architecture_order_matches_the_imports() -> None:
    row_of = {unit: i for i, (units, _) in enumerate(_architecture_rows()) for unit in units}
    upward = [
        f"{_unit(path)} ({path.relative_to(PACKAGE)}) imports {unit}"
        for path in _package_modules()
        for unit in _imported_units(path)
        if unit in row_of and _unit(path) in row_of and row_of[unit] < row_of[_unit(path)]
    ]  # a module missing from the table is the other test's failure
    assert not upward, "docs/architecture.md lists these below what imports them: " + (
        "; ".join(upward)
    )


# A module longer than this does more than one job: split it along its seams.
MAX_MODULE_LINES = 500


def test_no_module_of_the_package_is_over_500_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}
