"""What a file's name says of its case: a scan or a label mask, of which case, which input channel.

The conventions research groups name files by, one home for every reader of a folder (:mod:`pipeline.core.dataset`)
and for ``predict``: tags (``<case>_mask``, ``<case>_seg``, ACDC's ``_gt``), leading words (LiTS's ``volume-0`` and
``segmentation-0``), channel files (``<case>_0000``, ``<case>_flair``), BIDS names (``sub-01_ses-1_T1w``) and case
folders (KiTS's ``case_00000/imaging.nii.gz`` beside ``segmentation.nii.gz``).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Container
from pathlib import Path

from pipeline.core.readers import strip_suffix

# flat folder layout: <case>_image.nii.gz next to <case>_label.nii.gz (or _seg / _mask)
IMAGE_TAGS = ("_image", "_img")
LABEL_TAGS = ("_label", "_seg", "_mask", "_segmentation", "_gt", "_1stho", ".seg", "-label", "-seg", "-mask")
# or led by a word naming a label or a scan before the case key: LiTS's segmentation-0 beside volume-0, BTCV's
# label0001 beside img0001 (a digit, or a separator, after the word)
LABEL_PREFIX = re.compile(r"(?:segmentation|seg|labels?|masks?|gt)(?:[-_ ]+|(?=\d))(?P<key>[A-Za-z0-9].*)", re.I)
SCAN_PREFIX = re.compile(
    r"(?:imaging|images?|img|volume|vol|scan|ct|mri?)(?:[-_ ]+|(?=\d))(?P<key>[A-Za-z0-9].*)", re.I
)
# or, in a folder of its own, named only as a label: that folder's mask (KiTS: case_00000/segmentation.nii.gz)
LABEL_NAMES = ("segmentation", "seg", "label", "labels", "mask", "masks", "gt", "ground_truth", "groundtruth")
# a second observer's masks beside the first's (CHASE_DB1's <case>_2ndHO): not used, as DRIVE's 2nd_manual/ folder
OTHER_OBSERVER_TAGS = ("_2ndho",)
# one file per input channel: <case>_0000, <case>_0001, ... (nnU-Net's convention)
CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
# or named: <case>_flair, <case>_t1, ... beside the label <case>_seg (BraTS 2021 as distributed)
CHANNEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


def untag(name: str, tags: tuple[str, ...]) -> str | None:
    """The case id of a file named ``<case><tag>.<ext>`` for one of ``tags`` (any case), else None."""
    stem = strip_suffix(name)
    for tag in tags:
        if stem.lower().endswith(tag):
            return stem[: -len(tag)]
    return None


#: a further mask of a case, numbered: ``<case>_mask_1`` beside ``<case>_mask`` (BUSI: one mask file per lesion)
NUMBERED_MASK = re.compile(rf"(?P<case>.+?)(?:{'|'.join(map(re.escape, LABEL_TAGS))})_\d+", re.IGNORECASE)


def mask_case(name: str) -> str | None:
    """The case id of a label mask named ``<case>_mask.<ext>`` (or ``_label``, ``_seg``, ``_segmentation``, ``_gt``, a
    first or second observer's ``_1stHO``, ``_2ndHO``), or of a numbered further mask ``<case>_mask_1.<ext>``, or the
    case key of ``segmentation-<key>`` (``label<digits>``, ...: :data:`LABEL_PREFIX`); None for any other name."""
    if (case := untag(name, LABEL_TAGS + OTHER_OBSERVER_TAGS)) is not None:
        return case
    stem = strip_suffix(name)
    if (numbered := NUMBERED_MASK.fullmatch(stem)) is not None:
        return numbered["case"]
    led = LABEL_PREFIX.fullmatch(stem)
    return led["key"] if led else None


def scan_key(stem: str) -> str:
    """What a scan's name says of its case beyond a leading word naming scans (``volume-0``, ``img0001``: ``0``,
    ``0001``; :data:`SCAN_PREFIX`), else the name."""
    led = SCAN_PREFIX.fullmatch(stem)
    return led["key"] if led else stem


#: BIDS file names (``sub-01_ses-1_acq-pre_T1w``): ``key-value`` entities, then a suffix naming the image
BIDS_NAME = re.compile(r"(?P<entities>sub-[A-Za-z0-9]+(?:_[A-Za-z]+-[A-Za-z0-9]+)*)_(?P<suffix>[A-Za-z][A-Za-z0-9]*)")
BIDS_LABEL_SUFFIXES = ("mask", "msk", "dseg", "roi", "seg", "label", "lesion")  # ATLAS's _mask, ISLES's _msk
BIDS_CASE_ENTITIES = ("sub", "ses", "run")  # one case: a subject's session (and run)
BIDS_CHANNEL_ENTITIES = ("acq", "ce", "rec")  # with the suffix, they name a channel (acq-pre_T1w: T1wpre)


@dataclasses.dataclass(frozen=True)
class BidsName:
    """What a BIDS file name says: its case (``sub-01_ses-1``), subject, channel (``T1w``, ``FLAIR``, ``dwi``) and
    whether its suffix names a label mask (:data:`BIDS_LABEL_SUFFIXES`); ``space-``, ``desc-``, ``label-`` are left
    out."""

    case: str
    subject: str
    channel: str
    is_label: bool


def bids_name(stem: str) -> BidsName | None:
    """The :class:`BidsName` of a file stem named as BIDS names files, else None."""
    found = BIDS_NAME.fullmatch(stem)
    if found is None:
        return None
    entities = dict(e.split("-", 1) for e in found["entities"].split("_"))
    case = "_".join(f"{k}-{entities[k]}" for k in BIDS_CASE_ENTITIES if k in entities)
    channel = found["suffix"] + "".join(entities[k] for k in BIDS_CHANNEL_ENTITIES if k in entities)
    return BidsName(case, f"sub-{entities['sub']}", channel, found["suffix"].lower() in BIDS_LABEL_SUFFIXES)


def is_label_name(path: Path) -> bool:
    """A file named only as a label mask (``segmentation.nii.gz``, :data:`LABEL_NAMES`)."""
    return strip_suffix(path.name).lower() in LABEL_NAMES


def channel_stem(stem: str) -> str:
    """A case folder's scan file name as a channel name: its letters and digits (``T1_pre`` -> ``T1pre``)."""
    return re.sub(r"[^A-Za-z0-9]", "", stem)


def case_folder_files(
    files: list[Path], by_recurring_names: bool = False
) -> tuple[dict[Path, tuple[str, bool]], set[Path]]:
    """The files of case folders, ``{file: (case key, is a label)}``, and the files in folders inside case folders
    (not used: KiTS23's ``case_00000/instances/``, a mask per annotator and instance).

    A case folder is named for what it holds, its files named alike in every such folder: it holds a file named only
    as a label (:func:`is_label_name`; KiTS: ``case_00000/imaging.nii.gz`` beside ``segmentation.nii.gz``), or, with
    ``by_recurring_names`` (``predict``'s scans, which have no masks to tell), files whose names recur in other
    folders. Its one scan and its masks take the folder's name; several scans beside a mask named only as one are the
    case's channels ``<folder>_<name>`` (``flair``, ``t1``); else each scan is a case ``<folder>_<name>`` (a patient's
    slices ``P1/001.png``: ``P1_001``, as :mod:`pipeline.core.dataset` keys ``images/P1/001.png``).
    """
    stems = {p: strip_suffix(p.name) for p in files}
    bare = {p.parent for p in files if is_label_name(p)}
    folders = set(bare)
    if by_recurring_names:
        seen: dict[str, set[Path]] = {}
        for p, stem in stems.items():
            seen.setdefault(stem.lower(), set()).add(p.parent)
        folders |= {p.parent for p, stem in stems.items() if len(seen[stem.lower()]) > 1}
    nested = {p for p in files if any(a in folders for a in p.parents[1:])}
    kept = [p for p in files if p.parent in folders and p not in nested]
    masks = {p: mask_case(p.name) for p in kept if not is_label_name(p)}
    labels = {p for p in kept if is_label_name(p) or masks.get(p) is not None}
    scans = Counter(p.parent for p in kept if p not in labels)
    out = {}
    for p in kept:
        folder = p.parent.name
        if scans[p.parent] == 1 or (p in labels and p.parent in bare):
            out[p] = (folder, p in labels)
        elif p.parent in bare:  # one of a case's channels, named by its file
            out[p] = (f"{folder}_{channel_stem(stems[p])}", False)
        else:  # one of several scans, each a case of its own, or the mask of one
            out[p] = (f"{folder}_{masks.get(p) or stems[p]}", p in labels)
    return out, nested


def channel_name_of(stem: str) -> tuple[str, str] | None:
    """``(case, channel name)`` of a file ``<case>_<name>`` named as a channel (BraTS 2021's ``<case>_flair``)."""
    case, _, name = stem.rpartition("_")
    return (case, name) if case and CHANNEL_NAME.fullmatch(name) else None


def named_channel(stem: str, case_ids: Container[str]) -> tuple[str, str] | None:
    """:func:`channel_name_of` for a file of one of ``case_ids``."""
    found = channel_name_of(stem)
    return found if found is not None and found[0] in case_ids else None
