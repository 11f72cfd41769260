"""Typed configuration: YAML files in `configs/` loaded into dataclasses, with `--set` overrides.

The dataclass defaults below *are* the reference recipe; `configs/default.yaml` spells the same
values out with a comment per key (a test keeps the two equal). Each field's metadata says what
values are allowed, so every error can name the key, the value and the valid choices.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kfcn.errors import ConfigError
from kfcn.fileio import atomic_write

STAGES = ("fcn32", "fcn16", "fcn8")
AUGMENTS = ("random", "resize_pad")  # data.augment, applied by kfcn.data.pipeline
TOPOLOGIES = ("kfcn", "caffe")  # model.topology, built by kfcn.models.fcn
BACKBONE_NAMES = ("vgg16", "resnet50", "mobilenetv2")  # the modules of kfcn.models.backbones
WIDTH_NAMES = ("small",)  # the named model.widths of kfcn.models.backbones.vgg16
VGG16_WIDTHS = (64, 128, 256, 512, 512, 4096, 4096)  # model.widths: blocks 1-5, fc6, fc7
NUM_WIDTHS = len(VGG16_WIDTHS)
LOSS_NAMES = ("cross_entropy", "focal", "dice", "lovasz", "cross_entropy+dice")
CLASS_WEIGHT_NAMES = ("none", "median_frequency")
PIXEL_LOSSES = ("cross_entropy", "focal", "cross_entropy+dice")  # the ones OHEM can select for


def _opt(default: Any = None, help: str = "", **limits: Any) -> Any:
    """A dataclass field whose metadata carries its help text and limits (min, max, choices)."""
    kwargs: dict[str, Any] = {"metadata": {"help": help, **limits}}
    if isinstance(default, (list, dict)):
        kwargs["default_factory"] = lambda: copy.deepcopy(default)
    else:
        kwargs["default"] = default
    return field(**kwargs)


@dataclass
class DataConfig:
    # The networks downsample by 32: a crop side that is no multiple of 32 breaks the skip sums.
    crop_size: int = _opt(
        512, "side of the square training crop, pixels (a multiple of 32)", min=32, multiple=32
    )
    augment: str = _opt(
        "random",
        "'random' = scale + crop + flip; 'resize_pad' = resize with pad to crop_size",
        choices=AUGMENTS,
    )
    scale_min: float = _opt(0.5, "smallest random rescale factor", min=0.05)
    scale_max: float = _opt(2.0, "largest random rescale factor", min=0.05)
    flip: bool = _opt(True, "random horizontal flip")
    shuffle_buffer: int = _opt(1000, "records held by the shuffle buffer", min=1)


@dataclass
class ModelConfig:
    num_classes: int = _opt(21, "number of classes, background included", min=2)
    backbone: str = _opt("vgg16", "the network under the FCN", choices=BACKBONE_NAMES)
    backbone_weights: str = _opt(
        "imagenet", "'imagenet', 'none' (random init) or a path to a Keras weights file"
    )
    # The same FCN at other widths: the tests and the demo train the `small` one in seconds.
    widths: list | str | None = _opt(
        None,
        "vgg16 filters of blocks 1-5, fc6, fc7: null = VGG16's [64, 128, 256, 512, 512, 4096, "
        "4096], 'small' = [16, 32, 64, 128, 128, 256, 256], or a list of 7 positive ints",
        widths=True,
    )
    dropout: float = _opt(
        0.5, "dropout rate after fc6 and fc7 (vgg16) or in the FCN head", min=0.0, max=0.99
    )
    # `caffe` is the net of the published Caffe FCNs (what `kfcn convert` reads), any input size.
    topology: str | None = _opt(
        None,
        "null = kfcn's, or that of the model a stage starts from (--init, an earlier stage); "
        "'kfcn' = 'same' convolutions on inputs padded to a multiple of 32; 'caffe' = the Caffe "
        "FCNs' net (vgg16: conv1_1 padded by 100, ceil pooling, crops), any input size",
        choices=TOPOLOGIES,
    )
    train_upsampling: bool = _opt(False, "learn the bilinear-initialised transposed convolutions")
    # The reference recipe trains the stages in turn and fine-tunes the backbone from the top down:
    # FCN-32s keeps the backbone up to stride 16 fixed (VGG16 blocks 1-4), FCN-16s releases the
    # stride-16 part (block 4), FCN-8s trains everything. `backbone:strideN` names those layers
    # on any backbone (kfcn.models.apply_freeze).
    freeze: dict = _opt(
        {"fcn32": ["backbone:stride16"], "fcn16": ["backbone:stride8"], "fcn8": []},
        "per stage, layer-name patterns (fnmatch) or backbone[:strideN], whose weights stay fixed",
        keys=STAGES,
    )


@dataclass
class TrainConfig:
    batch_size: int = _opt(8, "images per step on each replica", min=1)
    epochs: int = _opt(10, "epochs per stage", min=1)
    steps_per_epoch: int | None = _opt(None, "steps per epoch; null = one pass over train", min=1)
    learning_rate: float = _opt(1e-4, "Adam learning rate", min=0.0)
    lr_schedule: str = _opt(
        "constant", "learning-rate schedule", choices=("constant", "poly", "cosine")
    )
    weight_decay: float = _opt(1e-5, "L2 strength on every kernel", min=0.0)
    seed: int = _opt(0, "seed for shuffling, augmentation and initialisation", min=0)
    validate: bool = _opt(True, "evaluate on the val split after every epoch")
    val_images: int | None = _opt(None, "val images per validation; null = all", min=1)
    deterministic: bool = _opt(
        True, "deterministic ops, so a resumed run equals an uninterrupted one (GPU: slower)"
    )
    # Losses for rare classes (kfcn.losses): every one ignores label 255.
    loss: str = _opt("cross_entropy", "the training loss", choices=LOSS_NAMES)
    focal_gamma: float = _opt(2.0, "focal loss: the focusing exponent gamma", min=0.0)
    class_weights: list | str = _opt(
        "none",
        "'none', 'median_frequency' (from the train split's class pixel counts) or a list of "
        "one weight >= 0 per class",
        class_weights=True,
    )
    ohem_threshold: float | None = _opt(
        None,
        "hard-pixel mining: only pixels whose true-class probability is below this count; "
        "null = off",
        above=0.0,
        below=1.0,
    )
    ohem_min_kept: int = _opt(
        10000, "hard-pixel mining: never fewer than this many pixels per image", min=0
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _section_classes() -> dict[str, type]:
    return {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _all_keys() -> list[str]:
    return [
        f"{name}.{f.name}"
        for name, cls in _section_classes().items()
        for f in dataclasses.fields(cls)
    ]


def _unknown_key(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys() + list(_section_classes()), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(_all_keys())}"
    return ConfigError(f"{where}: unknown config key '{key}'{hint}")


def _check_value(key: str, f: dataclasses.Field, value: Any, where: str) -> Any:
    """Type-check and range-check one value; returns it (ints widened to float where needed)."""
    hints = typing.get_type_hints(_section_classes()[key.split(".")[0]])
    kind = hints[f.name]
    meta = f.metadata
    optional = type(None) in typing.get_args(kind)
    base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)

    def bad(allowed: str) -> ConfigError:
        return ConfigError(f"{where}: {key} = {value!r} is not allowed; expected {allowed}")

    if value is None:
        if optional:
            return None
        raise bad(f"a {base.__name__}")
    if meta.get("widths"):
        return _check_widths(value, bad)
    if meta.get("class_weights"):
        return _check_class_weights(value, bad)
    if base is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer" + (" or null" if optional else ""))
    elif base is float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-4` (no dot) as a string; accept any float literal.
            try:
                value = float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
        if not math.isfinite(value):  # YAML reads .nan and .inf; no key means them
            raise bad("a finite number")
    elif base is str:
        if not isinstance(value, str):
            raise bad("a string")
    elif base is dict:
        value = _check_stage_patterns(key, value, meta.get("keys", ()), bad)
    if "choices" in meta and value not in meta["choices"]:
        raise bad("one of " + ", ".join(repr(c) for c in meta["choices"]))
    if "min" in meta and value < meta["min"]:
        raise bad(f"a value >= {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise bad(f"a value <= {meta['max']}")
    if ("above" in meta and value <= meta["above"]) or ("below" in meta and value >= meta["below"]):
        raise bad(f"a number in the open interval ({meta['above']}, {meta['below']}) or null")
    if "multiple" in meta and value % meta["multiple"]:
        step = meta["multiple"]
        lower, upper = value - value % step, value - value % step + step
        near = f"{lower} or {upper}" if lower >= meta.get("min", step) else f"{upper}"
        raise bad(f"a multiple of {step}, e.g. {near}")
    return value


# What `model.widths` may be, for messages.
WIDTHS_ALLOWED = (
    f"null (VGG16's {list(VGG16_WIDTHS)}), {' or '.join(repr(n) for n in WIDTH_NAMES)}, or a "
    f"list of {NUM_WIDTHS} positive integers (filters of blocks 1-5, fc6, fc7)"
)


def is_width_list(value: Any) -> bool:
    """True for a list or tuple of `NUM_WIDTHS` positive ints (bools are not ints here)."""
    return (
        isinstance(value, list | tuple)
        and len(value) == NUM_WIDTHS
        and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in value)
    )


def _check_widths(value: Any, bad) -> list | str:
    if isinstance(value, str) and value in WIDTH_NAMES:
        return value
    if isinstance(value, list) and is_width_list(value):
        return list(value)
    raise bad(WIDTHS_ALLOWED)


CLASS_WEIGHTS_ALLOWED = (
    f"{' or '.join(repr(n) for n in CLASS_WEIGHT_NAMES)}, or a list of one number >= 0 per "
    "class (at least one > 0)"
)


def _check_class_weights(value: Any, bad) -> list | str:
    if isinstance(value, str) and value in CLASS_WEIGHT_NAMES:
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(w, int | float) and not isinstance(w, bool) for w in value)
        and all(math.isfinite(w) and w >= 0 for w in value)
        and any(w > 0 for w in value)
    ):
        return [float(w) for w in value]
    raise bad(CLASS_WEIGHTS_ALLOWED)


def check_class_weight_count(weights: Any, num_classes: int) -> None:
    """A `train.class_weights` list must hold one weight per class of the data.

    Raises:
        ConfigError: a list of another length.
    """
    if isinstance(weights, list) and len(weights) != num_classes:
        raise ConfigError(
            f"train.class_weights = {weights!r} is not allowed; expected "
            f"{' or '.join(repr(n) for n in CLASS_WEIGHT_NAMES)}, or a list of {num_classes} "
            f"numbers >= 0 (one per class), not {len(weights)}"
        )


def _check_stage_patterns(key: str, value: Any, stages: tuple, bad) -> dict:
    if not isinstance(value, dict):
        raise bad("a mapping of stage -> list of layer-name patterns")
    out = {s: [] for s in stages}
    for stage, patterns in value.items():
        if stage not in stages:
            raise bad(f"stages among {', '.join(stages)} (got '{stage}')")
        if patterns is None:
            patterns = []
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise bad(f"a list of layer-name patterns for '{stage}'")
        out[stage] = list(patterns)
    return out


def _set_key(cfg: Config, key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in _section_classes():
        raise _unknown_key(key, where)
    section = getattr(cfg, parts[0])
    fields = {f.name: f for f in dataclasses.fields(section)}
    if parts[1] not in fields:
        raise _unknown_key(key, where)
    f = fields[parts[1]]
    full = f"{parts[0]}.{parts[1]}"
    if len(parts) > 2:
        # A dotted path into a mapping field, e.g. model.freeze.fcn16=[block1_*]
        current = (
            dict(getattr(section, f.name)) if isinstance(getattr(section, f.name), dict) else {}
        )
        if len(parts) != 3 or not isinstance(current, dict) or f.metadata.get("keys") is None:
            raise _unknown_key(key, where)
        current[parts[2]] = value
        value = current
    setattr(section, f.name, _check_value(full, f, value, where))


def _flatten(mapping: dict, where: str) -> list[tuple[str, Any]]:
    items = []
    for section, values in mapping.items():
        if section not in _section_classes():
            raise _unknown_key(str(section), where)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping of keys to values")
        items += [(f"{section}.{k}", v) for k, v in values.items()]
    return items


def config_from_dict(mapping: dict, where: str = "config") -> Config:
    """Build a validated `Config` from a nested mapping (missing keys keep their defaults)."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping with sections data, model, train")
    cfg = Config()
    for key, value in _flatten(mapping, where):
        _set_key(cfg, key, value, where)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """Split one `--set section.key=value`; the value is read as YAML (`1e-4`, `true`, `[a, b]`)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.epochs=5")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc.problem})") from None
    return key.strip(), value


def load_config(
    path: str | os.PathLike | None = None, overrides: typing.Iterable[str] = ()
) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply `--set` overrides.

    Raises:
        ConfigError: naming the file or `--set` text, the key, the value and what is allowed.
    """
    cfg = Config()
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
        try:
            mapping = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        cfg = config_from_dict(mapping, where=str(path))
    for text in overrides:
        key, value = parse_override(text)
        _set_key(cfg, key, value, where=f"--set {text}")
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: Config) -> None:
    if cfg.data.scale_min > cfg.data.scale_max:
        raise ConfigError(
            f"data.scale_min = {cfg.data.scale_min} is larger than data.scale_max = "
            f"{cfg.data.scale_max}; expected scale_min <= scale_max"
        )
    check_widths_fit(cfg.model.backbone, cfg.model.backbone_weights, cfg.model.widths)
    if cfg.train.ohem_threshold is not None and cfg.train.loss not in PIXEL_LOSSES:
        raise ConfigError(
            f"train.ohem_threshold = {cfg.train.ohem_threshold} is not allowed with train.loss = "
            f"{cfg.train.loss!r}; hard-pixel mining selects pixels for "
            f"{', '.join(PIXEL_LOSSES)}: set train.ohem_threshold: null or change train.loss"
        )


def check_widths_fit(backbone: str, backbone_weights: Any, widths: Any) -> None:
    """`model.widths` is for VGG16, and pretrained weights exist only at its default widths.

    Raises:
        ConfigError: widths on another backbone, or non-default widths with weights to load.
    """
    if widths is None or (isinstance(widths, list | tuple) and tuple(widths) == VGG16_WIDTHS):
        return
    if backbone != "vgg16":
        raise ConfigError(
            f"model.widths = {widths!r} is not allowed with model.backbone = {backbone!r}; "
            "widths apply to vgg16 only: set model.widths: null"
        )
    if str(backbone_weights).strip().lower() != "none":
        raise ConfigError(
            f"model.widths = {widths!r} is not allowed with model.backbone_weights = "
            f"{backbone_weights!r}: pretrained VGG16 weights exist at VGG16's own widths only; "
            "set model.backbone_weights: none (random init) or model.widths: null"
        )


def config_to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts (what YAML dumps and model files store)."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (temporary file, then rename)."""
    atomic_write(path, dump_config(cfg))
