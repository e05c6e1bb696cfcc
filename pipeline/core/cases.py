"""What a dataset is made of: cases, the dataset's declarations, and the problems found in its description.

The layouts that produce these records are read in :mod:`pipeline.core.dataset`; problems of the description
are collected in :attr:`DatasetInfo.problems` rather than raised, so that validation can report them together
with every per-case problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

DATASET_ROW = "(dataset)"  # case id used for problems of the dataset description itself


class DatasetError(ValueError):
    """A dataset description that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file."""

    case_id: str
    file: str
    problem: str


#: a case id is a plain name: it names files (``<case>.nii.gz``, ``images/<case>.npy``) and nothing else.
#: Spaces inside and parentheses are allowed (``benign (1).png``, ``Patient 01``): harmless in a file name;
#: a leading dot or space, a trailing space, separators and control characters are not.
PLAIN_CASE_ID = re.compile(r"[\w()+-](?:[\w.()+ -]*[\w.()+-])?")
MAX_CASE_ID = 200  # characters: room for suffixes like "_probabilities.nii.gz" within a 255-byte file name


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` is not a plain name (letters, digits, ``. _ - + ( )``, inner spaces; no leading dot), or None."""
    if PLAIN_CASE_ID.fullmatch(case_id) and len(case_id) <= MAX_CASE_ID:
        return None
    return (
        f"case id {printable(case_id)!r} is not a plain name (letters, digits, '.', '_', '-', '+', '(', ')', "
        f"spaces inside; no leading dot; "
        f"at most {MAX_CASE_ID} characters)"
    )


def printable(text: str) -> str:
    """``text`` with control characters escaped, so that a report line stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def raise_problems(problems: tuple[Problem, ...] | list[Problem], fallback: str = "") -> None:
    """Raise :class:`DatasetError` listing ``problems`` (or ``fallback`` when there are none but it is set)."""
    if problems or fallback:
        raise DatasetError("; ".join(f"{p.file}: {p.problem}" for p in problems) or fallback)


@dataclass(frozen=True)
class Case:
    """One scan: its image file(s) (one per channel, or one multi-channel file) and optional label."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None
    group: str | None = None  # patient or site: cases of one group are never split apart
    #: a labelled case the dataset itself sets aside for testing (an MSD ``test`` entry with a label, ``imagesTs`` +
    #: ``labelsTs``, DRIVE's ``test/`` folder with its manual masks, a manifest row whose ``split`` is ``test``)
    test: bool = False


@dataclass(frozen=True)
class DatasetInfo:
    """What the dataset declares: label names, input channels, cases, and problems of the description."""

    name: str
    labels: dict[int, str]
    modalities: dict[int, str] = field(default_factory=lambda: {0: "MR"})
    cases: tuple[Case, ...] = ()
    problems: tuple[Problem, ...] = ()
    labels_source: str = ""  # the dataset.json that declares the labels ("" = built-in default)
    #: the stored label value of each class (class k <-> label_values[k]); empty: the values are the classes
    label_values: tuple[int, ...] = ()
    modalities_declared: bool = False  # the channels come from dataset.json (else: from the images)

    @property
    def num_classes(self) -> int:
        return max(self.labels, default=0) + 1

    @property
    def declared_labels(self) -> dict[int, str]:
        """``{stored value: name}``: the labels as the files hold them."""
        values = self.label_values or tuple(self.labels)
        return dict(zip(values, self.labels.values(), strict=True))

    def raise_for_problems(self) -> None:
        """Raise :class:`DatasetError` listing the description problems, if any."""
        raise_problems(self.problems)
