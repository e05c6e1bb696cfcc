"""pyproject.toml: dependency floors exclude releases with published holes in what the pipeline relies on."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _requirement(name: str) -> Requirement:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name.lower() == name)


@pytest.mark.parametrize(
    ("name", "refused", "admitted"),
    [
        # torch.load(weights_only=True) ran code before 2.6 and could corrupt memory before 2.10
        ("torch", ["2.4.1", "2.5.1", "2.9.1"], ["2.10.0", "2.13.0"]),
        # MONAI's archive-extraction and unpickling advisories: all fixed in 1.6.0
        ("monai", ["1.4.0", "1.5.0", "1.5.2"], ["1.6.0", "1.6.1"]),
    ],
)
def test_floors_refuse_vulnerable_releases(name, refused, admitted):
    spec = _requirement(name).specifier
    assert not [v for v in refused if spec.contains(v)]
    assert all(spec.contains(v) for v in admitted)


@pytest.mark.parametrize("name", ["torch", "monai"])
def test_installed_release_is_admitted(name):
    installed = Version(md.version(name).split("+")[0])
    assert _requirement(name).specifier.contains(installed)
