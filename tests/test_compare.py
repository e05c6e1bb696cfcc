"""Tests for pipeline.evaluation.compare: paired differences, CI, Wilcoxon, CLI, and the MLflow and DVC inputs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.compare import CompareError, compare, load_per_case, paired_differences, wilcoxon_p
from pipeline.tools.compare import main

CLASSES = ("organ", "lesion")


def _per_case(seed: int, offset: float = 0.0, n: int = 20) -> pd.DataFrame:
    """A per-case table as a run with this seed might give: case effects shared, noise per seed."""
    case_effect = np.random.default_rng(123).uniform(0.6, 0.9, size=n)
    rng = np.random.default_rng(seed)
    rows = []
    for cls in CLASSES:
        for i in range(n):
            dice = float(np.clip(case_effect[i] + offset + rng.normal(0, 0.02), 0, 1))
            rows.append(
                {
                    "case_id": f"case_{i:03d}",
                    "class_name": cls,
                    "dice": dice,
                    "iou": dice / (2 - dice),
                    "nsd": dice,
                    "hd95_mm": 10 * (1 - dice),
                    "assd_mm": 3 * (1 - dice),
                }
            )
    return pd.DataFrame(rows).sample(frac=1, random_state=seed)  # row order differs between runs


def test_paired_table_per_class_and_metric() -> None:
    a, b = _per_case(seed=0), _per_case(seed=1, offset=0.05)
    table, pairs = compare(a, b, n_bootstrap=500, seed=0)
    assert len(pairs) == 40 and set(table.class_name) == set(CLASSES)
    assert set(table.metric) == {"dice", "iou", "nsd", "hd95_mm", "assd_mm"}
    dice = table[table.metric == "dice"].set_index("class_name")
    for cls in CLASSES:
        row = dice.loc[cls]
        assert row.n_pairs == 20
        assert row.mean_diff == pytest.approx(row.mean_b - row.mean_a)
        assert row.ci95_low < row.mean_diff < row.ci95_high
        assert 0.03 < row.mean_diff < 0.07 and row.ci95_low > 0  # B is better, and the CI says so
        assert row.wilcoxon_p < 1e-3
    # the per-case differences are B - A for the same case and class
    one = pairs[(pairs.case_id == "case_005") & (pairs.class_name == "lesion")].iloc[0]
    a_val = a[(a.case_id == "case_005") & (a.class_name == "lesion")].dice.iloc[0]
    b_val = b[(b.case_id == "case_005") & (b.class_name == "lesion")].dice.iloc[0]
    assert one.dice_diff == pytest.approx(b_val - a_val)
    # seeded bootstrap: same seed, same CI
    again, _ = compare(a, b, n_bootstrap=500, seed=0)
    pd.testing.assert_frame_equal(table, again)


def test_same_run_twice_is_no_difference() -> None:
    a = _per_case(seed=0)
    table, _ = compare(a, a, metrics=["dice"], n_bootstrap=100)
    assert (table.mean_diff == 0).all() and (table.wilcoxon_p == 1.0).all()


def test_wilcoxon_p_edge_cases() -> None:
    assert np.isnan(wilcoxon_p(np.array([np.nan, np.nan])))
    assert wilcoxon_p(np.zeros(5)) == 1.0
    assert wilcoxon_p(np.array([0.1, 0.2, np.nan, 0.15, 0.3, 0.05, 0.12])) < 0.05


def test_unpaired_and_missing_values(tmp_path: Path) -> None:
    a, b = _per_case(seed=0), _per_case(seed=1)
    b = b[b.case_id != "case_000"].copy()  # B lacks one case
    b.loc[(b.case_id == "case_001") & (b.class_name == "organ"), "hd95_mm"] = np.nan
    pairs = paired_differences(a, b)
    assert len(pairs) == 38
    table, _ = compare(a, b, n_bootstrap=100)
    hd = table[(table.metric == "hd95_mm")].set_index("class_name")
    assert hd.loc["organ"].n_pairs == 18 and hd.loc["lesion"].n_pairs == 19
    pd.concat([a, a.head(1)]).to_csv(tmp_path / "per_case.csv", index=False)
    with pytest.raises(CompareError, match="not unique"):
        load_per_case(tmp_path)


def test_cli_prints_table_and_writes_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, seed, offset in (("seed0", 0, 0.0), ("seed1", 1, 0.05)):
        (tmp_path / name).mkdir()
        _per_case(seed, offset).to_csv(tmp_path / name / "per_case.csv", index=False)
    out = tmp_path / "cmp" / "compare.csv"
    rc = main([str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--out", str(out), "--n-bootstrap", "300"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "wilcoxon_p" in printed and "95% CI (B - A)" in printed
    assert sum(line.split()[:2] == ["organ", "dice"] for line in printed.splitlines()) == 1
    table = pd.read_csv(out)
    assert len(table) == 2 * 5 and {"mean_diff", "ci95_low", "ci95_high", "wilcoxon_p", "seed"} <= set(table.columns)
    pairs = pd.read_csv(tmp_path / "cmp" / "compare_pairs.csv")
    assert len(pairs) == 40 and "dice_diff" in pairs.columns


def test_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope"), str(tmp_path), "--out", str(tmp_path / "c.csv")]) == 2
    assert "no per_case.csv" in capsys.readouterr().err


def test_mlflow_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs in a temporary SQLite store: one with the CSV artifact, one with only the table artifact."""
    from pipeline.config import MlflowConfig
    from pipeline.evaluation.tracking import run

    monkeypatch.chdir(tmp_path)  # the store's default artifact root is ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = MlflowConfig(tracking_uri=uri, experiment="compare-test")
    a, b = _per_case(seed=0), _per_case(seed=1, offset=-0.05)
    with run(cfg, run_name="seed0") as tracker:
        a.to_csv(tmp_path / "per_case.csv", index=False)
        tracker.log_artifact(tmp_path / "per_case.csv", "evaluation")
        run_a = tracker.run_id
    with run(cfg, run_name="seed1") as tracker:
        tracker.log_table(b, "evaluation/per_case_table.json")
        run_b = tracker.run_id
    loaded = load_per_case(f"runs:/{run_b}", tracking_uri=uri)
    assert len(loaded) == 40
    pd.testing.assert_series_equal(
        loaded.set_index(["case_id", "class_name"]).dice.sort_index(),
        b.set_index(["case_id", "class_name"]).dice.sort_index(),
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the environment names the store
    rc = main([f"mlflow:{run_a}", f"runs:/{run_b}", "--out", str(tmp_path / "c.csv"), "--n-bootstrap", "200"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"mlflow:{run_a}" in printed and "lesion" in printed
    table = pd.read_csv(tmp_path / "c.csv")
    assert (table[table.metric == "dice"].mean_diff < 0).all()
    with pytest.raises(CompareError, match="no such run"):
        load_per_case("mlflow:0123456789abcdef", tracking_uri=uri)


def test_dvc_revisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dvc:<rev>`` reads metrics/per_case.csv as committed (as in a DVC experiment's commit)."""

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True)

    git("init", "-q")
    (tmp_path / "metrics").mkdir()
    for seed in (0, 1):
        _per_case(seed, offset=0.05 * seed).to_csv(tmp_path / "metrics" / "per_case.csv", index=False)
        git("add", "-A")
        git("commit", "-q", "-m", f"seed {seed}")
    monkeypatch.chdir(tmp_path)
    table, _ = compare(load_per_case("dvc:HEAD~1"), load_per_case("dvc:HEAD"), metrics=["dice"], n_bootstrap=100)
    assert (table.mean_diff > 0.03).all()
    with pytest.raises(CompareError, match="dvc:nope"):
        load_per_case("dvc:nope")
