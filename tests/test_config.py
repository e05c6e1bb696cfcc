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
