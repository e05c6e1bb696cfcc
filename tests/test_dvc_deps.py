"""dvc.yaml tells the truth about code: every module a stage imports is one of its deps, and editing one reruns it."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = sorted(DVC_YAML["stages"])


def _module_file(name: str) -> Path | None:
    """The file of module ``pipeline.x.y`` in this repository (package ``__init__`` or ``.py``), if any."""
    base = ROOT.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Every ``pipeline`` module named by an import anywhere in ``path`` (lazy imports inside functions too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # "from pkg import module"
    return {name for name in found if name.split(".")[0] == "pipeline"}


def import_closure(module: str) -> dict[str, Path]:
    """Module name -> file for every repository module ``module`` imports, directly or not (parents included)."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            sub = ".".join(parts[:i])
            path = _module_file(sub)
            if path is not None and sub not in seen:
                seen[sub] = path
                todo.extend(_imports(path, sub))
    return seen


def _body(stage: str) -> dict:
    """A stage's definition (the ``do`` of a ``foreach`` stage such as ``train@k``)."""
    definition = DVC_YAML["stages"][stage]
    return definition.get("do", definition)


def _code_deps(stage: str) -> list[str]:
    return [d for d in _body(stage).get("deps", []) if "${" not in d]


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


def _stage_module(stage: str) -> str:
    cmd = _body(stage)["cmd"]
    match = re.search(r"python -m (pipeline(?:\.\w+)+)", cmd)
    assert match, f"dvc.yaml stage {stage}: cmd {cmd!r} does not run a pipeline module"
    return match[1]


def test_the_closure_follows_lazy_and_package_imports():
    closure = import_closure("pipeline.stages.train")
    for name in ("pipeline.config", "pipeline.sampling.patches", "pipeline.inference.model_folder"):
        assert name in closure
    assert "pipeline.tools.download" not in closure


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_imports_is_one_of_its_deps(stage):
    deps = _code_deps(stage)
    closure = import_closure(_stage_module(stage))
    missing = sorted(
        path.relative_to(ROOT).as_posix()
        for path in closure.values()
        if path.read_text().strip() and not _covered(path, deps)  # an empty __init__.py changes nothing
    )
    assert not missing, f"dvc.yaml stage {stage} imports these modules but does not list them in deps: {missing}"


def _resolve(text: str, params: dict, item: object = None) -> str:
    def value(match: re.Match) -> str:
        if match[1] == "item":
            return str(item)
        node = params
        for key in match[1].split("."):
            node = node[key]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", value, text)


def _entries(stage: dict) -> list[str]:
    """Paths of a stage's deps, outs, metrics and plots (``str`` or ``{path: options}`` entries)."""
    out = []
    for field in ("deps", "outs", "metrics", "plots"):
        for entry in stage.get(field, []):
            out.append(entry if isinstance(entry, str) else next(iter(entry)))
    return out


def _dvc(args: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "GIT_"))}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _stages_named(status: str) -> set[str]:
    return set(re.findall(r"^([\w@]+):\s*$", status, re.MULTILINE))


@pytest.mark.slow
def test_editing_an_imported_module_makes_dvc_status_name_the_stage(tmp_path):
    """In a copy of the repository with a fresh dvc.lock (placeholder outputs, no training), touch one module."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "configs", repo / "configs")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(["init", "-q"], repo)
    params = yaml.safe_load((repo / "configs" / "params.yaml").read_text())
    for name in STAGES:  # every path a stage names exists, as a file or a folder
        stage = DVC_YAML["stages"][name]
        items = [None] if "foreach" not in stage else yaml.safe_load(_resolve(stage["foreach"], params))
        for entry, item in [(e, i) for e in _entries(_body(name)) for i in items]:
            path = repo / _resolve(entry, params, item)
            if path.exists():
                continue
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("placeholder\n")
            else:
                path.mkdir(parents=True)
                (path / "placeholder").write_text("placeholder\n")
    _dvc(["commit", "-f", "-q"], repo)
    assert _stages_named(_dvc(["status"], repo)) == set()

    patches = repo / "pipeline" / "sampling" / "patches.py"
    patches.write_text(patches.read_text() + "\n# an edit\n")
    named = _stages_named(_dvc(["status"], repo))
    users = {s for s in STAGES if "pipeline.sampling.patches" in import_closure(_stage_module(s))}
    assert "train" in users
    named = {n.split("@")[0] for n in named}  # train@0 -> train
    assert users <= named, f"dvc status after editing patches.py names {sorted(named)}"
