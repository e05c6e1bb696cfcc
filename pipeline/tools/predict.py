"""Predict label maps for new scans with a trained model folder (no labels needed).

    python -m pipeline.tools.predict --model models/model --input scans/ --output predictions/

``--model`` is a model folder, or several (or a folder of fold folders such as ``models/model``): an ensemble
whose class probabilities (after mirroring, if on) are averaged before the arg-max; folders that differ in
plan, labels or channels are refused. ``--input`` is one scan or a folder of scans (.nii, .nii.gz, .nrrd,
.mha, .mhd; 2D pictures .png, .jpg, .tif, .bmp, .gif; per-channel files ``<case>_0000``, ``<case>_0001``, ...
are grouped by case). Each scan gets ``<output>/<case>.nii.gz``: integer labels (the dataset's declared label
values) on exactly the scan's voxel grid, with its affine (sform and qform with their codes), so it opens
aligned with the scan in ITK-SNAP or 3D Slicer; a 2D picture gets ``<output>/<case>.png`` of its own size.
A DICOM series is a folder: a folder
holding DICOM files is one scan (see :mod:`pipeline.core.dicom`). With
``--probabilities`` also ``<case>_probabilities.nii.gz`` (one volume per class, values in [0, 1]).
``--output-format dicom-seg`` writes ``<output>/<case>.dcm`` instead: one multi-class DICOM SEG per
series (:mod:`pipeline.inference.dicom_seg`).
Every scan gets the checks ``validate`` runs (readable, complete, no NaN/Inf, positive spacing, 3D or 4D
multi-channel, data files inside its folder, declared size within ``--max-voxels``); a scan that fails them
is reported by file name and skipped, nothing is written for it, and the exit code is 1. Hidden files
(``.x.tmp.nii.gz`` left by an interrupted run) are not scans. Exit code 2, with nothing written, when the
model folder or the input cannot be used or two outputs would have one name.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.config import InferenceConfig
from pipeline.core import dicom, dicom_series, io
from pipeline.core.cases import Case
from pipeline.core.dataset import image_files, scans_folder
from pipeline.core.names import (
    CHANNEL_FILE,
    CHANNEL_NAME,
    bids_name,
    case_folder_files,
    channel_name_of,
    channel_stem,
    mask_case,
    scan_key,
)
from pipeline.core.readers import (
    SUPPORTED_SUFFIXES,
    add_max_voxels_argument,
    set_max_voxels,
    strip_suffix,
)
from pipeline.inference.dicom_seg import CodeMapError, load_code_map, write_seg
from pipeline.inference.masks import mask_name, save_mask
from pipeline.inference.model_folder import ModelFolderError
from pipeline.inference.predictor import Prediction, Predictor, UnreadableScanError, save_probabilities

logger = logging.getLogger("pipeline.tools.predict")


def _stem(path: Path) -> str:
    """A scan file's name without its suffix; a DICOM series folder's whole name."""
    return path.name if path.is_dir() else strip_suffix(path.name)


def _scan_ids(files: list[Path]) -> dict[Path, str]:
    """``{scan: the name it goes by}``: its name, or in a case folder (names that recur in other folders, KiTS's
    ``case_00210/imaging.nii.gz``: :func:`~pipeline.core.names.case_folder_files`) its folder's name, or
    ``<folder>_<name>`` for one of several channel files. Masks are not scans: ``<case>_mask`` (``_label``, ``_seg``,
    a numbered ``_mask_1``, ``segmentation-<key>``) files beside their scan ``<case>`` (or its channel files
    ``<case>_0000``, ``<case>_flair``, ...), and a case folder's ``segmentation``; nor files in folders inside a
    case folder."""
    in_folders, nested = case_folder_files(files, by_recurring_names=True)
    rest = [f for f in files if f not in in_folders and f not in nested]
    bids = {f: b for f in rest if (b := bids_name(_stem(f))) is not None}
    masked = {  # the case a mask belongs to; None: a scan
        f: (bids[f].case if bids[f].is_label else None) if f in bids else mask_case(f.name) for f in rest
    }
    scans = {_stem(f) for f, case in masked.items() if case is None}
    cases = scans | {s.rpartition("_")[0] for s in scans} | {scan_key(s) for s in scans}
    cases |= {b.case for b in bids.values() if not b.is_label}
    masks = {f for f, case in masked.items() if case is not None and case in cases}
    masks |= {f for f, (_, is_label) in in_folders.items() if is_label}
    if masks:
        logger.info("%d mask file(s) beside their scans skipped (e.g. %s)", len(masks), min(masks).name)
    if nested:
        logger.info("%d file(s) in folders inside case folders skipped (e.g. %s)", len(nested), min(nested))
    ids = {f: key for f, (key, _) in in_folders.items()} | {f: _stem(f) for f in rest}
    ids |= {f: f"{b.case}_{b.channel}" for f, b in bids.items()}  # a BIDS scan: a channel of its session
    return {f: ids[f] for f in files if f in ids and f not in masks}


def find_cases(path: Path, in_channels: int = 1, channel_names: Sequence[str] = ()) -> list[Case]:
    """One case per scan (a file, or every image in a folder and its sub-folders, sorted; hidden files such as
    ``.x.tmp.nii.gz`` left by an interrupted run are not scans, nor ``<case>_mask`` files beside ``<case>``, nor
    the mask folders beside an ``images/`` folder, as DRIVE's ``test/`` comes).
    A folder holding DICOM files is one scan; in a folder of scans, every sub-folder holding DICOM files (at
    any depth) is one.

    Multi-channel models take one 4D file (channels last) per case, or one file per channel named
    ``<case>_0000``, ``<case>_0001``, ... (nnU-Net's convention) or, for a model trained on named channel files,
    ``<case>_<name>`` for each of ``channel_names`` (BraTS 2021's ``<case>_flair``, ``<case>_t1``, ...; BIDS's
    ``sub-01_ses-1_FLAIR``; a case folder's ``p1/flair.nii.gz``). Scans in case folders (KiTS's
    ``case_00210/imaging.nii.gz``) are named by their folders (:func:`_scan_ids`).
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir() and (scans := scans_folder(path)) != path:
        logger.info("%s: the scans of %s/ (the folders beside it hold masks)", path, scans.name)
        path = scans
    if path.is_dir() and not dicom_series.holds_dicom_files(path):  # a folder of scans (not a DICOM series folder)
        ids = _scan_ids(image_files(path, recursive=True))  # DICOM series folders are scans too
    else:
        ids = {path: _stem(path)}
    files = list(ids)
    if not files:
        raise FileNotFoundError(f"{path}: no image files ({', '.join(SUPPORTED_SUFFIXES)}) or DICOM series folders")
    named = len(channel_names) == in_channels and all(CHANNEL_NAME.fullmatch(n) for n in channel_names)
    index = {name.lower(): k for k, name in enumerate(channel_names)} if named else {}
    channel_of = {f: _named_channel(f, ids[f], index) for f in files}
    if in_channels == 1 and not any(c is not None and c[1].lower() in index for c in channel_of.values()):
        # one scan per case (a BIDS scan: its session's)
        return [Case(b.case if (b := bids_name(ids[f])) is not None else ids[f], (f,)) for f in files]
    return _grouped_cases(files, ids, channel_of, index, in_channels)


def _named_channel(path: Path, file_id: str, index: dict[str, int]) -> tuple[str, str] | None:
    """``(case, channel name)`` of a file ``<case>_<name>``, or of a case folder's ``<folder>/<name>`` whose name is
    one of the model's channels (``p1/T1_pre.nii.gz``: ``T1pre``)."""
    if file_id.startswith(f"{path.parent.name}_") and channel_stem(_stem(path)).lower() in index:
        return path.parent.name, channel_stem(_stem(path))
    return channel_name_of(file_id)


def _grouped_cases(
    files: list[Path],
    ids: dict[Path, str],
    channel_of: dict[Path, tuple[str, str] | None],
    index: dict[str, int],
    in_channels: int,
) -> list[Case]:
    """Cases of channel files (``<case>_0000``, or named as ``index`` names the model's channels), and of files
    holding every channel; a named channel the model does not take (``data.channels`` left it out) is skipped."""
    groups: dict[str, dict[int, Path]] = {}
    cases = []
    others: dict[str, set[str | None]] = {}  # a single-file case's id -> the cases it may be a channel of
    for f in files:
        m, named_file = CHANNEL_FILE.match(ids[f]), channel_of[f]
        if m is not None:
            groups.setdefault(m["case"], {})[int(m["channel"])] = f
        elif named_file is not None and named_file[1].lower() in index:  # a named channel file
            groups.setdefault(named_file[0], {})[index[named_file[1].lower()]] = f
        else:  # one file holding every channel, or a named channel the model does not take
            cases.append(Case(ids[f], (f,)))
            folder = f.parent.name if ids[f].startswith(f"{f.parent.name}_") else None  # a case folder's file
            others[cases[-1].case_id] = {named_file[0] if named_file is not None else None, folder} if index else set()
    if unused := [c for c in cases if others[c.case_id] & groups.keys()]:
        logger.info("%d channel file(s) the model does not take skipped (e.g. %s)", len(unused), unused[0].images[0])
        cases = [c for c in cases if c not in unused]
    for cid, chans in sorted(groups.items()):
        if sorted(chans) != list(range(in_channels)):
            raise FileNotFoundError(f"{cid}: expected channels 0..{in_channels - 1}, found {sorted(chans)}")
        cases.append(Case(cid, tuple(chans[i] for i in range(in_channels))))
    return sorted(cases, key=lambda c: c.case_id)


def check_outputs(cases: list[Case], output: Path, probabilities: bool = True) -> None:
    """Refuse, before anything is written, two outputs with one name (two scans with one case id, or a scan
    ``a_probabilities`` against scan ``a``'s probabilities) and outputs that would overwrite an input scan."""
    owner: dict[str, Path] = {}
    inputs = {p.resolve() for c in cases for p in c.images}
    for case in cases:
        names = [mask_name(case.case_id, case.images[0])]
        names += [f"{case.case_id}_probabilities.nii.gz"] if probabilities else []
        for name in names:
            if name in owner:
                raise ValueError(f"{case.images[0]} and {owner[name]} would both be written as {output / name}")
            owner[name] = case.images[0]
            if (output / name).resolve() in inputs:
                raise ValueError(f"{output / name}: the output would overwrite an input scan; choose another --output")


def check_dicom_seg(cases: list[Case], output: Path) -> None:
    """``--output-format dicom-seg``: every scan must be a DICOM series, and no SEG may land inside one."""
    for case in cases:
        if not case.images[0].is_dir():
            raise ValueError(f"{case.images[0]}: --output-format dicom-seg needs DICOM series (folders) as input")
        if output.resolve().is_relative_to(case.images[0].resolve()):
            raise ValueError(f"{output}: the SEG files would be written inside the series {case.images[0]}")


def write_outputs(
    case: Case, pred: Prediction, args: argparse.Namespace, names: dict, codes: dict | None, values: tuple
) -> Path:
    """The mask (see :func:`~pipeline.inference.masks.save_mask`; and probabilities) or the series' SEG ``<case>.dcm``.

    A SEG's segment numbers are the model's classes 1..K-1, named by the model's labels.
    """
    if args.output_format == "dicom-seg":
        out = write_seg(
            pred.labels, dicom.read_volume(case.images[0]), names, io.inside(args.output, f"{case.case_id}.dcm"), codes
        )
    else:
        out = save_mask(pred.labels, pred.reference, case.images[0], args.output, case.case_id, values)
    if pred.probabilities is not None:
        probabilities = io.inside(args.output, f"{case.case_id}_probabilities.nii.gz")
        save_probabilities(pred.probabilities, pred.reference, probabilities)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tools.predict",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="inputs: --model (a model folder; several, or a folder of folds: their ensemble),\n"
        "        --input (a scan or a folder of scans)\n"
        "outputs: <output>/<case>.nii.gz on each scan's voxel grid (+ <case>_probabilities.nii.gz)\n"
        "         (--output-format dicom-seg: <output>/<case>.dcm, one DICOM SEG per input DICOM series)\n"
        "exit status: 0 every scan predicted; 1 some scans failed (listed on stderr, the others written);\n"
        "             2 the model folder or the input cannot be used, or a usage error (nothing written)",
    )
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        nargs="+",
        help="model folder written by the train stage; several, or a folder of folds (models/model): an ensemble",
    )
    parser.add_argument("--input", required=True, type=Path, help="a scan, or a folder of scans")
    parser.add_argument("--output", required=True, type=Path, help="folder for <case>.nii.gz")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    tri = argparse.BooleanOptionalAction
    parser.add_argument("--mirror", action=tri, default=None, help="mirroring TTA (default: model's setting)")
    parser.add_argument(
        "--keep-largest", action=tri, default=None, help="largest component per class (default: model's)"
    )
    parser.add_argument(
        "--probabilities", action=tri, default=None, help="also write <case>_probabilities.nii.gz (default: model's)"
    )
    parser.add_argument(
        "--output-format",
        choices=["nifti", "dicom-seg"],
        default="nifti",
        help="nifti: <case>.nii.gz (default); dicom-seg: <case>.dcm, one DICOM SEG per series (DICOM input only)",
    )
    parser.add_argument(
        "--label-codes", type=Path, default=None, help="dicom-seg: JSON/YAML map class name or index -> codes"
    )
    add_max_voxels_argument(parser)
    dicom_series.add_rule_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Predict every scan; 0 if all succeeded, 1 if some failed, 2 if nothing could be run."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        predictor, cases, with_probs, codes = prepare(args)
    except (ModelFolderError, FileNotFoundError, ValueError, RuntimeError, CodeMapError) as err:
        logger.error("%s", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        return 2
    logger.info(
        "%d scan(s); model %s (%dD, %s), mirroring %s, largest component %s, device %s, %d threads",
        len(cases),
        ", ".join(predictor.meta.get("ensemble", [str(m) for m in args.model])),
        predictor.spatial_dims,
        predictor.meta["model"].get("name", "?"),
        "on" if predictor.mirror else "off",
        ", ".join(predictor.labels.get(k, str(k)) for k in predictor.keep_largest) or "off",
        predictor.device,
        torch.get_num_threads(),
    )
    failures = predict_all(cases, predictor, args, with_probs, codes)
    if failures:
        width = max(len(cid) for cid, _ in failures)
        lines = [f"{len(failures)} scan(s) failed:", f"  {'case'.ljust(width)}  error"]
        lines += [f"  {cid.ljust(width)}  {msg}" for cid, msg in failures]
        print("\n".join(lines), file=sys.stderr)
        return 1
    return 0


def prepare(args: argparse.Namespace) -> tuple[Predictor, list[Case], bool, dict | None]:
    """Everything checked before anything is written: the model(s), the scans, the outputs and the SEG codes."""
    dicom_series.set_series_rule(dicom_series.rule_from_args(args))
    set_max_voxels(args.max_voxels)
    predictor = Predictor(args.model, args.device, args.mirror, keep_largest=args.keep_largest)
    inf = predictor.meta.get("inference", {})
    with_probs = inf.get("save_probabilities", InferenceConfig.save_probabilities)
    if args.probabilities is not None:
        with_probs = args.probabilities
    modalities = predictor.meta["plan"].get("modalities", {})  # named channel files: <case>_<name>, as trained
    names = [str(modalities[k]) for k in sorted(modalities, key=int)]
    cases = find_cases(args.input, int(predictor.meta["in_channels"]), names)
    check_outputs(cases, args.output, with_probs)
    codes = None
    if args.output_format == "dicom-seg":
        check_dicom_seg(cases, args.output)
        codes = load_code_map(args.label_codes, predictor.labels) if args.label_codes else None
    return predictor, cases, with_probs, codes


def predict_all(
    cases: list[Case], predictor: Predictor, args: argparse.Namespace, with_probs: bool, codes: dict | None
) -> list[tuple[str, str]]:
    """Predict and write every scan; a scan that fails is logged and listed ``(case id, error)``, the rest go on."""
    values = tuple(predictor.meta["plan"].get("label_values") or ())  # masks keep the dataset's label values
    failures: list[tuple[str, str]] = []
    total = time.monotonic()
    for case in tqdm(cases, desc="predict", unit="scan"):
        try:
            pred = predictor.predict(case, probabilities=with_probs)
            out = write_outputs(case, pred, args, predictor.labels, codes, values)
        except UnreadableScanError as err:
            failures.append((case.case_id, str(err)))
            logger.error("%s", err)
            continue
        except Exception as err:  # noqa: BLE001 - one bad scan must not stop the others
            while err.__cause__ is not None:  # MONAI wraps the real error in "applying transform ..."
                err = err.__cause__  # type: ignore[assignment]
            text = " ".join(str(err).split())[:200]
            message = f"{case.images[0]}: cannot predict this scan: {type(err).__name__}: {text}"
            failures.append((case.case_id, message))
            logger.error("%s", message)
            continue
        phases = ", ".join(f"{k} {v:.2f}" for k, v in pred.timings.items())
        logger.info("%s: %.2f s (%s) -> %s", case.case_id, pred.seconds, phases, out)
    done = len(cases) - len(failures)
    logger.info("%d of %d scan(s) predicted in %.1f s", done, len(cases), time.monotonic() - total)
    return failures


if __name__ == "__main__":
    sys.exit(main())
