"""What an evaluation came from: git commit, ``dvc.lock`` hashes, library versions, seeds, device.

Everything is returned as a flat ``{tag: str}`` dict (MLflow tag names, prefix ``lineage.``) so the
same mapping can be logged as run tags and shown in the HTML report. Nothing here fails: a missing
``dvc.lock``, no git or an unknown package yields ``"unknown"`` (or no entry) and a log message.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_PACKAGES", "dvc_lock_hashes", "git_info", "library_versions", "lineage_tags"]

PREFIX = "lineage."
# distribution names; the first one installed of each tuple is reported under the first name
DEFAULT_PACKAGES: tuple[tuple[str, ...], ...] = (
    ("torch",),
    ("monai", "monai-weekly"),
    ("numpy",),
    ("scipy",),
    ("pandas",),
    ("nibabel",),
    ("SimpleITK",),
    ("matplotlib",),
    ("mlflow", "mlflow-skinny"),
    ("dvc",),
)
# stages whose outputs are what evaluation consumes; evaluate's own outs would be stale here
EXCLUDED_STAGES: tuple[str, ...] = ("evaluate",)


def _git(args: list[str], cwd: str | Path) -> str | None:
    """Output of a read-only git command, or None when git or the repository is missing."""
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip()


def git_info(cwd: str | Path = ".") -> dict[str, str]:
    """Commit of HEAD and whether tracked files differ from it (read-only git calls)."""
    commit = _git(["rev-parse", "HEAD"], cwd)
    if commit is None:
        logger.warning("no git commit found in %s", Path(cwd).resolve())
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {"git.commit": commit, "git.dirty": "unknown" if status is None else str(bool(status)).lower()}


def dvc_lock_hashes(
    lock_path: str | Path = "dvc.lock", exclude_stages: Iterable[str] = EXCLUDED_STAGES
) -> dict[str, str]:
    """``dvc.out.<path>`` -> md5 for every stage output, ``dvc.dep.<path>`` -> md5 for external data deps.

    External data deps are dependencies no stage produces and that are not Python sources (e.g. the
    raw dataset folder). Stages in ``exclude_stages`` are skipped. An absent lock file gives ``{}``.
    """
    lock_path = Path(lock_path)
    if not lock_path.is_file():
        logger.info("%s not found: no DVC hashes in the lineage", lock_path)
        return {}
    try:
        lock = yaml.safe_load(lock_path.read_text()) or {}
    except yaml.YAMLError as err:
        logger.warning("%s: not valid YAML (%s); no DVC hashes in the lineage", lock_path, err)
        return {}
    stages: Mapping[str, Any] = lock.get("stages") or {}
    excluded = set(exclude_stages)
    produced = {o.get("path") for s in stages.values() for o in (s.get("outs") or [])}
    out: dict[str, str] = {}
    for name, stage in stages.items():
        if name in excluded:
            continue
        for entry in stage.get("outs") or []:
            if entry.get("md5"):
                out[f"dvc.out.{entry['path']}"] = str(entry["md5"])
        for entry in stage.get("deps") or []:
            path = str(entry.get("path", ""))
            if entry.get("md5") and path not in produced and not path.endswith(".py"):
                out[f"dvc.dep.{path}"] = str(entry["md5"])
    return dict(sorted(out.items()))


def library_versions(packages: Iterable[tuple[str, ...]] = DEFAULT_PACKAGES) -> dict[str, str]:
    """``lib.<name>`` -> installed version (from package metadata, nothing is imported)."""
    out = {"lib.python": platform.python_version()}
    for names in packages:
        for dist in names:
            try:
                out[f"lib.{names[0]}"] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def lineage_tags(
    cfg: Any | None = None,
    device: str = "unknown",
    lock_path: str | Path = "dvc.lock",
    repo_dir: str | Path = ".",
    model_meta: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """All lineage tags of an evaluation, each name prefixed with ``lineage.``.

    ``cfg`` is a :class:`pipeline.config.Config` (its seeds are recorded); ``model_meta`` the model
    folder's ``model.json`` contents (weights checksum, training run, best epoch).
    """
    tags: dict[str, str] = {**git_info(repo_dir), **dvc_lock_hashes(lock_path), **library_versions()}
    tags["device"] = str(device)
    if cfg is not None:
        for block in ("synthetic", "split", "sample", "train", "evaluate"):
            seed = getattr(getattr(cfg, block, None), "seed", None)
            if seed is not None:
                tags[f"seed.{block}"] = str(seed)
        tags["data.root"] = str(cfg.data.root)
    if model_meta:
        for key in ("weights_sha256", "epoch"):
            if model_meta.get(key) is not None:
                tags[f"model.{key}"] = str(model_meta[key])
        run_id = (model_meta.get("mlflow") or {}).get("run_id")
        if run_id:
            tags["model.train_run_id"] = str(run_id)
    return {f"{PREFIX}{k}": v for k, v in tags.items()}
