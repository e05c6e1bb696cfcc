"""Reading dataset descriptions: MSD folders, paired folders, CSV manifests; problems are collected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.cases import DATASET_ROW
from pipeline.core.dataset import (
    detect_layout,
    read_dataset,
    read_folder,
    read_manifest,
    read_msd,
)
from pipeline.core.dataset_json import read_labels
from pipeline.core.validation import validate_dataset


def _touch_nii(path: Path, values: tuple[int, ...] = (0, 1)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros((4, 4, 3), np.uint8)
    data.flat[: len(values)] = values
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _msd(root: Path, meta: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for cid in ("a", "b"):
        _touch_nii(root / "imagesTr" / f"{cid}.nii.gz")
        _touch_nii(root / "labelsTr" / f"{cid}.nii.gz")
    text = meta if isinstance(meta, str) else json.dumps(meta)
    (root / "dataset.json").write_text(text)
    return root


GOOD_TRAINING = [
    {"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"},
    {"image": "imagesTr/b.nii.gz", "label": "labelsTr/b.nii.gz"},
]
GOOD = {"name": "t", "labels": {"0": "background", "1": "fg"}, "training": GOOD_TRAINING}


def test_read_msd(tmp_path: Path) -> None:
    info = read_msd(_msd(tmp_path / "ds", GOOD))
    assert info.problems == ()
    assert [c.case_id for c in info.cases] == ["a", "b"]
    assert info.labels == {0: "background", 1: "fg"} and info.num_classes == 2
    assert all(c.images[0].is_absolute() and c.images[0].is_file() and c.label.is_file() for c in info.cases)
    assert validate_dataset(info, progress=False) == []


@pytest.mark.parametrize(
    "meta,wording",
    [
        ('{"labels": {"0": "bg"},', "malformed dataset.json: invalid JSON"),
        ("[1, 2]", "malformed dataset.json: top level is not an object"),
        ({"training": GOOD_TRAINING}, "malformed dataset.json: missing 'labels'"),
        (
            {"labels": ["bg", "fg"], "training": GOOD_TRAINING},
            "malformed dataset.json: 'labels' must be a non-empty object",
        ),
        ({"labels": {"0": "bg", "one": "fg"}, "training": GOOD_TRAINING}, "'labels' key(s) 'one' are not integers"),
        ({"labels": {"1": "fg"}, "training": GOOD_TRAINING}, "'labels' must declare 0 (background)"),
        ({"labels": {"0": "bg", "1": "fg"}}, "malformed dataset.json: missing 'training'"),
        ({"labels": {"0": "bg", "1": "fg"}, "training": {}}, "'training' must be a non-empty list"),
        ({**GOOD, "training": [GOOD_TRAINING[0], {"label": "labelsTr/b.nii.gz"}]}, "training[1] has no 'image' path"),
        ({**GOOD, "training": [GOOD_TRAINING[0], {"image": "imagesTr/b.nii.gz"}]}, "training[1] has no 'label' path"),
        ({**GOOD, "training": [GOOD_TRAINING[0], "imagesTr/b.nii.gz"]}, "training[1] is not an {image, label} object"),
        ({**GOOD, "training": GOOD_TRAINING + GOOD_TRAINING[:1]}, "duplicate case id 'a'"),
        ({**GOOD, "modality": {"zero": "MR"}}, "'modality' key(s) 'zero' are not integers"),
    ],
)
def test_malformed_dataset_json_is_one_problem(tmp_path: Path, meta: object, wording: str) -> None:
    info = read_msd(_msd(tmp_path / "ds", meta))
    assert len(info.problems) == 1, info.problems
    problem = info.problems[0]
    assert Path(problem.file).name == "dataset.json"
    assert wording in problem.problem
    # the whole validation reports it too, once, and never crashes on the rest
    assert [p for p in validate_dataset(info, progress=False) if p.file == problem.file] == [problem]


def test_missing_dataset_json_and_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert [p.problem for p in read_msd(tmp_path / "empty").problems] == ["dataset.json not found"]
    missing = read_dataset(tmp_path / "nope", "msd").problems
    assert [(p.case_id, p.problem) for p in missing] == [(DATASET_ROW, "dataset folder not found")]


def test_paths_outside_the_dataset_folder(tmp_path: Path) -> None:
    elsewhere = _touch_nii(tmp_path / "elsewhere" / "x.nii.gz")
    root = tmp_path / "ds"
    training = [
        {"image": "../elsewhere/x.nii.gz", "label": "labelsTr/a.nii.gz"},
        {"image": "imagesTr/b.nii.gz", "label": str(elsewhere)},
        {"image": "imagesTr/../../ds/imagesTr/a.nii.gz", "label": str(root / "labelsTr" / "a.nii.gz")},  # inside
    ]
    info = read_msd(_msd(root, {**GOOD, "training": training}))
    assert [p.problem for p in info.problems] == [
        "training[0] image path '../elsewhere/x.nii.gz' points outside the dataset folder",
        f"training[1] label path '{elsewhere}' points outside the dataset folder",
    ]
    assert all(Path(p.file).name == "dataset.json" for p in info.problems)
    assert [c.case_id for c in info.cases] == ["a"]


def test_folder_layout_subfolders_and_flat(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    for cid in ("c1", "c2"):
        _touch_nii(sub / "images" / f"{cid}.nii.gz")
        _touch_nii(sub / "labels" / f"{cid}.nii.gz")
    _touch_nii(sub / "images" / "lonely.nii.gz")
    _touch_nii(sub / "labels" / "orphan.nii.gz")
    info = read_folder(sub)
    assert [c.case_id for c in info.cases] == ["c1", "c2"]
    assert {(p.case_id, p.problem) for p in info.problems} == {
        ("lonely", "no label file for this image"),
        ("orphan", "no image file for this label"),
    }
    assert info.labels == {0: "background", 1: "foreground"} and info.labels_source == ""

    flat = tmp_path / "flat"
    _touch_nii(flat / "p1_image.nii.gz")
    _touch_nii(flat / "p1_label.nii.gz", (0, 1, 2))
    _touch_nii(flat / "p2_image.nii.gz")
    _touch_nii(flat / "p2_seg.nii.gz")
    info = read_dataset(flat, "folder")
    assert [(c.case_id, c.images[0].name, c.label.name) for c in info.cases] == [
        ("p1", "p1_image.nii.gz", "p1_label.nii.gz"),
        ("p2", "p2_image.nii.gz", "p2_seg.nii.gz"),
    ]
    problems = validate_dataset(info, progress=False)
    assert [p.problem for p in problems] == [
        "label values [2] not declared in the default labels (no dataset.json) (declared: 0, 1)"
    ]
    (flat / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}}))
    assert validate_dataset(read_dataset(flat, "folder"), progress=False) == []


def test_manifest(tmp_path: Path) -> None:
    root = _msd(tmp_path / "ds", GOOD)
    (root / "manifest.csv").write_text(
        "case_id,image,label\n"
        "a,imagesTr/a.nii.gz,labelsTr/a.nii.gz\n"
        f"b,{root / 'imagesTr' / 'b.nii.gz'},labelsTr/b.nii.gz\n"
        "c,../c.nii.gz,labelsTr/b.nii.gz\n"
        "a,imagesTr/b.nii.gz,labelsTr/b.nii.gz\n"
        "d,imagesTr/b.nii.gz,\n"
    )
    info = read_dataset(root, "csv")
    assert [c.case_id for c in info.cases] == ["a", "b", "a"]
    assert [p.problem for p in info.problems] == [
        "line 4 image path '../c.nii.gz' points outside the dataset folder",
        "malformed manifest: line 6 has no 'label' path",
        "duplicate case id 'a'",
    ]
    assert info.labels == {0: "background", 1: "fg"}  # from the dataset.json beside it
    (tmp_path / "m.csv").write_text("case_id,image\na,imagesTr/a.nii.gz\n")
    info = read_dataset(root, "csv", tmp_path / "m.csv")
    assert [p.problem for p in info.problems] == ["malformed manifest: missing column(s) ['label']"]
    assert read_manifest(tmp_path / "none.csv").problems[0].problem == "manifest not found"


def test_manifest_paths_relative_to_root(tmp_path: Path) -> None:
    root = _msd(tmp_path / "ds", GOOD)
    manifest = tmp_path / "lists" / "train.csv"
    manifest.parent.mkdir()
    manifest.write_text("case_id,image,label\na,imagesTr/a.nii.gz,labelsTr/a.nii.gz\n")
    info = read_dataset(root, "csv", manifest)
    assert info.problems == () and info.cases[0].images[0] == root / "imagesTr" / "a.nii.gz"
    assert validate_dataset(info, progress=False) == []


def test_detect_layout_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.tools import validate

    root = _msd(tmp_path / "ds", GOOD)
    assert detect_layout(root) == "msd"
    assert detect_layout(tmp_path) == "folder"
    (root / "list.csv").write_text("case_id,image,label\nb,imagesTr/b.nii.gz,labelsTr/b.nii.gz\n")
    assert detect_layout(root / "list.csv") == "csv"
    assert validate.main([str(root), "--layout", "csv", "--manifest", "list.csv"]) == 0
    assert capsys.readouterr().out.strip() == f"OK: 1 cases in {root} validated, no problems"
    assert validate.main([str(root / "list.csv")]) == 0


def test_per_channel_files_in_a_folder_are_one_case(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for cid in ("a", "b"):
        for ch in (0, 1):
            _touch_nii(root / "imagesTr" / f"{cid}_{ch:04d}.nii.gz")
        _touch_nii(root / "labelsTr" / f"{cid}.nii.gz")
    _touch_nii(root / "imagesTr" / "c_0001.nii.gz")  # channel 0 missing
    _touch_nii(root / "labelsTr" / "c.nii.gz")
    info = read_folder(root)
    assert [(c.case_id, [p.name for p in c.images]) for c in info.cases] == [
        ("a", ["a_0000.nii.gz", "a_0001.nii.gz"]),
        ("b", ["b_0000.nii.gz", "b_0001.nii.gz"]),
    ]
    assert [(p.case_id, p.problem) for p in info.problems] == [("c", "missing channel file(s) c_0000")]
    assert validate_dataset(info, progress=False)[1:] == []


def test_msd_image_lists_and_declared_label_values(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for ch in (0, 1):
        _touch_nii(root / "imagesTr" / f"p1_{ch:04d}.nii.gz")
    _touch_nii(root / "labelsTr" / "p1.nii.gz", (0, 1, 2, 4))
    meta = {
        "labels": {"0": "bg", "1": "necrosis", "2": "edema", "4": "enhancing"},
        "modality": {"0": "FLAIR", "1": "T1c"},
        "training": [
            {"image": ["./imagesTr/p1_0000.nii.gz", "./imagesTr/p1_0001.nii.gz"], "label": "labelsTr/p1.nii.gz"}
        ],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    info = read_msd(root)
    assert info.problems == ()
    assert [(c.case_id, len(c.images)) for c in info.cases] == [("p1", 2)]
    # classes 0..K-1, each with its stored value
    assert info.labels == {0: "bg", 1: "necrosis", 2: "edema", 3: "enhancing"} and info.num_classes == 4
    assert info.label_values == (0, 1, 2, 4)
    assert info.declared_labels == {0: "bg", 1: "necrosis", 2: "edema", 4: "enhancing"}
    assert read_labels(root / "dataset.json") == info.declared_labels  # as stored, for scoring any masks
    assert validate_dataset(info, progress=False) == []
    # a third channel file the dataset does not declare is a problem naming the case
    meta["training"][0]["image"].append("./imagesTr/p1_0001.nii.gz")
    (root / "dataset.json").write_text(json.dumps(meta))
    problems = validate_dataset(read_msd(root), progress=False)
    assert [p.problem for p in problems] == ["3 input channel(s), dataset.json declares 2 (modality / channel_names)"]


def test_undeclared_folder_labels_are_inferred_from_the_masks(tmp_path: Path, capsys) -> None:
    from pipeline.core.labels import resolve_labels
    from pipeline.tools.validate import main

    root = tmp_path / "ds"
    for cid in ("a", "b"):
        _touch_nii(root / "images" / f"{cid}.nii.gz")
        _touch_nii(root / "labels" / f"{cid}.nii.gz", (0, 255))
    info = read_folder(root)
    assert info.labels == {0: "background", 1: "foreground"} and info.label_values == ()
    resolved, problems = resolve_labels(info)
    assert problems == [] and resolved.labels == {0: "background", 1: "foreground"}
    assert resolved.label_values == (0, 255)
    assert main([str(root)]) == 0
    assert "label values found in the masks: 0 (background), 255 (foreground)" in capsys.readouterr().out


def test_case_ids_must_be_plain_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ids that would build paths outside the output folders (or hidden, or multi-line) are problems naming
    the manifest row / dataset.json entry / file; the CLI prints one line each and exits 1."""
    from pipeline.tools import validate

    root = _msd(tmp_path / "ds", GOOD)
    bad_ids = ["../../../x", "/abs/x", ".hidden", "x/y", "a\tb", '"two\nlines"', "é" * 201]
    rows = [f"{cid},imagesTr/a.nii.gz,labelsTr/a.nii.gz" for cid in bad_ids]
    (root / "manifest.csv").write_text(
        "case_id,image,label\n"
        + "\n".join([*rows, *(f"{c},imagesTr/b.nii.gz,labelsTr/b.nii.gz" for c in ("ok_1.v-2", "benign (1)"))])
        + "\n"
    )
    info = read_dataset(root, "csv")
    assert [c.case_id for c in info.cases] == ["ok_1.v-2", "benign (1)"]
    assert [p.case_id for p in info.problems] == [f"line {n}" for n in range(2, 2 + len(bad_ids))]
    assert all("is not a plain name" in p.problem and "\n" not in p.problem for p in info.problems)
    assert validate.main([str(root), "--layout", "csv"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert sum("is not a plain name" in line for line in out) == len(bad_ids)

    msd = _msd(tmp_path / "msd", GOOD)
    _touch_nii(msd / "imagesTr" / ".x.nii.gz")
    _touch_nii(msd / "labelsTr" / ".x.nii.gz")
    meta = dict(GOOD, training=[*GOOD["training"], {"image": "./imagesTr/.x.nii.gz", "label": "./labelsTr/.x.nii.gz"}])
    (msd / "dataset.json").write_text(json.dumps(meta))
    info = read_msd(msd)
    assert [c.case_id for c in info.cases] == ["a", "b"]
    assert len(info.problems) == 1 and info.problems[0].case_id == f"training[{len(GOOD['training'])}]"

    flat = tmp_path / "flat"
    _touch_nii(flat / " c_image.nii.gz")
    _touch_nii(flat / " c_label.nii.gz")
    _touch_nii(flat / "e_image.nii.gz")
    _touch_nii(flat / "e_label.nii.gz")
    info = read_folder(flat)
    assert [c.case_id for c in info.cases] == ["e"] and info.problems[0].file.endswith(" c_image.nii.gz")


def test_busi_as_distributed_names_with_spaces_and_a_numbered_further_mask(tmp_path: Path) -> None:
    """BUSI (breast ultrasound): ``benign (1).png`` beside ``benign (1)_mask.png`` in one folder per kind; a case with
    two lesions has a further ``_mask_1``: one problem naming it as such (not an image without a label), and predict
    skips it as a mask."""
    from pipeline.tools.predict import find_cases

    root = tmp_path / "Dataset_BUSI_with_GT"
    picture, mask = np.full((12, 16, 3), 90, np.uint8), np.zeros((12, 16), np.uint8)
    for kind in ("benign", "normal"):
        for i in (1, 2):
            _png(root / kind / f"{kind} ({i}).png", picture)
            _png(root / kind / f"{kind} ({i})_mask.png", mask)
    info = read_folder(root)
    assert [c.case_id for c in info.cases] == ["benign (1)", "benign (2)", "normal (1)", "normal (2)"]
    assert info.problems == ()
    assert [c.group for c in info.cases] == [None] * 4  # two category folders, not patients: no groups

    _png(root / "benign" / "benign (2)_mask_1.png", mask)
    info = read_folder(root)
    assert [(p.case_id, Path(p.file).name) for p in info.problems] == [("benign (2)", "benign (2)_mask_1.png")]
    assert "a further mask of case 'benign (2)'" in info.problems[0].problem
    assert [c.case_id for c in find_cases(root / "benign")] == ["benign (1)", "benign (2)"]


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_patient_subfolders_of_slices_and_masks_are_grouped_by_patient(tmp_path: Path) -> None:
    """kaggle_3m-like: <patient>/<patient>_<n>.tif beside <patient>_<n>_mask.tif, searched at any depth; fewer
    than five sub-folders are categories (BUSI's benign/, malignant/, normal/), not patients."""
    rgb, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    patients = [f"TCGA_{p}" for p in "ABCDE"]
    for patient in patients:
        for n in (1, 2):
            _png(tmp_path / patient / f"{patient}_{n}.png", rgb)
            _png(tmp_path / patient / f"{patient}_{n}_mask.png", mask)
    info = read_dataset(tmp_path, "auto")
    assert not info.problems
    assert {(c.case_id, c.group) for c in info.cases} == {(f"{p}_{n}", p) for p in patients for n in (1, 2)}
    assert all(c.label is not None and c.label.name == f"{c.case_id}_mask.png" for c in info.cases)
    nested = tmp_path / "lgg-mri-segmentation"  # the patients one folder further down: still the groups
    (nested / "kaggle_3m").mkdir(parents=True)
    for patient in patients:
        (tmp_path / patient).rename(nested / "kaggle_3m" / patient)
    assert {c.group for c in read_dataset(nested, "auto").cases} == set(patients)
    (nested / "kaggle_3m" / "TCGA_F").mkdir()
    _png(nested / "kaggle_3m" / "TCGA_F" / "TCGA_A_1.png", rgb + 1)  # one case id in two patient folders: said
    assert any("duplicate case id 'TCGA_A_1'" in p.problem for p in read_dataset(nested, "auto").problems)
    for patient in patients[3:]:
        shutil.rmtree(nested / "kaggle_3m" / patient)
    shutil.rmtree(nested / "kaggle_3m" / "TCGA_F")
    assert {c.group for c in read_dataset(nested, "auto").cases} == {None}  # 3 folders: not taken as patients


def test_a_copy_of_the_dataset_inside_its_archive_is_read_once(tmp_path: Path, caplog) -> None:
    """kaggle_3m as downloaded: ``kaggle_3m/<patient>/`` and the same tree again in ``lgg-mri-segmentation/``."""
    rgb, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    patients = [f"TCGA_{p}" for p in "ABCDE"]
    for top in (tmp_path / "kaggle_3m", tmp_path / "lgg-mri-segmentation" / "kaggle_3m"):
        for patient in patients:
            for n in (1, 2):
                _png(top / patient / f"{patient}_{n}.png", rgb + n)
                _png(top / patient / f"{patient}_{n}_mask.png", mask)
    with caplog.at_level("WARNING"):
        info = read_dataset(tmp_path, "auto")
    assert not info.problems and "20 file(s) are byte-identical copies" in caplog.text
    assert {(c.case_id, c.group) for c in info.cases} == {(f"{p}_{n}", p) for p in patients for n in (1, 2)}
    # the patients are still the groups, not the two copies
    assert all("lgg" not in str(c.images[0]) and "lgg" not in str(c.label) for c in info.cases)
    _png(tmp_path / "lgg-mri-segmentation" / "kaggle_3m" / "TCGA_B" / "TCGA_B_2.png", rgb)  # differs: not a copy
    assert [p.case_id for p in read_dataset(tmp_path, "auto").problems] == ["TCGA_B_2"]


def test_chase_db1_as_distributed_reads_the_first_observers_masks(tmp_path: Path) -> None:
    """CHASE_DB1 (retinal vessels): ``Image_01L.jpg`` beside ``Image_01L_1stHO.png`` and a second observer's
    ``Image_01L_2ndHO.png`` in one folder: the first observer's masks are the labels, the second's are not used, and
    predict reads the pictures only."""
    from pipeline.tools.predict import find_cases

    picture, mask = np.full((12, 16, 3), 90, np.uint8), np.zeros((12, 16), np.uint8)
    for case in ("Image_01L", "Image_01R"):
        _png(tmp_path / f"{case}.png", picture)
        _png(tmp_path / f"{case}_1stHO.png", mask)
        _png(tmp_path / f"{case}_2ndHO.png", mask + 1)
    info = read_dataset(tmp_path, "auto")
    assert info.problems == ()
    assert [(c.case_id, c.label.name) for c in info.cases] == [  # type: ignore[union-attr]
        ("Image_01L", "Image_01L_1stHO.png"),
        ("Image_01R", "Image_01R_1stHO.png"),
    ]
    assert [c.case_id for c in find_cases(tmp_path)] == ["Image_01L", "Image_01R"]


def test_isic_as_distributed_pairs_segmentation_masks_in_their_own_folder(tmp_path: Path) -> None:
    """ISIC 2018: ``..._Input/<case>.jpg`` and ``..._GroundTruth/<case>_segmentation.png`` (plus licence files):
    every image has its mask, and the two folders are not groups (no patient folders)."""
    rgb, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    for folder in ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "LICENSE.txt").write_text("CC-BY-NC")
    for n in range(3):
        _png(tmp_path / "ISIC2018_Task1-2_Training_Input" / f"ISIC_000000{n}.png", rgb + n)
        _png(tmp_path / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_000000{n}_segmentation.png", mask)
    info = read_dataset(tmp_path, "auto")
    assert not info.problems
    assert [(c.case_id, c.label.name, c.group) for c in info.cases] == [
        (f"ISIC_000000{n}", f"ISIC_000000{n}_segmentation.png", None) for n in range(3)
    ]


def test_an_image_folder_and_a_folder_named_as_masks_are_paired_whatever_their_names(tmp_path: Path) -> None:
    """CVC-ClinicDB: ``Original/1.tif`` and ``Ground Truth/1.tif``; STARE unpacked: ``stare-images/im0001.ppm``
    and ``labels-ah/im0001.ah.ppm`` (paired by the leading part). Two folders not named as masks are not."""
    rgb, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    cvc, stare, other = tmp_path / "cvc", tmp_path / "stare", tmp_path / "other"
    for n in (1, 2):
        _png(cvc / "Original" / f"{n}.png", rgb + n)
        _png(cvc / "Ground Truth" / f"{n}.png", mask)
        _png(stare / "stare-images" / f"im000{n}.png", rgb + n)
        _png(stare / "labels-ah" / f"im000{n}.ah.png", mask)
        _png(other / "site_a" / f"a{n}_mask.png", mask)
        _png(other / "site_b" / f"a{n}.png", rgb + n)
    for root, folder in ((cvc, "Ground Truth"), (stare, "labels-ah")):
        info = read_dataset(root, "auto")
        assert not info.problems
        assert [c.case_id for c in info.cases] == (["1", "2"] if root == cvc else ["im0001", "im0002"])
        assert all(c.label.parent.name == folder and c.group is None for c in info.cases)
    carvana = tmp_path / "carvana"  # train/ + train_masks/ (<id>_mask) beside an unlabelled test/
    for n in (1, 2):
        _png(carvana / "train" / f"c{n}.png", rgb + n)
        _png(carvana / "train_masks" / f"c{n}_mask.png", mask)
        _png(carvana / "test" / f"t{n}.png", rgb)
    info = read_dataset(carvana, "auto")
    assert not info.problems and [(c.case_id, c.label.name) for c in info.cases] == [
        ("c1", "c1_mask.png"),
        ("c2", "c2_mask.png"),
    ]
    info = read_dataset(other, "auto")  # no folder named as masks: files searched at any depth, as before
    assert not info.problems and [(c.case_id, c.label.name) for c in info.cases] == [
        ("a1", "a1_mask.png"),
        ("a2", "a2_mask.png"),
    ]


def test_named_channel_files_beside_their_label_are_one_case(tmp_path: Path) -> None:
    """BraTS 2021 as distributed: ``<case>/<case>_flair``, ``_t1``, ``_t1ce``, ``_t2`` and ``<case>_seg``: one case of
    four channels in the order of their names (recorded as the modalities), its patient folder its group; a case
    missing a channel is named with what it has."""
    vol = np.zeros((4, 4, 3), np.float32)
    for cid in ("BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"):
        for name in ("t2", "flair", "t1ce", "t1", "seg"):
            if cid.endswith("3") and name == "t1ce":
                continue
            (tmp_path / cid).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / cid / f"{cid}_{name}.nii.gz"))
    info = read_dataset(tmp_path, "auto")
    assert info.modalities == {0: "flair", 1: "t1", 2: "t1ce", 3: "t2"} and info.modalities_declared
    assert [(c.case_id, c.group, [p.name.split("_")[-1] for p in c.images]) for c in info.cases] == [
        (cid, cid, ["flair.nii.gz", "t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz"])
        for cid in ("BraTS2021_00000", "BraTS2021_00002")
    ]
    assert [(p.case_id, p.problem) for p in info.problems] == [
        ("BraTS2021_00003", "channels flair, t1, t2 differ from the other cases' (flair, t1, t1ce, t2)")
    ]


def test_images_and_labels_paired_by_a_leading_part_only_when_unambiguous(tmp_path: Path) -> None:
    """DRIVE-like names: images/21_training.png with labels/21_manual1.png."""
    rgb, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    for n in (21, 22):
        _png(tmp_path / "images" / f"{n}_training.png", rgb)
        _png(tmp_path / "labels" / f"{n}_manual1.png", mask)
    info = read_dataset(tmp_path, "auto")
    assert not info.problems
    assert {(c.case_id, c.label.name) for c in info.cases} == {
        ("21_training", "21_manual1.png"),
        ("22_training", "22_manual1.png"),
    }
    _png(tmp_path / "labels" / "21_manual2.png", mask)  # two labels start with 21: no guessing
    problems = read_dataset(tmp_path, "auto").problems
    assert any(p.problem == "no label file for this image" for p in problems)


def test_a_dataset_unpacked_as_distributed_is_read_from_its_training_folder(tmp_path: Path) -> None:
    """DRIVE/training/{images,1st_manual,mask} beside DRIVE/test/: the training cases; the test folder is not read."""
    rgb, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    for n in (21, 22):
        _png(tmp_path / "DRIVE" / "training" / "images" / f"{n}_training.png", rgb)
        _png(tmp_path / "DRIVE" / "training" / "1st_manual" / f"{n}_manual1.png", mask)
        _png(tmp_path / "DRIVE" / "training" / "mask" / f"{n}_training_mask.png", mask)
    _png(tmp_path / "DRIVE" / "test" / "images" / "01_test.png", rgb)
    _png(tmp_path / "DRIVE" / "test" / "mask" / "01_test_mask.png", mask)
    info = read_dataset(tmp_path / "DRIVE", "auto")
    assert not info.problems and info.name == "DRIVE"
    assert [(c.case_id, c.label.name) for c in info.cases] == [
        ("21_training", "21_manual1.png"),
        ("22_training", "22_manual1.png"),
    ]
    # the test folder's mask/ is the field of view, not vessels: no test cases without its 1st_manual/
    assert not any(c.test for c in info.cases)
    # with test/1st_manual/ (DRIVE as distributed with its manual masks): its pictures are the dataset's test cases
    _png(tmp_path / "DRIVE" / "test" / "images" / "02_test.png", rgb)
    _png(tmp_path / "DRIVE" / "test" / "1st_manual" / "01_manual1.png", mask)
    info = read_dataset(tmp_path / "DRIVE", "auto")
    assert not info.problems
    assert [(c.case_id, c.label.name, c.test) for c in info.cases] == [
        ("21_training", "21_manual1.png", False),
        ("22_training", "22_manual1.png", False),
        ("01_test", "01_manual1.png", True),  # 02_test has no manual mask: left for predict
    ]
    # pointed at training/ itself, nothing outside the data root is read
    assert not any(c.test for c in read_dataset(tmp_path / "DRIVE" / "training", "auto").cases)


def test_a_datasets_own_labelled_test_cases_are_marked(tmp_path: Path) -> None:
    """MSD test entries with a label (BraTS examples), test image paths with a file in labelsTs/, imagesTs/ +
    labelsTs/ of an nnU-Net folder, a manifest's split column: test cases; unlabelled test entries are not cases."""
    meta = dict(GOOD, test=[{"image": "imagesTs/c.nii.gz", "label": "labelsTs/c.nii.gz"}, "imagesTs/d.nii.gz"])
    root = _msd(tmp_path / "msd", meta)
    for name in ("imagesTs/c", "labelsTs/c", "imagesTs/d"):
        _touch_nii(root / f"{name}.nii.gz")
    info = read_msd(root)
    assert not info.problems and [(c.case_id, c.test) for c in info.cases] == [("a", False), ("b", False), ("c", True)]
    _touch_nii(root / "labelsTs" / "d.nii.gz")  # the MSD's test list of image paths, labelled beside it
    assert [(c.case_id, c.test) for c in read_msd(root).cases][-1] == ("d", True)
    # a test entry whose id repeats a training case is a problem, as within the training list
    meta["test"] = [{"image": "imagesTs/c.nii.gz", "label": "labelsTs/c.nii.gz", "group": "x"}] * 2
    (root / "dataset.json").write_text(json.dumps(meta))
    assert [p.problem for p in read_msd(root).problems] == ["duplicate case id 'c'"]
    # nnU-Net v2 folder (no training list): imagesTs/ + labelsTs/ paired by name
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "fg": 1}, "file_ending": ".nii.gz"}))
    info = read_msd(root)
    assert not info.problems and [(c.case_id, c.test) for c in info.cases] == [
        ("a", False), ("b", False), ("c", True), ("d", True),
    ]  # fmt: skip
    # manifest: split column
    rows = [
        "case_id,image,label,split",
        "a,imagesTr/a.nii.gz,labelsTr/a.nii.gz,",
        "c,imagesTs/c.nii.gz,labelsTs/c.nii.gz,TEST",
    ]
    (root / "manifest.csv").write_text("\n".join(rows + ["b,imagesTr/b.nii.gz,labelsTr/b.nii.gz,holdout"]) + "\n")
    info = read_dataset(root, "csv")
    assert [(c.case_id, c.test) for c in info.cases] == [("a", False), ("c", True)]
    assert [p.problem for p in info.problems] == ["malformed manifest: line 4: split 'holdout' is not train or test"]


def test_label_masks_in_masks_folder_pair_and_a_missing_label_folder_is_named(tmp_path: Path) -> None:
    """images/ + masks/ (as many 2D sets come) pairs; DRIVE as distributed pairs its 1st_manual/ annotations, never
    its mask/ (the field of view); an images/ folder with no label folder is one line naming what lies beside it."""
    rgb, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    for n in (1, 2):
        _png(tmp_path / "kvasir" / "images" / f"p{n}.png", rgb)
        _png(tmp_path / "kvasir" / "masks" / f"p{n}.png", mask)
        _png(tmp_path / "drive" / "images" / f"{n}_training.png", rgb)
        _png(tmp_path / "drive" / "1st_manual" / f"{n}_manual1.png", mask)
        _png(tmp_path / "drive" / "mask" / f"{n}_training_mask.png", mask)
        _png(tmp_path / "none" / "images" / f"{n}.png", rgb)
        _png(tmp_path / "none" / "fov" / f"{n}.png", mask)
    info = read_dataset(tmp_path / "kvasir", "auto")
    assert not info.problems and [c.label.parent.name for c in info.cases] == ["masks", "masks"]
    drive = read_dataset(tmp_path / "drive", "auto")
    assert not drive.problems and [c.label.name for c in drive.cases] == ["1_manual1.png", "2_manual1.png"]
    problems = read_dataset(tmp_path / "none", "auto").problems
    assert not read_dataset(tmp_path / "none", "auto").cases
    folder = [p.problem for p in problems if p.case_id == "(dataset)"]
    assert len(folder) == 1 and "no folder of label masks beside images/ (labels/, masks/, 1st_manual/" in folder[0]
    assert folder[0].endswith(
        "(beside it: fov); put the masks in labels/ (names equal to the images', or sharing their leading part)"
    )


def test_a_folder_that_only_wraps_the_dataset_is_read_as_the_dataset(tmp_path: Path) -> None:
    """An archive unpacked into a folder of its own (Task04_Hippocampus/ or DRIVE/ beside __MACOSX/ and a README):
    the data root may be the folder it was unpacked in; a lone images/ folder is not a wrapper."""
    _msd(tmp_path / "downloads" / "Task04_Hippocampus", GOOD)
    (tmp_path / "downloads" / "README.txt").write_text("unpacked here")
    (tmp_path / "downloads" / "__MACOSX" / "Task04_Hippocampus").mkdir(parents=True)
    (tmp_path / "downloads" / "__MACOSX" / "Task04_Hippocampus" / "._a.nii.gz").write_bytes(b"\0\5\26\7")
    info = read_dataset(tmp_path / "downloads", "auto")
    assert not info.problems and [str(c.label.parent.parent.name) for c in info.cases] == ["Task04_Hippocampus"] * 2
    # two wrapping levels, DRIVE's training/ + test/ inside
    rgb, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    drive = tmp_path / "unzipped" / "datasets" / "DRIVE"
    _png(drive / "training" / "images" / "21_training.png", rgb)
    _png(drive / "training" / "1st_manual" / "21_manual1.png", mask)
    _png(drive / "test" / "images" / "01_test.png", rgb)
    _png(drive / "test" / "1st_manual" / "01_manual1.png", mask)
    info = read_dataset(tmp_path / "unzipped", "auto")
    assert not info.problems
    assert [(c.case_id, c.test) for c in info.cases] == [("21_training", False), ("01_test", True)]
    # a folder holding only a link to itself ends the search (no image files there)
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "self").symlink_to(tmp_path / "loop")
    assert [p.problem for p in read_dataset(tmp_path / "loop", "auto").problems] == ["no image files found"]
    # the folder's own structure is not unwrapped: images/ alone still says its label folder is missing
    _png(tmp_path / "only" / "images" / "1.png", rgb)
    problems = read_dataset(tmp_path / "only", "auto").problems
    assert len(problems) == 2 and "no folder of label masks beside images/" in problems[0].problem


def test_radiology_layouts_as_distributed_kits_lits_btcv_acdc_and_case_folders(tmp_path: Path) -> None:
    """KiTS: a folder per case, imaging + segmentation (two empty masks byte-identical; instances/ not used); LiTS:
    volume-N beside segmentation-N; BTCV/Synapse: Training/img/img0001 + Training/label/label0001 beside Testing/;
    ACDC: <case>_gt; in-house: a folder per patient of named channels beside seg."""
    for n in range(3):
        _touch_nii(tmp_path / "kits" / f"case_0000{n}" / "imaging.nii.gz", (n, 7))
        _touch_nii(tmp_path / "kits" / f"case_0000{n}" / "segmentation.nii.gz", (0, 1) if n else (0,))
        _touch_nii(tmp_path / "kits" / f"case_0000{n}" / "instances" / "kidney_instance-1_annotation-1.nii.gz")
    _touch_nii(tmp_path / "kits" / "case_00003" / "segmentation.nii.gz", (0,))  # equal to case_00000's mask
    _touch_nii(tmp_path / "kits" / "case_00003" / "imaging.nii.gz", (3, 7))
    info = read_dataset(tmp_path / "kits", "auto")
    assert not info.problems
    assert [(c.case_id, c.images[0].name, c.label.name, c.group) for c in info.cases] == [
        (f"case_0000{n}", "imaging.nii.gz", "segmentation.nii.gz", f"case_0000{n}") for n in range(4)
    ]
    for n in range(2):
        _touch_nii(tmp_path / "lits" / f"volume-{n}.nii", (n, 7))
        _touch_nii(tmp_path / "lits" / f"segmentation-{n}.nii")
    info = read_dataset(tmp_path / "lits", "auto")
    assert not info.problems and [(c.case_id, c.label.name) for c in info.cases] == [
        ("volume-0", "segmentation-0.nii"),
        ("volume-1", "segmentation-1.nii"),
    ]
    for n in (1, 2):
        _touch_nii(tmp_path / "RawData" / "Training" / "img" / f"img000{n}.nii.gz", (n, 7))
        _touch_nii(tmp_path / "RawData" / "Training" / "label" / f"label000{n}.nii.gz")
    _touch_nii(tmp_path / "RawData" / "Testing" / "img" / "img0061.nii.gz")
    info = read_dataset(tmp_path / "RawData", "auto")
    assert not info.problems and [(c.case_id, c.label.name) for c in info.cases] == [
        ("img0001", "label0001.nii.gz"),
        ("img0002", "label0002.nii.gz"),
    ]
    for frame in ("01", "12"):
        _touch_nii(tmp_path / "acdc" / "patient001" / f"patient001_frame{frame}.nii.gz", (int(frame), 7))
        _touch_nii(tmp_path / "acdc" / "patient001" / f"patient001_frame{frame}_gt.nii.gz")
    info = read_dataset(tmp_path / "acdc", "auto")
    assert not info.problems and [c.label.name for c in info.cases] == [
        "patient001_frame01_gt.nii.gz",
        "patient001_frame12_gt.nii.gz",
    ]
    for patient in ("p1", "p2"):
        for k, name in enumerate(("T1", "flair", "seg")):
            _touch_nii(tmp_path / "brain" / patient / f"{name}.nii.gz", (k, 7))
    info = read_dataset(tmp_path / "brain", "auto")
    assert not info.problems and info.modalities == {0: "flair", 1: "T1"} and info.modalities_declared
    assert [(c.case_id, [p.name for p in c.images]) for c in info.cases] == [
        ("p1", ["flair.nii.gz", "T1.nii.gz"]),
        ("p2", ["flair.nii.gz", "T1.nii.gz"]),
    ]


def test_bids_names_pair_by_session_with_channels_named_by_suffix_and_patients_grouped(tmp_path: Path) -> None:
    """ISLES 2022 (sub-X/ses-Y/dwi/..._dwi and _adc, masks ..._msk under derivatives/) and ATLAS 2.0 (one T1w beside
    its ..._label-L_desc-T1lesion_mask, sites as folders): a case per session, grouped by subject (two subjects are
    patients, not categories)."""
    for n in (1, 2):
        for ses in ("0001", "0002"):
            base = f"sub-strokecase000{n}_ses-{ses}"
            folder = tmp_path / "isles" / f"sub-strokecase000{n}" / f"ses-{ses}" / "dwi"
            _touch_nii(folder / f"{base}_dwi.nii.gz", (n, 7))
            _touch_nii(folder / f"{base}_adc.nii.gz", (n, 8))
            derivatives = tmp_path / "isles" / "derivatives" / f"sub-strokecase000{n}" / f"ses-{ses}"
            _touch_nii(derivatives / f"{base}_msk.nii.gz")
    info = read_dataset(tmp_path / "isles", "auto")
    assert not info.problems and info.modalities == {0: "adc", 1: "dwi"}
    assert [(c.case_id, c.group, c.images[1].name) for c in info.cases[:2]] == [
        ("sub-strokecase0001_ses-0001", "sub-strokecase0001", "sub-strokecase0001_ses-0001_dwi.nii.gz"),
        ("sub-strokecase0001_ses-0002", "sub-strokecase0001", "sub-strokecase0001_ses-0002_dwi.nii.gz"),
    ]
    for site, sub in (("R001", "r001s001"), ("R002", "r002s001")):
        anat = tmp_path / "atlas" / "Training" / site / f"sub-{sub}" / "ses-1" / "anat"
        _touch_nii(anat / f"sub-{sub}_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz", (int(sub[-1]), int(sub[3])))
        _touch_nii(anat / f"sub-{sub}_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz")
    info = read_dataset(tmp_path / "atlas", "auto")
    assert not info.problems and [(c.case_id, c.group) for c in info.cases] == [
        ("sub-r001s001_ses-1", "sub-r001s001"),  # the subject, not the site folder
        ("sub-r002s001_ses-1", "sub-r002s001"),
    ]


def test_images_and_masks_in_a_sub_folder_per_patient_are_paired_place_by_place(tmp_path: Path) -> None:
    """images/P1/001.png beside masks/P1/001.png (names recurring across patients: keyed P1_001), grouped by patient;
    Original/<patient>/ beside Ground Truth/<patient>/ as well (before: 'no image files found')."""
    rgb, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    for n in range(1, 6):
        for s in ("001", "002"):
            _png(tmp_path / "set" / "images" / f"P{n}" / f"{s}.png", rgb + n)
            _png(tmp_path / "set" / "masks" / f"P{n}" / f"{s}.png", mask)
            _png(tmp_path / "cvc" / "Original" / f"P{n}" / f"{s}.png", rgb + n)
            _png(tmp_path / "cvc" / "Ground Truth" / f"P{n}" / f"{s}.png", mask)
    for name in ("set", "cvc"):
        info = read_dataset(tmp_path / name, "auto")
        assert not info.problems and len(info.cases) == 10
        assert [(c.case_id, c.group, c.label.parent.name) for c in info.cases[:2]] == [
            ("P1_001", "P1", "P1"),
            ("P1_002", "P1", "P1"),
        ]
    # a mask in another patient's folder is not this case's
    (tmp_path / "set" / "masks" / "P5" / "002.png").rename(tmp_path / "set" / "masks" / "P4" / "009.png")
    problems = read_dataset(tmp_path / "set", "auto").problems
    assert sorted(p.case_id for p in problems) == ["P4_009", "P5_002"]


def test_data_channels_keeps_the_named_channels_in_their_order_or_says_what_the_files_name(tmp_path: Path) -> None:
    """ISLES-like sessions with dwi, adc and a FLAIR (on another grid in the real set): data.channels [dwi, adc]
    keeps those two, in that order; a name no file has, or channels held in one file, is one problem."""
    for n in (1, 2):
        folder = tmp_path / "isles" / f"sub-0{n}" / "ses-1"
        for k, suffix in enumerate(("dwi", "adc", "FLAIR")):
            _touch_nii(folder / f"sub-0{n}_ses-1_{suffix}.nii.gz", (n, k))
        _touch_nii(folder / f"sub-0{n}_ses-1_msk.nii.gz")
    info = read_dataset(tmp_path / "isles", "auto", channels=["DWI", "adc"])
    assert not info.problems and info.modalities == {0: "dwi", 1: "adc"}
    assert [p.name for p in info.cases[0].images] == ["sub-01_ses-1_dwi.nii.gz", "sub-01_ses-1_adc.nii.gz"]
    problems = read_dataset(tmp_path / "isles", "auto", channels=["t2"]).problems
    assert [p.problem for p in problems] == ["data.channels ['t2']: t2 not among the channels named: adc, dwi, FLAIR"]
    (twice,) = read_dataset(tmp_path / "isles", "auto", channels=["adc", "ADC"]).problems
    assert twice.problem == "data.channels ['adc', 'ADC']: a channel named twice"
    _msd(tmp_path / "msd", GOOD)  # one file per case, no channel names
    (problem,) = read_dataset(tmp_path / "msd", "auto", channels=["MR"]).problems
    assert "MR not among the channels named: none" in problem.problem
