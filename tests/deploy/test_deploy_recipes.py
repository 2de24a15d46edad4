"""The recipes for an existing app's image (examples/fastapi-app): lint-clean, consistent with
the sidecar's image and the chart, and shown in the docs exactly as they are built
(tests/deploy/test_image.py builds and runs them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import Helm, assert_hadolint_clean
from .test_deploy_dockerfile import exec_form, parse_dockerfile

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fastapi-app"
RECIPES = ("Dockerfile", "Dockerfile.wheel")
#: Where each recipe is shown: the requirements one in README.md ("Add it to your
#: Dockerfile"), the wheel one with the other images in docs/deployment.md.
SHOWN_IN = {"Dockerfile": ROOT / "README.md", "Dockerfile.wheel": ROOT / "docs" / "deployment.md"}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_passes_hadolint(recipe: str) -> None:
    assert_hadolint_clean(EXAMPLE / recipe)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_builds_on_the_sidecar_image_and_runs_as_the_chart_expects(
    recipe: str, chart_helm: Helm
) -> None:
    global_args, stages = parse_dockerfile((EXAMPLE / recipe).read_text(encoding="utf-8"))
    assert len(stages) == 1
    # FROM the sidecar's image, given as a build argument.
    assert global_args["SIDECAR_IMAGE"].startswith("lifespan-sidecar:")
    keywords = [i.keyword for i in stages[0].instructions]
    assert "ENTRYPOINT" not in keywords, "the sidecar image's ENTRYPOINT (tini) is kept"
    users = [i.arguments for i in stages[0].instructions if i.keyword == "USER"]
    assert users[-1] == "10001:10001", users
    release = chart_helm.render({"config": {"app": {"target": "myapp.main:app"}}})
    cmd = exec_form(next(i for i in reversed(stages[0].instructions) if i.keyword == "CMD"))
    assert cmd[: len(release.container["args"])] == release.container["args"]
    assert cmd[-1] == "myapp.main:app"


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_docs_show_the_recipes_as_they_are(recipe: str) -> None:
    document = SHOWN_IN[recipe]
    blocks = re.findall(r"```dockerfile\n(.*?)```", document.read_text(encoding="utf-8"), re.DOTALL)
    text = (EXAMPLE / recipe).read_text(encoding="utf-8")
    name = document.relative_to(ROOT)
    assert text in blocks, f"{name} does not show examples/fastapi-app/{recipe} as it is"
