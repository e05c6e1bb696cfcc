from pathlib import Path

import pytest

from pipeline.config import Config, ConfigError, flatten, from_dict, load, to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_default_params_file_loads() -> None:
    cfg = load(ROOT / "configs" / "params.yaml")
    assert isinstance(cfg, Config)
    assert cfg.sample.mode in ("2d", "3d", None)  # None: planned from the data
    assert cfg.preprocess.target_spacing is None and cfg.train.epochs is None  # planned


def test_hippocampus_recipe_loads_and_only_overrides() -> None:
    cfg = load(ROOT / "configs" / "hippocampus.yaml")
    assert cfg.train.epochs == 94 and cfg.sample.patch_size is None and cfg.train.batch_size is None


#: keys the default study sets apart from config.py's defaults, and why
STUDY_SETTINGS: dict[str, str] = {}


def test_params_file_and_config_defaults_agree() -> None:
    """config.py is the one home of defaults: configs/params.yaml repeats them (every key, same value)."""
    import yaml

    params = flatten(yaml.safe_load((ROOT / "configs" / "params.yaml").read_text()))
    defaults = flatten(to_dict(Config()))
    assert sorted(params) == sorted(defaults), "params.yaml and config.py list different keys"
    differ = {k: (params[k], defaults[k]) for k in defaults if params[k] != defaults[k] and k not in STUDY_SETTINGS}
    assert not differ, f"params.yaml differs from config.py defaults (value in params.yaml, in config.py): {differ}"
    assert all(params[k] != defaults[k] for k in STUDY_SETTINGS), "a listed study setting equals the default"


def test_predictor_takes_its_inference_defaults_from_config() -> None:
    import torch
    from conftest import plan_dict

    from pipeline.config import InferenceConfig
    from pipeline.inference.predictor import Predictor

    meta = {
        "spatial_dims": 3,
        "num_classes": 2,
        "plan": plan_dict((1, 1, 1), {0: "bg", 1: "fg"}),
        "patch_size": [8, 8, 8],
    }
    predictor = Predictor(model=torch.nn.Conv3d(1, 2, 1), meta=meta, device="cpu")
    defaults = InferenceConfig()
    assert predictor.inferer.sw_batch_size == defaults.sw_batch_size and predictor.inferer.overlap == defaults.overlap
    assert predictor.half_precision_voxels == defaults.half_precision_voxels
    assert defaults.mirror_tta and len(predictor.mirror) == 7  # every flip of 3 axes but the identity


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"p.yaml.*unknown key.*'train'.*epocs"):
        load(p)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"train": {"epochs": "ten"}}, "train.epochs: expected an integer"),
        ({"train": {"epochs": 2.5}}, "train.epochs: expected an integer"),
        ({"train": {"augment": "yes"}}, "train.augment: expected true/false"),
        ({"sample": {"mode": "4d"}}, r"sample.mode: '4d' is not one of"),
        ({"sample": {"patch_size": [32, "a"]}}, r"sample.patch_size\[1\]: expected an integer"),
        ({"sample": {"patch_size_3d": [32, 32, 8]}}, "unknown key.*patch_size_3d"),  # one knob: sample.patch_size
        ({"train": {"model": {"name": "resnet"}}}, "train.model.name"),
        ({"train": []}, "train: expected a mapping"),
        ({"preprocess": {"target_spacing": "1mm"}}, "preprocess.target_spacing"),
        ({"train": {"flip_axes": [0, 3]}}, r"train.flip_axes\[1\]: 3 is not one of \[0, 1, 2\]"),
        ({"train": {"inference": {"mirror_axes": 0}}}, "train.inference.mirror_axes: expected a list"),
        (
            {"sample": {"fold": "first"}},
            r"sample.fold: 'first' fits none of the allowed forms \(expected an integer, got 'first'; "
            r"'first' is not one of \['all'\]\)",
        ),
        ({"train": {"model": {"activation": "gelu"}}}, r"train.model.activation: 'gelu' is not one of"),
    ],
)
def test_wrong_types_are_errors(data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        from_dict(data)


def test_nullable_and_numeric_coercion() -> None:
    cfg = from_dict({"preprocess": {"target_spacing": None}, "train": {"lr": 1, "max_minutes": 20}})
    assert cfg.preprocess.target_spacing is None
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_minutes == 20.0


def test_frozen_and_round_trip() -> None:
    cfg = from_dict({"sample": {"mode": "3d"}})
    with pytest.raises(AttributeError):
        cfg.sample.mode = "2d"  # type: ignore[misc]
    assert from_dict(to_dict(cfg)) == cfg
    flat = flatten(to_dict(cfg))
    assert flat["sample.mode"] == "3d" and flat["train.model.name"] == cfg.train.model.name


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)


@pytest.mark.parametrize("stage", ["preprocess", "sample", "train"])
def test_a_stage_given_a_bad_setting_prints_one_line_and_no_traceback(tmp_path: Path, stage: str) -> None:
    import subprocess
    import sys

    config = tmp_path / "params.yaml"
    config.write_text("train:\n  epochz: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", f"pipeline.stages.{stage}", "--config", str(config)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {config}: unknown key(s) in 'train': epochz")
