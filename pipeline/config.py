"""One typed, validated configuration for every stage.

The params file (``configs/params.yaml`` by default) has one block per stage. ``load`` turns it into
frozen dataclasses; an unknown key, a missing block or a value of the wrong type is a
:class:`ConfigError` naming the file and the dotted key. Library code receives these objects (or
plain values from them) and never reads the params file itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

DEFAULT_CONFIG = Path("configs/params.yaml")


class ConfigError(ValueError):
    """A params file that does not match the schema."""


@dataclass(frozen=True)
class DicomConfig:
    """Which series of a DICOM folder is the scan (see :mod:`pipeline.core.dicom_series`); unset: the only one."""

    modality: str | None = None  # keep series of this Modality (e.g. MR, CT)
    description: str | None = None  # keep series whose SeriesDescription matches this regex (case-insensitive)
    largest: bool = False  # several left: take the one with the most slices


@dataclass(frozen=True)
class DataConfig:
    """Where the raw dataset lives and how it is laid out."""

    root: str = "data/raw/synthetic"
    layout: Literal["auto", "msd", "folder", "csv"] = "auto"  # auto: detect (as validate does)
    manifest: str | None = None  # CSV with case_id,image,label (layout "csv")
    dicom: DicomConfig = field(default_factory=DicomConfig)  # series rule for images that are DICOM folders
    # input channels by name, in this order, where files name them (<case>_flair, BIDS suffixes, p1/t1.nii.gz); others
    # are not read (ISLES's FLAIR on another grid than DWI/ADC); None: every channel the files name
    channels: tuple[str, ...] | None = None
    # largest voxel count (all channels) one file may declare; bounds the memory a header can claim
    max_voxels: int = 2**29  # 512x512x2048: a whole-body CT fits; a gzip bomb of zeros does not


@dataclass(frozen=True)
class SyntheticConfig:
    """The embedded default dataset, generated when no data is given."""

    out_dir: str = "data/raw/synthetic"
    n_cases: int = 24
    seed: int = 0
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5)


@dataclass(frozen=True)
class PreprocessConfig:
    """Fingerprint the dataset, plan, then reorient, resample, crop and normalise every case.

    Spacing and normalisation are planned here (None / auto: from the data, :mod:`pipeline.preprocessing.planner`);
    the training settings the plan also holds have their knobs in ``sample`` and ``train`` (None: planned,
    :mod:`pipeline.preprocessing.settings`).
    """

    out_dir: str = "data/preprocessed"
    target_spacing: tuple[float, float, float] | None = None  # None: median (anisotropic: see below)
    # auto: per channel by dataset.json modality ("CT": clip + z-score with dataset stats, else per-image z-score,
    # inside the body when its crop box keeps < 75% of the image); zscore_body: per-image z-score inside the body
    normalization: Literal["auto", "zscore", "zscore_body", "ct", "none"] = "auto"
    crop_foreground: bool = True
    workers: int = 2  # processes for fingerprinting and preprocessing
    anisotropy_threshold: float = 3.0  # coarsest / finest median spacing above this: anisotropic
    anisotropic_percentile: float = 10.0  # anisotropic: the slow axis takes this percentile of its spacings
    image_interp: Literal["linear", "spline"] = "linear"  # image (in-plane when anisotropic)
    slow_axis_interp: Literal["linear", "nearest", "spline"] = "linear"  # image along the slow axis
    label_interp: Literal["nearest", "linear"] = "nearest"  # linear: one-hot linear, then arg-max
    foreground_samples: int = 10_000  # foreground voxels sampled per case for the intensity statistics
    ct_clip: tuple[float, float] | None = None  # CT channels: clip window (None: foreground 0.5-99.5 percentiles)
    ct_mean_std: tuple[float, float] | None = None  # CT channels: z-score mean, std (None: clipped foreground)
    memory_budget_gb: float = 4.0  # activation memory of one training batch (patch and batch planning)
    # 2D pictures (no physical spacing): bring every picture to the median picture's size (None: planned, when
    # the structures grow with the picture; see pipeline/preprocessing/pictures.py)
    picture_scale: bool | None = None


@dataclass(frozen=True)
class SplitConfig:
    """Case-level test hold-out and cross-validation folds, made by the preprocess stage before planning.

    Cases sharing a ``group`` (manifest column or dataset.json entry key) stay together; see
    :mod:`pipeline.core.splits`.
    """

    file: str = "data/splits.json"  # written once, reused while cases, groups and these settings match
    test_fraction: float = 0.25
    dataset_test: bool = True  # the dataset's own labelled test cases are the test set (test_fraction unused)
    folds: int = 5
    seed: int = 0


@dataclass(frozen=True)
class CvConfig:
    """The folds ``dvc repro`` trains (stages ``sample@k``, ``train@k``, ``crossval@k``); ``[0]``: one, the cheap
    default; every fold of ``split.folds``: a cross-validation, pooled out of fold, and a test-set ensemble."""

    folds: tuple[int | Literal["all"], ...] = (0,)


@dataclass(frozen=True)
class SampleConfig:
    """The table of training samples for one fold of the split."""

    out_dir: str = "data/samples"
    # null below: planned from the data (plans.json "settings", see pipeline.preprocessing.settings)
    mode: Literal["2d", "3d"] | None = None  # 2D slices or 3D patches
    slice_axis: Literal[0, 1, 2] | None = None  # 2D: RAS axis the slices are taken across
    patch_size: tuple[int, ...] | None = None  # 2 values in 2D, 3 in 3D
    fold: int | Literal["all"] = 0  # a stage run without --fold; "all": every non-test case trains, no validation
    seed: int = 0
    foreground_ratio: float | None = None  # share of samples centred on a foreground voxel


@dataclass(frozen=True)
class ModelConfig:
    """Network choice; see :func:`pipeline.networks.factory.build_model`."""

    name: Literal["classic_unet", "monai_unet", "basic_unet", "dynunet"] = "monai_unet"
    base_width: int = 16
    depth: int | None = None  # None: planned (pooling steps of the planned topology)
    upsample: Literal["transpose", "bilinear"] = "transpose"
    norm: Literal["instance", "batch"] = "instance"
    dropout: float = 0.0
    full_resolution_width: int | None = None  # monai_unet: maps of an extra full-resolution level (0: none; planned)
    activation: Literal["leakyrelu", "relu", "prelu"] | None = None  # None: the network's own default
    deep_supervision: bool = False  # dynunet: loss also on each lower decoder level's output (nnU-Net's)


@dataclass(frozen=True)
class LossConfig:
    """Dice + cross-entropy; see :func:`pipeline.training.engine.make_loss`."""

    dice_include_background: bool = True  # False: Dice over foreground classes only (nnU-Net's choice)
    batch_dice: bool = False  # True: one Dice over the whole batch per class instead of a mean over samples


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window (3D) or slice-wise (2D) inference settings."""

    overlap: float = 0.5
    sw_batch_size: int = 16
    blend: Literal["gaussian", "constant"] = "gaussian"
    mirror_tta: bool = True  # test-time mirroring (nnU-Net's default); predict --no-mirror turns it off
    mirror_axes: tuple[Literal[0, 1, 2], ...] | None = None  # volume axes (RAS) mirrored; None: the flip axes
    keep_largest_component: bool = False  # per foreground class, on the written (native) grid
    save_probabilities: bool = False  # predict: also write <case>_probabilities.nii.gz
    half_precision_voxels: int | None = 32_000_000  # above this (preprocessed grid) blend in float16; null: never


@dataclass(frozen=True)
class TrainConfig:
    """Training loop settings."""

    out_dir: str = "models/model"  # a folder of folds: fold k writes <out_dir>/fold_<k>/ (see for_fold)
    log_file: str | None = None  # per-epoch learning curves; None: train_log.csv in the model folder
    checkpoint_dir: str = "models/checkpoint"  # last-epoch state (per fold); a killed run resumes from it
    cache_gb: float = 4.0  # preprocessed volumes kept in memory; beyond this they are memory-mapped from disk
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int | None = None  # None: planned for target_minutes by a clock-free cost model (same on every machine)
    target_minutes: float = 1.0  # the planned epochs aim at this on 2 CPU cores (embedded study: 1; own data: ~15)
    max_minutes: float | None = None  # wall-clock stop for exploration (a run it stops is marked so); None: epochs only
    iters_per_epoch: int | None = None  # None: planned
    batch_size: int | None = None  # None: planned
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-5
    augment: bool = True
    flip_axes: tuple[Literal[0, 1, 2], ...] | None = None  # volume axes (RAS) flipped in augmentation; None: planned
    seed: int = 0
    num_workers: int = 0
    threads: int | None = None  # torch intra-op threads; None: all cores
    channels_last: bool | None = None  # channels-last memory format (None: in 3D, 1.28x faster there; not in 2D)
    val_every: int = 2
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    @property
    def log_path(self) -> str:
        """Where the learning curves go: ``log_file``, else ``train_log.csv`` in the model folder."""
        return self.log_file or f"{self.out_dir}/train_log.csv"


@dataclass(frozen=True)
class EmptyPolicyConfig:
    """Scores for empty masks; None means reported as missing."""

    both_empty: float | None = 1.0
    ref_empty_only: float | None = 0.0
    pred_empty_only: float | None = 0.0


@dataclass(frozen=True)
class EvaluateConfig:
    """Prediction of the test cases and per-case metrics."""

    predictions_dir: str = "data/predictions"
    metrics_dir: str = "metrics"
    nsd_tolerance_mm: float = 1.0
    empty_policy: EmptyPolicyConfig = field(default_factory=EmptyPolicyConfig)
    n_bootstrap: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class MlflowConfig:
    """MLflow tracking; the environment variable MLFLOW_TRACKING_URI wins over tracking_uri."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "segmentation"
    registered_model: str | None = "segpipe"  # evaluate registers the model under this name (null: not)


@dataclass(frozen=True)
class Config:
    """The whole study: one block per stage."""

    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    cv: CvConfig = field(default_factory=CvConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{key}: must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        reasons = "; ".join(e.removeprefix(f"{key}: ") for e in errors)
        raise ConfigError(f"{key}: {value!r} fits none of the allowed forms ({reasons})")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - schema error


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in '{prefix}'" if prefix else ""
        raise ConfigError(f"unknown key(s){where}: {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(hints[name], value, key)
    return cls(**kwargs)


def from_dict(data: dict, source: str = "<dict>") -> Config:
    """Build a :class:`Config` from a plain mapping (missing keys take their defaults)."""
    try:
        return _build(Config, data or {})
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load(path: str | Path = DEFAULT_CONFIG) -> Config:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return from_dict(data or {}, str(path))


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (JSON/YAML-serialisable) of a config dataclass."""
    return _plain(dataclasses.asdict(cfg))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def fold_name(fold: int | str) -> str:
    """``fold_3`` / ``fold_all``: the folder name of one fold's samples, model and checkpoint."""
    return f"fold_{fold}"


def for_fold(cfg: Config, fold: int | str) -> Config:
    """One fold's config (``dvc repro`` runs the stages with ``--fold k``): samples, model folder (with its
    learning curves), checkpoint and a set ``train.log_file`` each get a ``fold_k`` folder, so folds never
    overwrite each other and each resumes on its own. Without ``--fold`` a stage uses the folders as configured.
    """
    name = fold_name(fold)
    log = cfg.train.log_file
    train = dataclasses.replace(
        cfg.train,
        out_dir=f"{cfg.train.out_dir}/{name}",
        checkpoint_dir=f"{cfg.train.checkpoint_dir}/{name}",
        log_file=str(Path(log).parent / name / Path(log).name) if log else None,
    )
    sample = dataclasses.replace(cfg.sample, fold=fold, out_dir=f"{cfg.sample.out_dir}/{name}")
    return dataclasses.replace(cfg, sample=sample, train=train)


def _fold_arg(value: str) -> int | str:
    return "all" if value == "all" else int(value)


def stage_args(
    description: str, argv: list[str] | None = None, fold: bool = False
) -> tuple[argparse.Namespace, Config]:
    """Parse ``--config`` (and with ``fold``, ``--fold k``: the config of :func:`for_fold`) and load it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="params file (default: %(default)s)")
    if fold:
        parser.add_argument("--fold", type=_fold_arg, default=None, help="fold index or 'all' (default: sample.fold)")
    args = parser.parse_args(argv)
    cfg = load(args.config)
    if fold and args.fold is not None:
        cfg = for_fold(cfg, args.fold)
    if cfg.data.max_voxels < 1:
        raise ConfigError(f"{args.config}: data.max_voxels must be >= 1, got {cfg.data.max_voxels}")
    from pipeline.core.readers import set_max_voxels  # every read of this process is bounded by it

    set_max_voxels(cfg.data.max_voxels)
    return args, cfg


def run_main(main: Callable[[], int]) -> None:
    """Run a stage's ``main``; a :class:`ConfigError` (params file or setting) is one line on stderr, exit 2."""
    try:
        code = main()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)
