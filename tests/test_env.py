"""The two descriptions of the environment (pyproject.toml and environment.yml)
must name the same packages."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def normalise(spec: str) -> str:
    name, rest = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", spec).groups()
    return re.sub(r"[-_.]+", "-", name).lower() + rest.replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [s for group in project["optional-dependencies"].values() for s in group]  # dev, fp8
    wanted = {normalise(s) for s in project["dependencies"] + extras}
    pip_section = (ROOT / "environment.yml").read_text().split("- pip:", 1)[1]
    listed = {normalise(s) for s in re.findall(r"^\s+- (?!-e )([A-Za-z].*)$", pip_section, flags=re.M)}
    assert listed == wanted, (
        f"only in pyproject: {wanted - listed}; only in environment.yml: {listed - wanted}"
    )


def test_python_version_agrees():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    low = re.search(r">=\s*3\.(\d+)", project["requires-python"]).group(1)
    conda = re.search(r"python=3\.(\d+)", (ROOT / "environment.yml").read_text()).group(1)
    assert int(conda) >= int(low)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in (ROOT / "README.md").read_text()
