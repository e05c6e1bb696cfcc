"""Find the cases of a dataset on disk: an MSD folder, a paired folder or a CSV manifest (its layout).

Each reader returns a :class:`~pipeline.core.cases.DatasetInfo`. Problems with the dataset description itself
(a malformed ``dataset.json`` or manifest, paths that leave the dataset folder, unpaired files, duplicate case
ids) are collected in :attr:`DatasetInfo.problems` rather than raised, so that validation can report them
together with every per-case problem. What a ``dataset.json`` declares is read in
:mod:`pipeline.core.dataset_json`.
"""

from __future__ import annotations

import csv
import dataclasses
import filecmp
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.config import DataConfig
from pipeline.core.cases import DATASET_ROW, Case, DatasetError, DatasetInfo, Problem, case_id_problem
from pipeline.core.dataset_json import parse_labels, parse_modalities, read_json, sidecar_labels
from pipeline.core.names import (
    CHANNEL_FILE,
    IMAGE_TAGS,
    NUMBERED_MASK,
    OTHER_OBSERVER_TAGS,
    BidsName,
    bids_name,
    case_folder_files,
    mask_case,
    named_channel,
    scan_key,
    untag,
)
from pipeline.core.readers import is_image_file, strip_suffix

logger = logging.getLogger(__name__)


def _abs(path: str | Path) -> Path:
    return Path(os.path.normpath(os.path.abspath(path)))


def _inside(
    root: Path, rel: object, where: str, kind: str, source: Path, case_id: str, problems: list[Problem], prefix: str
) -> Path | None:
    """``root / rel`` if it is a path inside ``root`` (checked lexically, symlinks are not followed)."""
    if not isinstance(rel, str) or not rel.strip():
        problems.append(Problem(case_id, str(source), f"{prefix}{where} has no '{kind}' path"))
        return None
    path = _abs(root / rel.strip())
    if not path.is_relative_to(_abs(root)):
        problems.append(Problem(case_id, str(source), f"{where} {kind} path {rel!r} points outside the dataset folder"))
        return None
    return path


def _missing_root(root: Path) -> DatasetInfo | None:
    if root.is_dir():
        return None
    problem = Problem(DATASET_ROW, str(root), "dataset folder not found")
    return DatasetInfo(root.name, {}, problems=(problem,))


def read_msd(root: str | Path) -> DatasetInfo:
    """Read a Medical Segmentation Decathlon folder (``dataset.json`` + ``imagesTr/`` + ``labelsTr/``)."""
    root = Path(root)
    if (missing := _missing_root(root)) is not None:
        return missing
    source = root / "dataset.json"
    problems: list[Problem] = []
    meta = read_json(source, problems)
    if meta is None:
        return DatasetInfo(root.name, {}, problems=tuple(problems), labels_source=str(source))
    labels, values = parse_labels(meta, source, problems)
    modalities, declared = parse_modalities(meta, source, problems)
    training = meta.get("training")
    nnunet_v2 = "file_ending" in meta or "channel_names" in meta
    if training is None and nnunet_v2 and (root / "imagesTr").is_dir():  # no list: files paired by name
        folder = read_folder(root)
        cases, problems = list(folder.cases), problems + list(folder.problems)
    else:
        cases = _training_cases(root, training, source, problems)
        cases += _test_cases(root, meta.get("test"), source, problems)
        _check_unique(cases, source, problems)
    name = str(meta.get("name", root.name))
    return DatasetInfo(name, labels, modalities, tuple(cases), tuple(problems), str(source), values, declared)


def _training_cases(root: Path, training: object, source: Path, problems: list[Problem]) -> list[Case]:
    """The cases of an MSD ``training`` list, one ``{image, label}`` object per case."""
    if training is None:
        problems.append(Problem(DATASET_ROW, str(source), "malformed dataset.json: missing 'training'"))
        return []
    if not isinstance(training, list) or not training:
        problems.append(
            Problem(DATASET_ROW, str(source), "malformed dataset.json: 'training' must be a non-empty list")
        )
        return []
    cases = [_listed_case(root, f"training[{i}]", entry, source, problems) for i, entry in enumerate(training)]
    return [case for case in cases if case is not None]


def _test_cases(root: Path, test: object, source: Path, problems: list[Problem]) -> list[Case]:
    """The labelled entries of an MSD ``test`` list, as test cases: ``{image, label}`` objects, and image paths
    whose file name is also in ``labelsTs/``. Unlabelled entries (the MSD's own test lists) are left for predict."""
    cases = []
    for i, entry in enumerate(test if isinstance(test, list) else []):
        name = Path(entry.strip()).name if isinstance(entry, str) else ""
        if name and (root / "labelsTs" / name).is_file():
            entry = {"image": entry, "label": f"labelsTs/{name}"}
        if isinstance(entry, dict) and entry.get("label") is not None:
            case = _listed_case(root, f"test[{i}]", entry, source, problems)
            cases += [dataclasses.replace(case, test=True)] if case is not None else []
    return cases


def _listed_case(root: Path, where: str, entry: object, source: Path, problems: list[Problem]) -> Case | None:
    """One entry of the ``training`` (or ``test``) list (``where``: its place in it), or None with its problems."""
    if not isinstance(entry, dict):
        problems.append(
            Problem(where, str(source), f"malformed dataset.json: {where} is not an {{image, label}} object")
        )
        return None
    raw = entry.get("image")
    raw_images = raw if isinstance(raw, list) and raw else [raw]  # a list: one file per channel
    first = raw_images[0]
    cid = _case_id(first, len(raw_images) > 1) if isinstance(first, str) and first.strip() else where
    if cid != where and (bad := case_id_problem(cid)) is not None:
        problems.append(Problem(where, str(source), f"malformed dataset.json: {where}: {bad}"))
        return None
    n_before = len(problems)
    prefix = "malformed dataset.json: "
    images = [_inside(root, r, where, "image", source, cid, problems, prefix) for r in raw_images]
    label = _inside(root, entry.get("label"), where, "label", source, cid, problems, prefix)
    if len(problems) == n_before and all(i is not None for i in images):
        return Case(cid, tuple(images), label, _group(entry.get("group")))  # type: ignore[arg-type]
    return None


def _case_id(image: str, per_channel: bool) -> str:
    """Case id of an image path; for per-channel files without the ``_0000`` channel tag."""
    stem = strip_suffix(Path(image).name)
    match = CHANNEL_FILE.match(stem) if per_channel else None
    return match["case"] if match else stem


def _group(value: object) -> str | None:
    """An optional ``group`` entry (patient or site id) as a string; empty means none."""
    return str(value).strip() or None if value is not None else None


#: values of a manifest's optional ``split`` column
MANIFEST_SPLITS = ("", "train", "training", "test")


def read_manifest(manifest: str | Path, root: str | Path | None = None) -> DatasetInfo:
    """Read a CSV manifest with columns ``case_id,image,label`` (optionally ``group``: patient or site; and
    ``split``: ``test`` marks the dataset's own test cases, empty or ``train`` the others).

    Paths are relative to ``root`` (default: the CSV's folder) and must stay inside it. Labels come from
    ``root/dataset.json`` when present, else ``{0: background, 1: foreground}``.
    """
    manifest = Path(manifest)
    root = Path(root) if root is not None else manifest.parent
    problems: list[Problem] = []
    if not manifest.is_file():
        return DatasetInfo(manifest.stem, {}, problems=(Problem(DATASET_ROW, str(manifest), "manifest not found"),))
    labels, values, labels_source = sidecar_labels(root, problems)
    try:
        with manifest.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            reader.fieldnames = fields
            rows = list(reader)
    except (csv.Error, UnicodeDecodeError) as err:
        problems.append(Problem(DATASET_ROW, str(manifest), f"malformed manifest: {err}"))
        return DatasetInfo(manifest.stem, labels, problems=tuple(problems), labels_source=labels_source)
    missing = [c for c in ("case_id", "image", "label") if c not in fields]
    if missing:
        problems.append(Problem(DATASET_ROW, str(manifest), f"malformed manifest: missing column(s) {missing}"))
        return DatasetInfo(manifest.stem, labels, problems=tuple(problems), labels_source=labels_source)
    cases = []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        cid = (row.get("case_id") or "").strip()
        if not cid:
            problems.append(Problem(f"line {n}", str(manifest), f"malformed manifest: line {n} has no case_id"))
            continue
        if (bad := case_id_problem(cid)) is not None:
            problems.append(Problem(f"line {n}", str(manifest), f"malformed manifest: line {n}: {bad}"))
            continue
        n_before = len(problems)
        prefix = "malformed manifest: "
        image = _inside(root, row.get("image"), f"line {n}", "image", manifest, cid, problems, prefix)
        label = _inside(root, row.get("label"), f"line {n}", "label", manifest, cid, problems, prefix)
        split = (row.get("split") or "").strip().lower()
        if split not in MANIFEST_SPLITS:
            problems.append(
                Problem(cid, str(manifest), f"malformed manifest: line {n}: split {split!r} is not train or test")
            )
        elif len(problems) == n_before and image is not None:
            cases.append(Case(cid, (image,), label, _group(row.get("group")), test=split == "test"))
    if not rows:
        problems.append(Problem(DATASET_ROW, str(manifest), "malformed manifest: no cases listed"))
    _check_unique(cases, manifest, problems)
    return DatasetInfo(manifest.stem, labels, {0: "MR"}, tuple(cases), tuple(problems), labels_source, values)


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files of ``folder`` (and, ``recursive``, of its non-hidden sub-folders at any depth), sorted;
    a byte-identical copy of an earlier file of the same name is left out (see :func:`without_copies`)."""
    found = _image_files(folder, recursive)
    return without_copies(found) if recursive else found


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    found = []
    for p in sorted(folder.iterdir()):
        if is_image_file(p):
            found.append(p)
        elif recursive and p.is_dir() and not p.name.startswith("."):
            found.extend(_image_files(p, True))
    return found


def without_copies(files: list[Path]) -> list[Path]:
    """``files`` without byte-identical copies of an earlier file of the same name in a folder of the same name,
    logged once.

    An archive can hold a copy of its own folder: kaggle_3m as downloaded unpacks to ``kaggle_3m/`` and
    ``lgg-mri-segmentation/kaggle_3m/``. Read once, its cases are neither duplicate ids nor counted twice.
    Files of one name that differ stay, and are duplicate case ids; so do equal files in folders named apart (two
    empty masks, ``case_00001/segmentation.nii.gz`` and ``case_00002/segmentation.nii.gz``, are two cases' masks).
    """
    first: dict[tuple[str, str], Path] = {}
    kept, copies = [], []
    for p in files:
        q = first.setdefault((p.parent.name, p.name), p)
        if q is not p and q.stat().st_size == p.stat().st_size and filecmp.cmp(q, p, shallow=False):
            copies.append((p, q))
        else:
            kept.append(p)
    if copies:
        logger.warning(
            "%d file(s) are byte-identical copies of files of the same name, read once (e.g. %s = %s)",
            len(copies),
            *copies[0],
        )
    return kept


def _by_stem(files: list[Path], problems: list[Problem]) -> dict[str, Path]:
    """``{stem: file}``; a stem found twice (in two sub-folders) is a problem, not silently one of them."""
    out: dict[str, Path] = {}
    for p in files:
        _put(out, strip_suffix(p.name), p, problems)
    return out


def _put(files: dict[str, Path], case_id: str, path: Path, problems: list[Problem]) -> None:
    """``files[case_id] = path``; an id already there is a problem naming both files."""
    if case_id in files:
        other = files[case_id]
        if any(NUMBERED_MASK.fullmatch(strip_suffix(p.name)) for p in (path, other)):
            why = f"a further mask of case {case_id!r} (also {other}): one mask file per case; merge them into one"
        else:
            why = f"duplicate case id {case_id!r} (also {other})"
        problems.append(Problem(case_id, str(path), why))
    files[case_id] = path


def _leading(stem: str) -> str:
    return re.split(r"[_\-. ]", stem, maxsplit=1)[0]


def _pair_by(
    images: dict[str, Path],
    label_files: dict[str, Path],
    image_key: Callable[[str], str],
    label_key: Callable[[str], str],
    how: str,
) -> dict[str, Path]:
    """Labels re-keyed to their image when the two keys agree: only when a key names one unpaired image and one
    unpaired label."""
    lone_images = [s for s in images if s not in label_files]
    lone_labels = [s for s in label_files if s not in images]
    by_image = {image_key(s): s for s in lone_images}
    by_label = {label_key(s): s for s in lone_labels}
    if len(by_image) < len(lone_images) or len(by_label) < len(lone_labels):
        return label_files  # a key shared by two files: no guessing
    paired = {by_image[k]: by_label[k] for k in by_image.keys() & by_label.keys()}
    if paired:
        example = next(iter(sorted(paired.items())))
        logger.info("paired %d image(s) with labels by %s (e.g. %s <- %s)", len(paired), how, *example)
    out = {s: p for s, p in label_files.items() if s not in paired.values()}
    out.update({image: label_files[label] for image, label in paired.items()})
    return out


def _pair_by_scan_key(images: dict[str, Path], label_files: dict[str, Path]) -> dict[str, Path]:
    """Labels re-keyed to their image when the names differ in a leading word naming scans (LiTS's ``volume-0`` and
    ``segmentation-0``, keyed ``0`` as a label; :func:`~pipeline.core.names.scan_key`)."""
    return _pair_by(images, label_files, scan_key, str, "the name after a word naming scans")


def _pair_by_name_parts(images: dict[str, Path], label_files: dict[str, Path]) -> dict[str, Path]:
    """Labels re-keyed to their image by :func:`_pair_by_scan_key`, or when the names differ only after a shared
    leading part (DRIVE's ``21_training.tif`` and ``21_manual1.gif``): each only when it names one unpaired image and
    one unpaired label."""
    return _pair_by(images, _pair_by_scan_key(images, label_files), _leading, _leading, "their leading name part")


#: fewest sub-folders of a folder layout taken as case groups (patients): fewer are categories (BUSI's ``benign/``,
#: ``malignant/``, ``normal/``), which as groups would leave a split of one test category and two folds
MIN_FOLDER_GROUPS = 5


def _flat_files(root: Path, problems: list[Problem]) -> tuple[dict[str, Path], dict[str, Path], dict[str, str]]:
    """Images, labels and groups of a folder of ``<case>_image`` / ``<case>_label`` files, searched at any
    depth; a case belongs to the group named by its image's first sub-folder (e.g. the patient) below the
    folders every image is in (kaggle_3m unpacked as ``lgg-mri-segmentation/kaggle_3m/<patient>/``: the
    patient; ISIC's ``..._Input/<case>.jpg`` beside ``..._GroundTruth/<case>_segmentation.png``: none)."""
    images: dict[str, Path] = {}
    label_files: dict[str, Path] = {}
    groups: dict[str, str] = {}
    files = image_files(root, recursive=True)
    others = [p for p in files if untag(p.name, OTHER_OBSERVER_TAGS) is not None]
    if others:
        logger.info("%d second observer's mask(s) not used (e.g. %s)", len(others), others[0].name)
        skip = set(others)
        files = [p for p in files if p not in skip]
    in_case_folders, nested = case_folder_files(files)
    if nested:
        logger.info("%d file(s) in folders inside case folders not used (e.g. %s)", len(nested), min(nested))
        files = [p for p in files if p not in nested]
    roles = [_role(p, in_case_folders) for p in files]
    folders = [p.relative_to(root).parts[:-1] for p in files]
    image_folders = [parts for parts, (_, is_label, _) in zip(folders, roles, strict=True) if not is_label]
    shared = len(os.path.commonprefix(image_folders)) if image_folders else 0  # every image is in: not groups
    for p, parts, (key, is_label, bids) in zip(files, folders, roles, strict=True):
        if is_label:
            _put(label_files, key, p, problems)
            continue
        _put(images, key, p, problems)
        if bids is not None:  # a BIDS name's subject: its sessions stay together
            groups[key] = groups[bids.case] = bids.subject
        elif len(parts) > shared:
            groups[key] = parts[shared]
            if (channel := CHANNEL_FILE.match(key)) is not None:  # <case>_0000: the case's group
                groups.setdefault(channel["case"], groups[key])
            if p in in_case_folders:  # a case folder's channel <folder>_<name>: the folder's group
                groups.setdefault(p.parent.name, groups[key])
    return images, _pair_by_scan_key(images, label_files), groups


def _role(path: Path, in_case_folders: dict[Path, tuple[str, bool]]) -> tuple[str, bool, BidsName | None]:
    """``(key, is a label, its BIDS name)`` of a file of a flat folder: a case folder's (:func:`case_folder_files`),
    a BIDS name's (:func:`bids_name`: a label keyed by its case, a scan as the channel ``<case>_<name>``), a tagged
    mask's (:func:`mask_case`), else an image keyed by its name (an ``_image`` tag left out)."""
    if path in in_case_folders:
        return *in_case_folders[path], None
    stem = strip_suffix(path.name)
    if (bids := bids_name(stem)) is not None:
        return (bids.case if bids.is_label else f"{bids.case}_{bids.channel}"), bids.is_label, bids
    if (case := mask_case(path.name)) is not None:
        return case, True, None
    return untag(path.name, IMAGE_TAGS) or stem, False, None


def _without_category_groups(cases: list[Case]) -> list[Case]:
    """``cases`` without their folder groups when fewer than :data:`MIN_FOLDER_GROUPS` folders hold several cases
    each: categories (BUSI's ``benign/``, ``malignant/``, ``normal/``), not patients."""
    by_folder = [c for c in cases if c.group is not None and not _bids_subject(c)]
    names = sorted({c.group for c in by_folder})  # type: ignore[type-var]
    if len(names) >= MIN_FOLDER_GROUPS or len(names) == len(by_folder):  # patients, or one case per folder
        return cases
    logger.info("%d sub-folder(s) (%s): categories, not patients; split case by case", len(names), ", ".join(names))
    return [dataclasses.replace(c, group=None) if c in by_folder else c for c in cases]


def _bids_subject(case: Case) -> bool:
    """``case``'s group is the subject its BIDS file names say (a patient however few there are)."""
    bids = bids_name(strip_suffix(case.images[0].name))
    return bids is not None and bids.subject == case.group


#: an image folder and the folders its label masks may be in, the first found: annotation folders as 2D sets come
#: (DRIVE's ``1st_manual``, HRF's ``manual1``) before ``mask``, which in those two holds the field of view
LABEL_FOLDERS = {
    "images": (
        "labels", "masks", "1st_manual", "manual1", "manual", "annotations", "ground_truth", "groundtruth", "gt",
        "segmentations", "mask",
    ),
    "imagesTr": ("labelsTr",),
}  # fmt: skip


#: sub-folders holding the training cases of a dataset unpacked as distributed (DRIVE: ``training/`` + ``test/``)
TRAINING_FOLDERS = ("training", "train")


def _training_folder(root: Path) -> Path | None:
    """The ``training/`` (``train/``) sub-folder of ``root`` holding an image folder, or a folder of images beside
    one of masks (:func:`_named_pair`: Synapse's ``Training/img/`` + ``Training/label/``), when ``root`` has none."""
    if any((root / name).is_dir() for name in LABEL_FOLDERS):
        return None
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in TRAINING_FOLDERS):
        if any((sub / name).is_dir() for name in LABEL_FOLDERS) or _named_pair(sub) is not None:
            return sub
    return None


def scans_folder(path: Path) -> Path:
    """``path``'s ``images/`` folder when mask folders lie beside it (DRIVE's ``test/``: ``images/``, ``mask/``,
    ``1st_manual/``), or the images of a folder pair (:func:`_named_pair`: CVC-ClinicDB's ``Original/`` beside
    ``Ground Truth/``), else ``path``: where ``predict`` finds the scans of a folder as distributed."""
    sub = path / "images"
    if sub.is_dir() and any((path / n).is_dir() for n in LABEL_FOLDERS["images"]):
        return sub
    pair = _named_pair(path) if path.is_dir() and not (path / "imagesTr").is_dir() else None
    return pair[0] if pair is not None else path


def read_folder(root: str | Path) -> DatasetInfo:
    """Read image and label files paired by case id.

    Either ``images/`` + ``labels/`` (or another of ``LABEL_FOLDERS``; or ``imagesTr/`` + ``labelsTr/``) with
    equal file names (or names that differ only after a leading part naming one image and one label, as
    ``21_training`` and ``21_manual1``), or a folder of ``<case>_image.<ext>`` and ``<case>_label.<ext>`` (also
    ``_img``; ``_seg``, ``_mask``; a bare ``<case>`` is an image) searched at any depth: the first sub-folder of a
    case (e.g. one per patient) below the folders every file shares is its group, so splits keep it together.
    Images ``<case>_0000``, ``<case>_0001``, ... next to a label ``<case>`` are the channels of one case.
    Labels come from ``root/dataset.json`` when present, else ``{0: background, 1: foreground}`` (the
    stages and ``validate`` then use the values found in the masks: :func:`pipeline.core.labels.values_found`).
    A dataset unpacked as distributed, ``training/images/`` beside ``test/`` (DRIVE), is read from its
    ``training/`` (or ``train/``) folder. The dataset's own labelled test cases (:func:`_test_folders`:
    ``imagesTs/`` + ``labelsTs/``, or DRIVE's ``test/images/`` + ``test/1st_manual/``) are read as test cases.
    """
    root = Path(root)
    if (missing := _missing_root(root)) is not None:
        return missing
    if (training := _training_folder(root)) is not None:
        logger.info(
            "%s: the training cases of %s/ (a test folder's labelled cases are the test cases)", root, training.name
        )
        return dataclasses.replace(_read_folder(training, root), name=root.name)
    return _read_folder(root, root)


def _read_folder(root: Path, home: Path) -> DatasetInfo:
    """:func:`read_folder` of ``root``; ``home``: the data root (``root``'s parent when it is a ``training/``)."""
    problems: list[Problem] = []
    labels, values, labels_source = sidecar_labels(root, problems)
    groups: dict[str, str] = {}
    test: list[Case] = []
    images_name = next((name for name in LABEL_FOLDERS if (root / name).is_dir()), None)
    if images_name is None and (pair := _named_pair(root)) is not None:
        logger.info("%s: images in %s/, their masks in %s/", root, pair[0].name, pair[1].name)
        images, label_files, groups = _paired_files(*pair, problems)
    elif images_name is None:
        images, label_files, groups = _flat_files(root, problems)
    else:
        labels_name = next((n for n in LABEL_FOLDERS[images_name] if (root / n).is_dir()), None)
        if labels_name is None:
            problems.append(_no_label_folder(root, images_name, LABEL_FOLDERS[images_name]))
            images, label_files = _by_stem(image_files(root / images_name), problems), {}
        else:
            images, label_files, groups = _paired_files(root / images_name, root / labels_name, problems)
            if (test_dirs := _test_folders(root, home, images_name, labels_name)) is not None:
                test_images, test_labels, test_groups = _paired_files(*test_dirs, problems)
                test = _cases(test_images, test_labels, test_groups, problems, unlabelled_ok=True)[0]
    if not images:
        problems.append(Problem(DATASET_ROW, str(root), "no image files found"))
    cases, names = _cases(images, label_files, groups, problems)
    cases = _without_category_groups(cases) + [dataclasses.replace(c, test=True) for c in test]
    if test:
        _check_unique(cases, test_dirs[0], problems)  # type: ignore[index]
    named = len(names) > 1  # channels named by their files (<case>_flair, <case>/t1.nii.gz), not one image
    modalities = dict(enumerate(names)) if named else {0: "MR"}
    return DatasetInfo(root.name, labels, modalities, tuple(cases), tuple(problems), labels_source, values, named)


#: folders beside ``training/`` holding the dataset's own test cases (DRIVE: ``test/images/``, ``test/1st_manual/``)
TEST_FOLDERS = ("test", "testing")


def _test_folders(root: Path, home: Path, images_name: str, labels_name: str) -> tuple[Path, Path] | None:
    """The image and label folders of the dataset's own labelled test cases, named as the training ones:
    ``imagesTs/`` + ``labelsTs/`` beside ``imagesTr/``; ``test/<images>/`` + ``test/<labels>/`` beside the
    ``training/`` folder ``root`` (inside the data root ``home``). A test folder without that label folder (DRIVE
    as some mirrors ship it: ``test/mask/`` holds the field of view, not vessels) holds no test cases here."""
    if images_name == "imagesTr":
        candidates = [(root / "imagesTs", root / "labelsTs")]
    elif root != home:
        subs = sorted(p for p in home.iterdir() if p.is_dir() and p.name.lower() in TEST_FOLDERS)
        candidates = [(sub / images_name, sub / labels_name) for sub in subs]
    else:
        candidates = []
    return next(((i, lab) for i, lab in candidates if i.is_dir() and lab.is_dir()), None)


def _paired_files(
    images_dir: Path, labels_dir: Path, problems: list[Problem]
) -> tuple[dict[str, Path], dict[str, Path], dict[str, str]]:
    """``{case: image}`` of ``images_dir``, ``{case: label}`` of ``labels_dir``, paired by name (a label's
    ``_mask``-like tag left out: ISIC's ``<case>_segmentation``), and ``{case: group}``.

    Both are searched at any depth: an image in a sub-folder (one per patient: ``images/P1/001.png`` beside
    ``masks/P1/001.png``) is in that folder's group, and when names recur in several sub-folders every case is
    keyed by its folders and name (``P1_001``), its label by the same place under ``labels_dir``.
    """
    found = image_files(images_dir, recursive=True)
    qualify = len({strip_suffix(p.name) for p in found}) < len(found)  # names recur across sub-folders

    def key(path: Path, folder: Path, name: str) -> str:
        return "_".join((*path.relative_to(folder).parts[:-1], name)) if qualify else name

    images: dict[str, Path] = {}
    groups: dict[str, str] = {}
    for p in found:
        _put(images, cid := key(p, images_dir, strip_suffix(p.name)), p, problems)
        if sub := p.relative_to(images_dir).parts[:-1]:  # in a sub-folder: that folder's group
            groups[cid] = sub[0]
    label_files: dict[str, Path] = {}
    for p in image_files(labels_dir, recursive=True):
        _put(label_files, key(p, labels_dir, mask_case(p.name) or strip_suffix(p.name)), p, problems)
    return images, _pair_by_name_parts(images, label_files), groups


#: words that name a folder of label masks, whatever else its name says (``Ground Truth``, ``labels-ah``)
LABEL_WORDS = ("label", "mask", "truth", "gt", "annot", "seg", "manual")


def _is_label_folder_name(name: str) -> bool:
    words = [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)]
    return any(w.startswith(LABEL_WORDS) or w.endswith(("mask", "masks", "truth", "label", "labels")) for w in words)


def _named_pair(root: Path) -> tuple[Path, Path] | None:
    """``(images folder, masks folder)`` when ``root`` holds exactly two sub-folders of image files, one named as
    masks are (:data:`LABEL_WORDS`) and one not: CVC-ClinicDB's ``Original/`` and ``Ground Truth/``, ISIC's
    ``..._Training_Input/`` and ``..._Training_GroundTruth/``, their files directly in them or in their sub-folders
    (one per patient); a ``test/`` folder beside them (Carvana's ``train/``, ``train_masks/``, ``test/``) is not one
    of them. Else None (the files are searched at any depth)."""
    subs = [
        p
        for p in sorted(root.iterdir())
        if p.is_dir()
        and not p.name.startswith(".")
        and p.name.lower() not in TEST_FOLDERS
        and any(is_image_file(f) or (f.is_dir() and any(map(is_image_file, f.iterdir()))) for f in p.iterdir())
    ]
    labelled = [p for p in subs if _is_label_folder_name(p.name)]
    if len(subs) != 2 or len(labelled) != 1:
        return None
    return next(p for p in subs if p not in labelled), labelled[0]


def _cases(
    images: dict[str, Path],
    label_files: dict[str, Path],
    groups: dict[str, str],
    problems: list[Problem],
    unlabelled_ok: bool = False,
) -> tuple[list[Case], list[str]]:
    """The cases of paired image and label files, and the names of their channels when named channel files make
    them (:func:`_group_channels`); an image without a label (unless ``unlabelled_ok``: a test image left for
    ``predict``) or a label without an image is a problem."""
    cases = []
    grouped, claimed, names = _group_channels(images, label_files, problems)
    for cid, files in sorted(grouped.items()):
        if (bad := case_id_problem(cid)) is not None:
            problems.append(Problem(DATASET_ROW, str(files[0]), bad))
            continue
        if cid not in label_files:
            if not unlabelled_ok:
                problems.append(Problem(cid, str(files[0]), "no label file for this image"))
            continue
        group = groups.get(cid) or groups.get(strip_suffix(files[0].name))  # a named channel file's group
        cases.append(Case(cid, tuple(_abs(f) for f in files), _abs(label_files[cid]), group))
    for cid, label in sorted(label_files.items()):
        if cid not in claimed:
            problems.append(Problem(cid, str(label), "no image file for this label"))
    return cases, names


def _no_label_folder(root: Path, images_name: str, labels_names: tuple[str, ...]) -> Problem:
    """The folder-level problem of an ``images/`` folder without its label folder, naming what lies beside it."""
    others = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != images_name and p.name[0] != ".")
    beside = f" (beside it: {', '.join(others)})" if others else ""
    return Problem(
        DATASET_ROW,
        str(root / images_name),
        f"no folder of label masks beside {images_name}/ ({', '.join(n + '/' for n in labels_names)}){beside}; "
        f"put the masks in {labels_names[0]}/ (names equal to the images', or sharing their leading part)",
    )


def _channel_of(stem: str, label_files: dict[str, Path]) -> str | None:
    """The case id of a per-channel image ``<case>_0000`` whose case has a label (and the file itself none)."""
    match = CHANNEL_FILE.match(stem)
    if match is None or stem in label_files or match["case"] not in label_files:
        return None
    return match["case"]


def _group_channels(
    images: dict[str, Path], label_files: dict[str, Path], problems: list[Problem]
) -> tuple[dict[str, list[Path]], set[str], list[str]]:
    """Image files by case: ``<case>_0000``, ``<case>_0001``, ... of a labelled ``<case>`` become one case, and so
    do named channels ``<case>_flair``, ``<case>_t1``, ... of a labelled ``<case>`` that has no image of its own,
    in the order of their names, the same names for every case (see :func:`channel_names`). Also returns the
    case ids some image file belongs to (a case whose channels are incomplete included), and those names."""
    cases: dict[str, list[Path]] = {}
    channels: dict[str, dict[int, Path]] = {}
    named: dict[str, dict[str, Path]] = {}
    unpaired = {cid for cid in label_files if cid not in images}
    for stem, path in images.items():
        if (cid := _channel_of(stem, label_files)) is not None:
            channels.setdefault(cid, {})[int(CHANNEL_FILE.match(stem)["channel"])] = path  # type: ignore[index]
        elif stem not in label_files and (found := named_channel(stem, unpaired)) is not None:
            named.setdefault(found[0], {})[found[1]] = path
        else:
            cases[stem] = [path]
    names = channel_names(named)
    for cid, files in named.items():
        if sorted(files, key=str.lower) != names:
            problems.append(
                Problem(cid, str(next(iter(files.values()))), f"channels {', '.join(sorted(files, key=str.lower))} "
                        f"differ from the other cases' ({', '.join(names)})")
            )  # fmt: skip
            continue
        cases[cid] = [files[n] for n in names]
    claimed = set(cases) | set(channels) | set(named)
    for cid, files in channels.items():
        if sorted(files) != list(range(len(files))):
            missing = sorted(set(range(max(files) + 1)) - set(files))
            absent = ", ".join(f"{cid}_{c:04d}" for c in missing)
            problems.append(Problem(cid, str(files[min(files)]), f"missing channel file(s) {absent}"))
            continue
        cases[cid] = [files[c] for c in range(len(files))]
    return cases, claimed, names


def channel_names(named: dict[str, dict[str, Path]]) -> list[str]:
    """The channel names most cases of ``{case: {name: file}}`` have, sorted (case-insensitive): channel k is the
    k-th name (``flair``, ``t1``, ``t1ce``, ``t2``)."""
    sets = Counter(tuple(sorted(files, key=str.lower)) for files in named.values())
    return list(sets.most_common(1)[0][0]) if sets else []


def _check_unique(cases: list[Case], source: Path, problems: list[Problem]) -> None:
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            problems.append(Problem(case.case_id, str(source), f"duplicate case id {case.case_id!r}"))
        seen.add(case.case_id)


def detect_layout(root: str | Path) -> str:
    """Guess the layout of ``root``: ``csv`` for a .csv file or a folder with ``manifest.csv``, ``msd`` when
    there is a ``dataset.json`` with a ``training`` list, else ``folder``."""
    root = Path(root)
    if root.suffix.lower() == ".csv" or (root / "manifest.csv").is_file():
        return "csv"
    if (root / "dataset.json").is_file():
        return "msd"
    return "folder"


#: what an archive unpacked on a Mac holds beside its folder (resource forks), never data
ARCHIVE_CLUTTER = ("__MACOSX",)
MAX_WRAPPERS = 4  # folders inside folders searched for the dataset (a symlink to its own folder ends there)
#: folder names that are part of a dataset's own structure: a root holding only one of them is not a wrapper
_STRUCTURE_FOLDERS = {
    n.lower()
    for n in (*LABEL_FOLDERS, *(v for vs in LABEL_FOLDERS.values() for v in vs), *TRAINING_FOLDERS, *TEST_FOLDERS)
} | {"imagests", "labelsts"}


def dataset_folder(root: str | Path) -> Path:
    """The dataset folder ``root`` only wraps, else ``root``.

    An archive often unpacks to one folder inside the folder it was unpacked in (``DRIVE/``, ``Task04_Hippocampus/``,
    maybe beside ``__MACOSX/``): a folder with no ``dataset.json``, manifest or image files of its own and one
    sub-folder (not one named as part of a dataset, ``images/``, ``training/``, ...) is read as that sub-folder.
    """
    path = Path(root)
    for _ in range(MAX_WRAPPERS):
        if not path.is_dir() or any((path / n).is_file() for n in ("dataset.json", "manifest.csv")):
            break
        entries = [p for p in path.iterdir() if not p.name.startswith(".") and p.name not in ARCHIVE_CLUTTER]
        subs = [p for p in entries if p.is_dir() and not is_image_file(p)]
        if len(subs) != 1 or subs[0].name.lower() in _STRUCTURE_FOLDERS or any(is_image_file(p) for p in entries):
            break
        path = subs[0]
    if path != Path(root):
        logger.info("%s holds one folder: the dataset is read from %s", root, path)
    return path


def read_configured(data: DataConfig) -> DatasetInfo:
    """The dataset the config's ``data`` section names (root, layout, manifest, channels)."""
    return read_dataset(data.root, data.layout, data.manifest, data.channels)


def read_dataset(
    root: str | Path, layout: str = "msd", manifest: str | Path | None = None, channels: Sequence[str] | None = None
) -> DatasetInfo:
    """Dispatch on the configured layout (``msd``, ``folder``, ``csv`` or ``auto``); an MSD or folder dataset
    inside a folder that only wraps it is read where it is (:func:`dataset_folder`); ``channels``: the input channels
    to keep, by name (:func:`select_channels`)."""
    if layout in ("auto", "msd", "folder") and not manifest:
        root = dataset_folder(root)  # a manifest's paths are relative to the root as given
    return select_channels(_read_layout(root, layout, manifest), channels, root)


def _read_layout(root: str | Path, layout: str, manifest: str | Path | None) -> DatasetInfo:
    if layout == "auto":
        layout = "csv" if manifest else detect_layout(root)
    if layout == "msd":
        return read_msd(root)
    if layout == "csv":
        root_path = Path(root)
        if root_path.suffix.lower() == ".csv" and manifest is None:
            return read_manifest(root_path, root_path.parent)
        path = Path(manifest) if manifest else root_path / "manifest.csv"
        if manifest and not path.is_absolute() and not path.is_file() and (root_path / path).is_file():
            path = root_path / path
        return read_manifest(path, root_path)
    if layout == "folder":
        return read_folder(root)
    raise DatasetError(f"unknown dataset layout {layout!r}")


def select_channels(info: DatasetInfo, channels: Sequence[str] | None, root: str | Path) -> DatasetInfo:
    """``info`` with only the input channels ``channels`` names, in that order (``data.channels``; names compared
    case-insensitively): of channels that files name (``<case>_flair``, BIDS suffixes, ``p1/t1.nii.gz``) or that a
    ``dataset.json`` names beside one file per channel. Anything else is one problem naming what the files hold."""
    if not channels:
        return info
    index = {name.lower(): k for k, name in info.modalities.items()} if info.modalities_declared else {}
    missing = [c for c in channels if c.lower() not in index]
    one_file = next((c for c in info.cases if len(c.images) != len(index)), None)
    twice = len({c.lower() for c in channels}) < len(channels)
    if missing or one_file is not None or twice:
        named = ", ".join(info.modalities.values()) if index else "none (no file or dataset.json names them)"
        if missing:
            why = f"{', '.join(missing)} not among the channels named: {named}"
        elif twice:
            why = "a channel named twice"
        else:
            why = f"case {one_file.case_id!r} holds its channels in one file"  # type: ignore[union-attr]
        problem = Problem(DATASET_ROW, str(root), f"data.channels {list(channels)}: {why}")
        return dataclasses.replace(info, problems=(*info.problems, problem))
    keep = [index[c.lower()] for c in channels]
    if unused := [info.modalities[k] for k in sorted(set(index.values()) - set(keep))]:
        logger.info("data.channels: %s used, %s not", ", ".join(channels), ", ".join(unused))
    cases = tuple(dataclasses.replace(c, images=tuple(c.images[k] for k in keep)) for c in info.cases)
    modalities = {i: info.modalities[k] for i, k in enumerate(keep)}
    return dataclasses.replace(info, cases=cases, modalities=modalities)
