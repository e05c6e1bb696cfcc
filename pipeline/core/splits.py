"""Case-level splits: a test hold-out and k cross-validation folds, made before anything is planned.

The split is made by the preprocess stage from the dataset description alone (case ids and optional
groups), written once to ``split.file`` and reused while the cases and split settings match. The plan and
every preprocessed volume are computed from the non-test cases only, so a test case cannot shape what
training sees.

Groups (an optional ``group`` column in a CSV manifest or ``"group"`` key of a ``dataset.json`` training
entry: a patient or a site) are kept whole: a group's cases all go to the test set or all to one fold.
Without groups every case is its own group, and the split is the plain per-case one.

A dataset that sets its own labelled test cases aside (:attr:`pipeline.core.cases.Case.test`: an MSD ``test``
entry with a label, ``imagesTs/`` + ``labelsTs/``, DRIVE's ``test/`` with its manual masks, a manifest's ``split``
column) is tested on those (``split.dataset_test``), and every other case goes to the folds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.core import io

logger = logging.getLogger(__name__)

SPLITS_VERSION = 1


def _case_hash(case_ids: Sequence[str], groups: Mapping[str, str] | None = None, given: Sequence[str] = ()) -> str:
    """Hash of the case ids (and, when any case has a group, of the grouping; when the dataset names its own test
    cases, of which they are)."""
    test = set(given)
    lines = [
        c + (f"\t{groups.get(c, c)}" if groups else "") + ("\ttest" if c in test else "") for c in sorted(case_ids)
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def make_splits(
    case_ids: Sequence[str],
    test_fraction: float,
    folds: int,
    seed: int,
    groups: Mapping[str, str] | None = None,
    given_test: Sequence[str] = (),
) -> dict:
    """Hold out a test set, then split the rest into ``folds`` cross-validation folds, group by group.

    Groups are visited in a seeded random order: the first ones go to the test set until it holds
    ``round(test_fraction * n)`` cases; the rest, largest first, each go to the fold with fewest cases.
    Without groups this is a random permutation: the first cases are the test set, the rest dealt round-robin.
    ``given_test`` (the dataset's own test cases), when not empty, is the test set instead.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    ids = sorted(case_ids)
    given = set(given_test)
    groups = {c: str(g) for c, g in (groups or {}).items() if g not in (None, "")}
    members: dict[str, list[str]] = {}
    for c in ids:
        if c not in given:
            members.setdefault(groups.get(c, f"\0{c}"), []).append(c)
    names = sorted(members)
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    n_test = 0 if given else int(round(test_fraction * len(ids)))
    test: list[str] = sorted(given)
    if shared := {groups[c] for c in given if c in groups} & set(members):
        logger.warning(
            "%d group(s) hold both training and the dataset's test cases (e.g. %s)", len(shared), min(shared)
        )
    while order and len(test) < n_test:
        test += members[order.pop(0)]
    requested = folds
    if len(order) < 2:
        raise ValueError(f"{len(order)} non-test case group(s) cannot make cross-validation folds (at least 2 needed)")
    if len(order) < folds:  # a small dataset (e.g. 4 cases): as many folds as there are groups, said aloud
        logger.warning("only %d non-test case groups: %d folds instead of %d", len(order), len(order), folds)
        folds = len(order)
    fold_lists: list[list[str]] = [[] for _ in range(folds)]
    for name in sorted(order, key=lambda g: -len(members[g])):  # stable: ties keep the random order
        fold_lists[min(range(folds), key=lambda k: len(fold_lists[k]))] += members[name]
    out = {
        "version": SPLITS_VERSION,
        "seed": seed,
        "test_fraction": test_fraction,
        "folds": [sorted(f) for f in fold_lists],
        "folds_requested": requested,
        "test": sorted(test),
        "cases_sha": _case_hash(ids, groups, sorted(given)),
    }
    if given:
        out["test_given"] = True  # the dataset's own test cases, not a test_fraction draw
    if groups:
        out["groups"] = {c: groups[c] for c in ids if c in groups}
    return out


def load_or_make_splits(
    path: str | Path,
    case_ids: Sequence[str],
    test_fraction: float,
    folds: int,
    seed: int,
    groups: Mapping[str, str] | None = None,
    given_test: Sequence[str] = (),
) -> dict:
    """Reuse the split file if it was made for these cases, groups and settings; otherwise write a new one."""
    path = Path(path)
    clean = {c: str(g) for c, g in (groups or {}).items() if g not in (None, "")}
    if path.is_file():
        old = json.loads(path.read_text())
        same = (
            old.get("version") == SPLITS_VERSION
            and old.get("cases_sha") == _case_hash(case_ids, clean, given_test)
            and old.get("seed") == seed
            and old.get("test_fraction") == test_fraction
            and old.get("folds_requested", len(old.get("folds", []))) == folds
        )
        if same:
            logger.info("reusing split file %s", path)
            return old
        logger.warning("split file %s was made for other cases or settings: writing a new one", path)
    splits = make_splits(case_ids, test_fraction, folds, seed, clean, given_test)
    io.write_json(path, splits)
    logger.info(
        "split %d cases: %d test%s, %d folds of %s",
        len(case_ids),
        len(splits["test"]),
        " (the dataset's own)" if given_test else "",
        len(splits["folds"]),
        "/".join(str(len(f)) for f in splits["folds"]),
    )
    return splits


def read_splits(path: str | Path) -> dict:
    """The split file the preprocess stage wrote (a one-line error if it is missing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no split file; run the preprocess stage first")
    return json.loads(path.read_text())


def non_test_cases(splits: Mapping) -> list[str]:
    """Every case in a cross-validation fold (the cases planning and training may see)."""
    return sorted(c for fold in splits["folds"] for c in fold)


def check_fold(fold: int | str, folds: int) -> None:
    """Raise ``ValueError`` unless ``fold`` is a fold index below ``folds`` or ``"all"``."""
    if fold != "all" and not (isinstance(fold, int) and 0 <= fold < folds):
        raise ValueError(f"fold {fold!r} out of range 0..{folds - 1} (or 'all')")


def fold_assignment(splits: Mapping, fold: int | str) -> dict[str, str]:
    """case_id -> 'train' | 'val' | 'test' for one fold; fold ``"all"``: every non-test case trains."""
    check_fold(fold, len(splits["folds"]))
    out = {c: "test" for c in splits["test"]}
    for i, cases in enumerate(splits["folds"]):
        for c in cases:
            out[c] = "val" if i == fold else "train"
    return out
