import pytest
import yaml

from kfcn.config import Config, config_from_dict, dump_config, load_config, save_config
from kfcn.errors import ConfigError

from .conftest import REPO


def test_default_yaml_is_the_reference_recipe():
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert cfg == Config()
    assert cfg.train.learning_rate == 1e-4
    assert cfg.train.weight_decay == 1e-5
    assert cfg.model.backbone_weights == "imagenet"


def test_every_default_key_has_a_comment():
    for line in (REPO / "configs" / "default.yaml").read_text().splitlines():
        if line.startswith("  ") and ":" in line and not line.startswith("    "):
            assert "#" in line, f"uncommented key: {line}"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "train.epochs=3",
            "train.learning_rate=1e-3",
            "train.steps_per_epoch=null",
            "model.backbone_weights=none",
            "model.freeze.fcn16=[block1_*, block2_*]",
            "data.flip=false",
        ],
    )
    assert cfg.train.epochs == 3
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    assert cfg.train.steps_per_epoch is None
    assert cfg.model.backbone_weights == "none"
    assert cfg.model.freeze["fcn16"] == ["block1_*", "block2_*"]
    assert cfg.data.flip is False


def test_unknown_key_suggests_nearest():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'train.epoch'.*did you mean 'train.epochs'"
    ):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"did you mean 'data.crop_size'"):
        config_from_dict({"data": {"crop_sise": 3}})


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=x", r"train.epochs = 'x' is not allowed; expected an integer"),
        ("train.epochs=0", r"train.epochs = 0 .*>= 1"),
        ("train.batch_size=2.5", r"train.batch_size = 2.5 .*integer"),
        ("data.augment=zoom", r"data.augment = 'zoom' .*'random', 'resize_pad'"),
        ("model.dropout=1.5", r"model.dropout = 1.5 .*<= 0.99"),
        ("data.flip=maybe", r"data.flip = 'maybe' .*true or false"),
        ("model.freeze.fcn64=[a]", r"model.freeze .*fcn32, fcn16, fcn8"),
        ("train.epochs", r"expected section.key=value"),
    ],
)
def test_bad_values_name_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_config(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("train: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="unsafe.yaml"):
        load_config(unsafe)


def test_scale_range_must_be_ordered():
    with pytest.raises(ConfigError, match="scale_min"):
        load_config(None, ["data.scale_min=3", "data.scale_max=2"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=7", "model.freeze.fcn8=[block*]"])
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert yaml.safe_load(dump_config(cfg))["train"]["epochs"] == 7
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("value", [100, 33, 500])
def test_crop_size_must_be_a_multiple_of_32(value):
    with pytest.raises(ConfigError, match=rf"data.crop_size = {value} .*a multiple of 32"):
        load_config(None, [f"data.crop_size={value}"])
    assert load_config(None, ["data.crop_size=96"]).data.crop_size == 96


def test_widths_take_a_name_or_seven_ints_and_need_random_init():
    cfg = load_config(None, ["model.backbone_weights=none", "model.widths=small"])
    assert cfg.model.widths == "small"
    cfg = load_config(
        None, ["model.backbone_weights=none", "model.widths=[8, 8, 16, 16, 16, 32, 32]"]
    )
    assert cfg.model.widths == [8, 8, 16, 16, 16, 32, 32]
    # VGG16's own widths, spelled out, still take the ImageNet weights.
    assert load_config(None, ["model.widths=[64, 128, 256, 512, 512, 4096, 4096]"])
    with pytest.raises(
        ConfigError,
        match=r"model.widths = 'small' is not allowed with model.backbone_weights = 'imagenet'.*backbone_weights: none",
    ):
        load_config(None, ["model.widths=small"])
    with pytest.raises(
        ConfigError, match=r"model.backbone = 'resnet50'; widths apply to vgg16 only"
    ):
        load_config(
            None, ["model.backbone=resnet50", "model.backbone_weights=none", "model.widths=small"]
        )
    with pytest.raises(ConfigError, match=r"--set model.widths=\[1, 2\]: model.widths = \[1, 2\]"):
        load_config(None, ["model.backbone_weights=none", "model.widths=[1, 2]"])
