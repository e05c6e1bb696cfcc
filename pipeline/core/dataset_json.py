"""What a ``dataset.json`` declares: label names and values, input channels (MSD and nnU-Net v2 styles).

Problems are appended to a list (see :class:`pipeline.core.cases.Problem`) rather than raised, so that
validation can report them all; :func:`read_labels` is the raising form for tools that need only the labels.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.core.cases import DATASET_ROW, Problem, raise_problems
from pipeline.core.labels import declared_labels

DEFAULT_LABELS = {0: "background", 1: "foreground"}
DEFAULT_MODALITIES = {0: "MR"}


def read_json(path: Path, problems: list[Problem]) -> dict | None:
    """The top-level object of a dataset.json, or None with a problem naming the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        problems.append(Problem(DATASET_ROW, str(path), "dataset.json not found"))
        return None
    except json.JSONDecodeError as err:
        problems.append(
            Problem(DATASET_ROW, str(path), f"malformed dataset.json: invalid JSON ({err.msg} at line {err.lineno})")
        )
        return None
    except (UnicodeDecodeError, OSError) as err:
        problems.append(Problem(DATASET_ROW, str(path), f"malformed dataset.json: cannot read it ({err})"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem(DATASET_ROW, str(path), "malformed dataset.json: top level is not an object"))
        return None
    return data


def int_keyed(mapping: object, what: str, source: Path, problems: list[Problem]) -> dict[int, str]:
    """``{"0": "background", ...}`` -> ``{0: "background", ...}``; problems for anything else."""
    if mapping is None:
        problems.append(Problem(DATASET_ROW, str(source), f"malformed dataset.json: missing '{what}'"))
        return {}
    if not isinstance(mapping, dict) or not mapping:
        problems.append(
            Problem(DATASET_ROW, str(source), f"malformed dataset.json: '{what}' must be a non-empty object")
        )
        return {}
    out: dict[int, str] = {}
    bad = []
    for k, v in mapping.items():
        try:
            out[int(str(k).strip())] = str(v)
        except ValueError:
            bad.append(k)
    if bad:
        keys = ", ".join(repr(k) for k in bad)
        problems.append(
            Problem(DATASET_ROW, str(source), f"malformed dataset.json: '{what}' key(s) {keys} are not integers")
        )
        return {}
    return dict(sorted(out.items()))


def parse_labels(meta: dict, source: Path, problems: list[Problem]) -> tuple[dict[int, str], tuple[int, ...]]:
    """Class names and the declared value of each class (see :mod:`pipeline.core.labels`)."""
    raw = meta.get("labels")
    if isinstance(raw, dict) and raw and all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
        raw = {str(v): k for k, v in raw.items()}  # nnU-Net v2 style {"background": 0, ...}
    labels = int_keyed(raw, "labels", source, problems)
    if labels and 0 not in labels:
        problems.append(
            Problem(DATASET_ROW, str(source), "malformed dataset.json: 'labels' must declare 0 (background)")
        )
        return {}, ()
    if labels and min(labels) < 0:
        problems.append(Problem(DATASET_ROW, str(source), "malformed dataset.json: 'labels' keys must not be negative"))
        return {}, ()
    return declared_labels(labels)


def parse_modalities(meta: dict, source: Path, problems: list[Problem]) -> tuple[dict[int, str], bool]:
    """The input channels (MSD ``modality`` or nnU-Net v2 ``channel_names``; default one MR channel) and
    whether the file declares them."""
    declared = meta.get("modality", meta.get("channel_names"))
    modalities = int_keyed(declared if declared is not None else {"0": "MR"}, "modality", source, problems)
    return modalities or dict(DEFAULT_MODALITIES), declared is not None


def _file_labels(path: Path, problems: list[Problem]) -> tuple[dict[int, str], tuple[int, ...]]:
    meta = read_json(path, problems)
    return parse_labels(meta, path, problems) if meta is not None else ({}, ())


def read_labels(path: str | Path) -> dict[int, str]:
    """The ``labels`` of a dataset.json as declared, ``{stored value: name}``; :class:`DatasetError` naming the
    file when they cannot be read."""
    path = Path(path)
    problems: list[Problem] = []
    labels, values = _file_labels(path, problems)
    if problems or not labels:
        raise_problems(problems, f"{path}: no labels")
    return dict(zip(values or tuple(labels), labels.values(), strict=True))


def sidecar_labels(root: Path, problems: list[Problem]) -> tuple[dict[int, str], tuple[int, ...], str]:
    """Labels (class names, declared values) from ``root/dataset.json`` if there is one, else the binary
    default (which :func:`pipeline.core.labels.values_found` may replace with the values in the masks); and
    the file they come from ("" for the default)."""
    path = root / "dataset.json"
    if not path.is_file():
        return dict(DEFAULT_LABELS), (), ""
    labels, values = _file_labels(path, problems)
    return labels, values, str(path)
