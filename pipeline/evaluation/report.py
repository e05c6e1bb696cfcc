"""A self-contained HTML report of one evaluation: config and lineage, learning curves, metric
distributions, the worst cases and contour overlays of the best, median and worst cases.

The figures come from :mod:`pipeline.evaluation.plots` as base64 PNG; the page has no external CSS, JS, fonts
or images, and a Content-Security-Policy that forbids any network fetch, so it opens offline.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pipeline.core import io
from pipeline.evaluation.metrics import SUMMARY_KEYS
from pipeline.evaluation.plots import (
    METRIC_LABELS,
    Overlay,
    learning_curves_png,
    metric_distributions_png,
    overlay_png,
)

logger = logging.getLogger(__name__)

__all__ = ["build_report", "case_ranking", "pick_cases", "write_report"]

SUMMARY_STATS: tuple[str, ...] = ("mean", "std", "median", "iqr", "min", "max")
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 1.5em auto;
       max-width: 1150px; color: #222; background: #fff; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
pre { background: #f7f7f7; padding: .8em; font-size: .8em; overflow-x: auto; max-height: 30em; }
img { max-width: 100%; display: block; margin: .5em 0; }
.note { color: #666; font-size: .9em; }
details summary { cursor: pointer; font-weight: 600; }
"""


# ---------------------------------------------------------------- case selection


def case_ranking(per_case: pd.DataFrame) -> pd.DataFrame:
    """Cases sorted by mean Dice over classes (ascending, ties by case id): ``case_id, mean_dice``."""
    dice = pd.to_numeric(per_case["dice"], errors="coerce")
    ranking = (
        pd.DataFrame({"case_id": per_case["case_id"].astype(str), "dice": dice})
        .groupby("case_id", sort=False)["dice"]
        .mean()
        .rename("mean_dice")
        .reset_index()
    )
    ranking = ranking.dropna(subset=["mean_dice"])
    return ranking.sort_values(["mean_dice", "case_id"], kind="mergesort").reset_index(drop=True)


def pick_cases(per_case: pd.DataFrame) -> dict[str, str]:
    """``{"best": id, "median": id, "worst": id}`` by mean Dice over classes; fewer keys if fewer cases.

    The median case is the lower middle of the ranking; a case appears under one role only
    (best first, then worst, then median).
    """
    ids = case_ranking(per_case)["case_id"].tolist()
    if not ids:
        return {}
    best, worst, median = ids[-1], ids[0], ids[(len(ids) - 1) // 2]
    chosen = {"best": best}
    if median not in (best, worst):
        chosen["median"] = median
    if worst != best:
        chosen["worst"] = worst
    return chosen


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "–" if not math.isfinite(float(x)) else f"{float(x):.{digits}f}"
    return _e(x)


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """HTML table; the first ``left`` columns are left-aligned text."""
    head = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="l">{_fmt(v)}</td>' if i < left else f"<td>{_fmt(v)}</td>" for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _summary_section(summary: Mapping[str, Any]) -> str:
    rows = []
    for cls, stats in summary.items():
        if not isinstance(stats, Mapping) or cls in SUMMARY_KEYS:
            continue
        for metric, s in stats.items():
            if not isinstance(s, Mapping):
                continue
            ci = (s.get("ci95_low"), s.get("ci95_high"))
            ci_text = "–" if None in ci else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"
            rows.append(
                [cls, METRIC_LABELS.get(metric, metric), *(s.get(k) for k in SUMMARY_STATS), ci_text, s.get("n")]
            )
    boot = summary.get("bootstrap", {})
    policy = summary.get("empty_policy")
    parts = [
        "<h2>Summary</h2>",
        f"<p>Mean Dice over classes: <b>{_fmt(summary.get('mean_dice'), 4)}</b>"
        f" &middot; cases: {_fmt(summary.get('n_cases'))}"
        f" &middot; bootstrap: {_fmt(boot.get('n'))} resamples, seed {_fmt(boot.get('seed'))}</p>",
        _table(["class", "metric", *SUMMARY_STATS, "95% CI of mean", "n"], rows, left=2),
    ]
    parts.append(_per_group_part(summary.get("per_group")))
    if policy:
        desc = ", ".join(f"{k} = {_fmt(policy.get(k))}" for k in ("both_empty", "ref_empty_only", "pred_empty_only"))
        parts.append(
            f'<p class="note">Empty-mask policy for {_e(", ".join(policy.get("applies_to", [])))}: {desc};'
            " distances are missing when either mask is empty.</p>"
        )
    return "\n".join(parts)


def _per_group_part(per_group: Mapping[str, Any] | None) -> str:
    """Dice per group (voxels pooled over the group's cases), when groups hold several cases."""
    if not per_group:
        return ""
    rows = []
    for cls, stats in per_group.items():
        if isinstance(stats, Mapping) and cls not in SUMMARY_KEYS:
            s = stats["dice"]
            ci = f"[{_fmt(s.get('ci95_low'))}, {_fmt(s.get('ci95_high'))}]"
            rows.append([cls, *(s.get(k) for k in SUMMARY_STATS), ci])
    return (
        f"<p>Per group (patient or site; voxels pooled over the group's cases, as a patient's Dice over "
        f"their stacked slices): mean Dice <b>{_fmt(per_group.get('mean_dice'), 4)}</b> over "
        f"{_fmt(per_group.get('n_groups'))} groups.</p>" + _table(["class", *SUMMARY_STATS, "95% CI of mean"], rows)
    )


def _worst_section(per_case: pd.DataFrame, n_worst: int) -> str:
    ranking = case_ranking(per_case)
    worst = ranking.head(n_worst)
    classes = list(dict.fromkeys(per_case["class_name"].astype(str)))
    by = per_case.assign(case_id=per_case["case_id"].astype(str), class_name=per_case["class_name"].astype(str))
    by = by.set_index(["case_id", "class_name"])
    rows = []
    for cid, mean_dice in zip(worst["case_id"], worst["mean_dice"], strict=True):
        first = by.loc[cid].iloc[0]
        row: list[Any] = [cid, mean_dice]
        for metric in ("dice", "hd95_mm"):
            for cls in classes:
                row.append(by.loc[(cid, cls), metric] if (cid, cls) in by.index else None)
        row += [first.get("image_file"), str(first.get("label_sha256", ""))[:12]]
        rows.append(row)
    header = ["case", "mean Dice"]
    header += [f"Dice {c}" for c in classes] + [f"HD95 {c} (mm)" for c in classes]
    header += ["image file", "label SHA-256"]
    table = _table(header, rows)
    return f"<h2>Worst cases</h2><p class='note'>The {len(rows)} cases with the lowest mean Dice.</p>{table}"


def _plan_section(settings: Mapping[str, Any] | None, training: Mapping[str, Any] | None) -> str:
    """The model's settings (planned or overridden, with the reason) and how its training ended."""
    parts = ["<h2>The plan</h2>"]
    if training:
        run, planned = training.get("epochs_run"), training.get("epochs_planned")
        if training.get("stopped_by_max_minutes"):
            note = f"Stopped by the wall clock (train.max_minutes) after {run} of {planned} epochs: not reproducible."
        else:
            note = f"Trained the {planned} epochs of the plan."
        parts.append(f'<p class="note">{_e(note)}</p>')
    if settings:
        rows = [[k, json.dumps(v.get("value")), v.get("source", ""), v.get("reason", "")] for k, v in settings.items()]
        parts.append(_table(["setting", "value", "source", "reason"], rows, left=4))
    else:
        parts.append('<p class="note">The model folder records no planned settings.</p>')
    return "\n".join(parts)


def _config_section(config: Mapping[str, Any] | None, lineage: Mapping[str, Any] | None) -> str:
    parts = ["<h2>Lineage and configuration</h2>"]
    if lineage:
        rows = [[k.removeprefix("lineage."), v] for k, v in sorted(lineage.items())]
        parts.append(_table(["tag", "value"], rows, left=2))
    else:
        parts.append('<p class="note">No lineage recorded.</p>')
    if config:
        text = yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)
        parts.append(f"<details><summary>configuration</summary><pre>{_e(text)}</pre></details>")
    return "\n".join(parts)


OVERLAY_NOTE = (
    '<p class="note">Reference contours solid, prediction contours dashed; slices through the reference'
    " foreground along the coarsest axis.</p>"
)


def build_report(
    per_case: pd.DataFrame,
    summary: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
    train_log: pd.DataFrame | None = None,
    overlays: Iterable[Overlay] = (),
    class_names: Mapping[int, str] | None = None,
    title: str = "Segmentation evaluation report",
    n_worst: int = 10,
    settings: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    extra_sections: Sequence[str] = (),
) -> str:
    """The whole report as one HTML string (images embedded, nothing fetched).

    ``per_case`` is the table of :func:`pipeline.evaluation.metrics.case_metrics` rows (with ``case_id`` and the
    provenance columns), ``summary`` the dict of :func:`pipeline.evaluation.metrics.summarize`, ``train_log``
    the learning-curve table (may be None), ``overlays`` the cases to draw (any iterable: a generator
    keeps one case's volumes in memory at a time), ``class_names`` the label index -> name mapping
    (derived from ``per_case`` when omitted), ``settings`` and ``training`` the model folder's planned
    settings and run record (``model.json``), ``extra_sections`` HTML placed after the summary (the methods
    paragraph, the cross-validation table and the ensemble row of :mod:`pipeline.evaluation.methods`).
    """
    if class_names is None:
        class_names = _class_names(per_case)
    sections = [f"<h1>{_e(title)}</h1>", _summary_section(summary)]
    if summary.get("physical_spacing") is False:
        sections.append(
            '<p class="note">The images are 2D pictures with no physical spacing: HD95, ASSD and the NSD '
            "tolerance are in pixels (labelled mm), volumes in thousands of pixels (labelled mL).</p>"
        )
    sections += [x for x in extra_sections if x]
    has_log = train_log is not None and not train_log.empty
    curves = [_img(learning_curves_png(train_log), "learning curves")] if has_log else []
    sections += _section("Learning curves", curves, "No training log available.")
    by_class = []
    if not per_case.empty:
        by_class = [_img(metric_distributions_png(per_case), "metric distributions"), _worst_section(per_case, n_worst)]
    sections += _section("Per-case metrics by class", by_class, "No cases.")
    drawn = [_img(overlay_png(ov, class_names), f"overlay {ov.role} {ov.case_id}") for ov in overlays]
    sections += _section("Overlays", [OVERLAY_NOTE, *drawn] if drawn else [], "No overlays.")
    if settings is not None or training is not None:
        sections.append(_plan_section(settings, training))
    sections.append(_config_section(config, lineage))
    return _page(title, "\n".join(sections))


def _class_names(per_case: pd.DataFrame) -> dict[int, str]:
    """Label index -> name from the per-case table (empty without a ``class_index`` column)."""
    if "class_index" not in per_case:
        return {}
    pairs = per_case[["class_index", "class_name"]].drop_duplicates()
    return {int(i): str(n) for i, n in pairs.itertuples(index=False)}


def _section(heading: str, parts: list[str], empty: str) -> list[str]:
    """A heading and its parts, or the ``empty`` note when there are none."""
    return [f"<h2>{heading}</h2>", *(parts or [f'<p class="note">{empty}</p>'])]


def _page(title: str, body: str) -> str:
    """The self-contained HTML page (inline style, a content security policy that fetches nothing)."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def write_report(path: str | Path, *args: Any, **kwargs: Any) -> Path:
    """:func:`build_report` written atomically to ``path``; returns the path."""
    text = build_report(*args, **kwargs)
    out = io.write_text(path, text)
    logger.info("report written to %s (%.0f kB)", out, len(text) / 1024)
    return out
