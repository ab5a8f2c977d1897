"""pyproject.toml (what `pip install -e .` installs) agrees with requirements.txt (the versions
tested): every pinned version satisfies the range the package declares, and the package is the
library alone (the scripts stay scripts of the repository)."""

from __future__ import annotations

import re
import tomllib

from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def test_every_pinned_version_is_inside_the_packages_declared_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for group in project["optional-dependencies"].values()
                 for r in group]
    pinned = pins()
    for requirement in declared:
        name = canonicalize_name(requirement.name)
        if name in pinned:
            assert requirement.specifier.contains(pinned[name]), (requirement, pinned[name])
    named = {canonicalize_name(r.name) for r in declared}
    assert set(pinned) <= named, f"pinned but not declared: {sorted(set(pinned) - named)}"


def test_the_package_is_the_library_alone():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["packages"]["find"]["include"] == ["DecodingMethodsModels*"]
