"""Tests for pipeline.evaluation.report and .plots: case choice, slices, self-contained HTML, a Chromium render."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.metrics import EmptyPolicy, case_metrics, summarize
from pipeline.evaluation.plots import Overlay, choose_slices
from pipeline.evaluation.report import build_report, case_ranking, pick_cases, write_report

LABELS = {0: "background", 1: "organ", 2: "lesion"}
IMG_RE = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')
RED = np.array([230, 25, 75])  # CLASS_COLOURS[0], the "organ" contours


def _volume(rng: np.random.Generator, shift: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 32x28x6 image with a two-class reference and a shifted prediction."""
    image = rng.normal(100, 10, size=(32, 28, 6)).astype(np.float32)
    ref = np.zeros(image.shape, np.uint8)
    ref[8:22, 6:20, 1:5] = 1
    ref[12:16, 10:14, 2:4] = 2
    image[ref > 0] += 60
    pred = np.roll(ref, shift, axis=0)
    return image, ref, pred


@pytest.fixture(scope="module")
def study() -> dict:
    """Per-case table, summary, train log and overlays of 5 synthetic cases (shifts 0..4 voxels)."""
    rng = np.random.default_rng(0)
    rows, volumes = [], {}
    for shift in range(5):
        cid = f"case_{shift}"
        image, ref, pred = _volume(rng, shift)
        volumes[cid] = (image, ref, pred)
        for m in case_metrics(pred, ref, (1.0, 1.0, 2.5), LABELS):
            rows.append({"case_id": cid, "image_file": f"{cid}.nii.gz", "label_sha256": "ab" * 32, **m})
    per_case = pd.DataFrame(rows)
    summary = summarize(per_case, n_bootstrap=200, seed=0, policy=EmptyPolicy())
    summary["n_cases"] = 5
    log = pd.DataFrame(
        {
            "epoch": range(6),
            "train_loss": np.linspace(1.2, 0.3, 6),
            "lr": np.linspace(1e-3, 1e-4, 6),
            "val_dice_organ": [0.2, np.nan, 0.5, np.nan, 0.7, 0.8],
            "val_dice_lesion": [0.1, np.nan, 0.3, np.nan, 0.5, 0.6],
            "val_dice_mean": [0.15, np.nan, 0.4, np.nan, 0.6, 0.7],
        }
    )
    chosen = pick_cases(per_case)
    mean_dice = case_ranking(per_case).set_index("case_id")["mean_dice"]
    overlays = [Overlay(role, cid, *volumes[cid], (1.0, 1.0, 2.5), mean_dice[cid]) for role, cid in chosen.items()]
    config = {"evaluate": {"seed": 0, "note": "<script>alert(1)</script>"}, "train": {"epochs": 6}}
    lineage = {"lineage.git.commit": "0" * 40, "lineage.dvc.out.models/model": "abc.dir", "lineage.device": "cpu"}
    return {
        "per_case": per_case,
        "summary": summary,
        "train_log": log,
        "overlays": overlays,
        "config": config,
        "lineage": lineage,
        "chosen": chosen,
    }


def _report(study: dict, **kw) -> str:
    args = {k: study[k] for k in ("config", "lineage", "train_log", "overlays")}
    return build_report(study["per_case"], study["summary"], **{**args, "class_names": LABELS, **kw})


def test_pick_cases_by_mean_dice(study: dict) -> None:
    # shift 0 is perfect, larger shifts are worse: best/median/worst are shifts 0, 2, 4
    assert study["chosen"] == {"best": "case_0", "median": "case_2", "worst": "case_4"}
    two = study["per_case"][study["per_case"].case_id.isin(["case_0", "case_1"])]
    assert pick_cases(two) == {"best": "case_0", "worst": "case_1"}  # a case takes one role only
    assert pick_cases(two[two.case_id == "case_1"]) == {"best": "case_1"}


def test_choose_slices_through_reference_foreground() -> None:
    ref = np.zeros((10, 10, 20), np.uint8)
    ref[3:6, 3:6, 8:15] = 1
    slices = choose_slices(ref, np.zeros_like(ref), axis=2, n=3)
    assert len(slices) == 3 and all(8 <= s < 15 for s in slices) and slices == sorted(set(slices))
    pred = np.zeros_like(ref)
    pred[..., 17] = 1  # reference empty: follow the prediction
    assert choose_slices(np.zeros_like(ref), pred, axis=2, n=3) == [17]
    assert choose_slices(np.zeros_like(ref), np.zeros_like(ref), axis=2, n=3) == [9, 10, 11]


def test_report_is_self_contained(study: dict) -> None:
    text = _report(study)
    images = IMG_RE.findall(text)
    alts = [alt for alt, _ in images]
    assert "learning curves" in alts and "metric distributions" in alts
    assert sum(alt.startswith("overlay ") for alt in alts) == 3
    assert all(b64.startswith("iVBORw0KGgo") for _, b64 in images)  # PNG signature
    assert not re.search(r"https?://", text)  # nothing to fetch
    assert not re.search(r"<(script|link)\b", text, re.I)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # config values are escaped
    assert "Content-Security-Policy" in text
    for needle in ("Worst cases", "case_4", "0" * 40, "models/model", "both_empty = 1.000", "seed 0"):
        assert needle in text


def test_report_without_log_or_overlays(study: dict) -> None:
    text = _report(study, train_log=None, overlays=(), config=None, lineage=None)
    assert "No training log available" in text and "No overlays" in text
    assert len(IMG_RE.findall(text)) == 1  # the metric distributions only


def test_report_of_2d_pictures_says_pixels_and_draws_the_picture(study: dict) -> None:
    image, ref, pred = (a[:, :, 2] for a in _volume(np.random.default_rng(1), 1))
    picture = Overlay("best", "photo", image, ref, pred, (1.0, 1.0), 0.9, picture=True)
    summary = {**study["summary"], "physical_spacing": False}
    text = build_report(study["per_case"], summary, overlays=[picture], class_names=LABELS)
    assert "no physical spacing" in text and "in pixels" in text
    assert len(IMG_RE.findall(text)) == 2  # metric distributions + the picture
    assert "in pixels" not in _report(study)


def test_report_lists_every_setting_with_its_source_and_a_wall_clock_stop(study: dict) -> None:
    settings = {
        "patch_size": {"value": [40, 56, 40], "source": "planned", "reason": "median shape within 4 GB"},
        "batch_size": {"value": 3, "source": "overridden", "reason": "set in the config"},
    }
    stopped = {"epochs_planned": 94, "epochs_run": 29, "stopped_by_max_minutes": True}
    text = _report(study, settings=settings, training=stopped)
    assert "The plan" in text and "[40, 56, 40]" in text and "median shape within 4 GB" in text
    assert re.search(r"batch_size</td><td[^>]*>3</td><td[^>]*>overridden", text)
    assert "after 29 of 94 epochs" in text
    done = _report(study, settings=settings, training={**stopped, "epochs_run": 94, "stopped_by_max_minutes": False})
    assert "Trained the 94 epochs of the plan" in done and "Stopped by the wall clock" not in done


def test_dollar_and_tex_in_label_and_case_names_are_drawn_as_text(study: dict) -> None:
    """A ``$`` in a label or case name used to be parsed as matplotlib math text and crash the report."""
    names = {0: "background", 1: "tumour (core) $\\frac{$", 2: "CD4+ $x^$"}
    case = "case$_{1"
    log = study["train_log"].rename(columns={"val_dice_organ": f"val_dice_{names[1]}", "val_dice_lesion": "val_dice_$"})
    per_case = study["per_case"].assign(
        case_id=lambda d: d.case_id.replace("case_4", case),
        class_name=lambda d: d.class_name.map({"organ": names[1], "lesion": names[2]}),
    )
    first = study["overlays"][0]
    overlays = [Overlay(first.role, case, first.image, first.reference, first.prediction, first.spacing, 0.5)]
    text = build_report(per_case, study["summary"], train_log=log, overlays=overlays, class_names=names)
    assert len(IMG_RE.findall(text)) == 3  # learning curves, metric distributions, one overlay
    assert "case$_{1" in text and "CD4+ $x^$" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (CI installs it in .ci/run: apt-get install chromium)"
)


def screenshot(html_path: Path, work_dir: Path, height: int = 3000) -> np.ndarray:
    """RGB pixels (height x 1200) of ``html_path`` rendered by headless Chromium with no network."""
    from PIL import Image

    work_dir.mkdir(parents=True, exist_ok=True)
    shot = work_dir / "shot.png"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # any network lookup would fail
        f"--user-data-dir={work_dir / 'profile'}",
        f"--screenshot={shot}",
        f"--window-size=1200,{height}",
        html_path.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot: rc={proc.returncode}\n{proc.stderr[-2000:]}"
    return np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)


def assert_not_blank(pixels: np.ndarray) -> None:
    distinct = np.unique(pixels.reshape(-1, 3), axis=0).shape[0]
    assert distinct > 500, f"screenshot looks blank ({distinct} colours)"
    non_white = np.mean(np.any(pixels < 240, axis=-1))
    assert non_white > 0.05, f"screenshot mostly empty ({non_white:.1%} non-white)"


@needs_chromium
def test_report_renders_offline_in_headless_chromium(study: dict, tmp_path: Path) -> None:
    html_path = write_report(
        tmp_path / "report.html",
        study["per_case"],
        study["summary"],
        **{k: study[k] for k in ("config", "lineage", "train_log", "overlays")},
        class_names=LABELS,
    )
    pixels = screenshot(html_path, tmp_path)
    assert pixels.shape[:2] == (3000, 1200)
    assert_not_blank(pixels)
    # the last third of this page holds the overlays: noisy grey images with red organ contours
    bottom = pixels[2000:]
    red = np.all(np.abs(bottom - RED) < 40, axis=-1)
    assert red.sum() > 200, f"no red contour pixels in the overlays ({red.sum()})"
    grey = (bottom[..., 0] == bottom[..., 1]) & (bottom[..., 1] == bottom[..., 2])
    mid_grey = grey & (bottom[..., 0] > 30) & (bottom[..., 0] < 220)  # image pixels; text alone gives < 10%
    assert mid_grey.mean() > 0.2, f"no grey-level images in the overlays ({mid_grey.mean():.1%} mid-grey)"
