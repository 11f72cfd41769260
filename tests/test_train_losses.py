"""Training with the `train.loss` choices and class weights; labels that are no class."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from kfcn.cli import main
from kfcn.config import load_config
from kfcn.data import class_stats
from kfcn.data.records import META_FILE
from kfcn.errors import ConfigError
from kfcn.palette import IGNORE_LABEL
from kfcn.train import resolve_class_weights

from .shards import write_shards
from .test_train import TINY


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.loss=hinge", r"train.loss = 'hinge' .*'cross_entropy', 'focal', 'dice', 'lovasz'"),
        ("train.class_weights=[1, -1]", r"train.class_weights = \[1, -1\] .*'median_frequency'"),
        ("train.class_weights=inverse", r"train.class_weights = 'inverse' .*list of one number"),
        ("train.ohem_threshold=1.0", r"train.ohem_threshold = 1.0 .*open interval \(0.0, 1.0\)"),
        ("train.ohem_threshold=0", r"train.ohem_threshold = 0.0 .*open interval"),
        ("train.focal_gamma=-1", r"train.focal_gamma = -1.0 .*>= 0"),
    ],
)
def test_bad_loss_settings_name_key_and_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_mining_needs_a_pixel_loss():
    with pytest.raises(ConfigError, match=r"train.ohem_threshold = 0.7 .*train.loss = 'dice'"):
        load_config(None, ["train.loss=dice", "train.ohem_threshold=0.7"])


def test_weight_list_must_match_the_data(tmp_path):
    cfg = load_config(None, ["train.class_weights=[1, 2, 3]"])
    with pytest.raises(ConfigError, match=r"train.class_weights = .*a list of 4 numbers .*not 3"):
        resolve_class_weights(cfg, tmp_path, ["a", "b", "c", "d"], echo=lambda _: None)


def test_median_frequency_from_counted_pixels_is_cached(tmp_path):
    samples = write_shards(tmp_path, "train", 5, size=(24, 40), num_classes=4, per_shard=2)
    labels = np.stack([s[2] for s in samples])
    counts = np.bincount(labels[labels != IGNORE_LABEL], minlength=4)
    got = class_stats.class_pixel_counts(tmp_path, "train", 4)
    np.testing.assert_array_equal(got, counts)
    cached = json.loads((tmp_path / class_stats.CACHE_FILE).read_text())
    assert cached["train"]["counts"] == counts.tolist()
    freq = counts / counts.sum()
    expected = np.median(freq) / freq
    np.testing.assert_allclose(class_stats.median_frequency_weights(counts), expected)
    # meta.json's counts (what `kfcn prepare` writes) win over the cache.
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["class_pixels"] = {"train": [1, 2, 3, 4]}
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    assert class_stats.class_pixel_counts(tmp_path, "train", 4).tolist() == [1, 2, 3, 4]


def test_trains_with_weighted_mined_loss_and_prints_the_weights(tmp_path):
    data = tmp_path / "data"
    write_shards(data, "train", 4, size=(64, 80), num_classes=4, seed=1)
    args = ["train", "--stage", "fcn32", "--data-dir", data, "--run-dir", tmp_path / "run"]
    sets = [*TINY, "train.validate=false", "train.loss=cross_entropy+dice"]
    sets += ["train.class_weights=median_frequency", "train.ohem_threshold=0.9"]
    result = CliRunner().invoke(main, args + [a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    assert re.search(r"class weights \(median_frequency\): class_0 [\d.]+, class_1", result.output)
    assert (tmp_path / "run" / "fcn32" / "final.keras").is_file()
    assert (data / class_stats.CACHE_FILE).is_file()


def test_label_that_is_no_class_stops_training_naming_it(tmp_path):
    data = tmp_path / "data"
    write_shards(data, "train", 4, size=(64, 80), num_classes=6, seed=1)
    meta = json.loads((data / META_FILE).read_text())
    meta["class_names"], meta["num_classes"] = meta["class_names"][:4], 4  # labels 4, 5 remain
    (data / META_FILE).write_text(json.dumps(meta))
    args = ["train", "--stage", "fcn32", "--data-dir", data, "--run-dir", tmp_path / "run"]
    sets = [*TINY, "train.validate=false"]
    result = CliRunner().invoke(main, args + [a for s in sets for a in ("--set", s)])
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert re.fullmatch(
        r"kfcn: error: label value [45] in record 'train_000\d' of the 'train' split is neither "
        r"a class \(0-3\) nor the ignore value 255; .*",
        line,
    ), result.output[-2000:]
