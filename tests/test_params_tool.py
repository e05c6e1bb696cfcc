"""The recipe-to-params command (pipeline.tools.params)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.config import Config, load, to_dict
from pipeline.tools import params

ROOT = Path(__file__).resolve().parents[1]


def test_the_hippocampus_recipe_becomes_a_full_params_file_dvc_can_interpolate(tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    assert params.main([str(ROOT / "configs" / "hippocampus.yaml"), "--out", str(out)]) == 0
    written = yaml.safe_load(out.read_text())
    assert set(written) == set(to_dict(Config()))  # every block, as dvc.yaml needs
    assert written["synthetic"]["out_dir"] == Config().synthetic.out_dir
    assert written["train"]["epochs"] == 94 and written["train"]["val_every"] == 5  # the recipe's values
    assert to_dict(load(out)) == to_dict(load(ROOT / "configs" / "hippocampus.yaml"))


def test_a_mistyped_recipe_writes_nothing(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  epoch: 3\n")
    assert params.main([str(recipe), "--out", str(tmp_path / "out.yaml")]) == 2
    assert "unknown key(s) in 'train': epoch" in capsys.readouterr().out and not (tmp_path / "out.yaml").exists()
