"""Input pipelines on tiny synthetic shards (32x48 JPEGs, 64-pixel crops)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from kfcn.config import DataConfig
from kfcn.data import pipeline
from kfcn.errors import DataError
from kfcn.padding import IMAGENET_MEAN_RGB
from kfcn.palette import IGNORE_LABEL
from tests.shards import COLORS, write_shards

RANDOM = DataConfig(crop_size=64, scale_min=0.5, scale_max=2.0, flip=True, shuffle_buffer=16)
PLAIN = replace(RANDOM, scale_min=1.0, scale_max=1.0, flip=False)  # crop/pad only


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    samples = write_shards(root, "train", 10, per_shard=4)  # 3 shard files: 4 + 4 + 2
    return root, samples


def take(ds: tf.data.Dataset, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def source_of(image: np.ndarray, label: np.ndarray, samples) -> int:
    """Index of the sample of which (image, label) is a full-height window; -1 if none."""
    width = image.shape[1]
    for k, (_, src_image, src_label) in enumerate(samples):
        for x in range(src_image.shape[1] - width + 1):
            if np.array_equal(image, src_image[:, x : x + width]) and np.array_equal(
                label, src_label[:, x : x + width]
            ):
                return k
    return -1


def test_batches_have_crop_shape_dtype_and_valid_labels(data):
    root, _ = data
    ds = pipeline.train_dataset(root, "train", RANDOM, batch_size=3, seed=0)
    assert ds.element_spec[0].shape == (3, 64, 64, 3) and ds.element_spec[0].dtype == tf.float32
    assert ds.element_spec[1].shape == (3, 64, 64) and ds.element_spec[1].dtype == tf.int32
    # 5 batches of 3 run past the 10 records: the dataset repeats.
    for images, labels in take(ds, 5):
        assert 0.0 <= images.min() and images.max() <= 255.0
        assert set(np.unique(labels)) <= set(range(21)) | {IGNORE_LABEL}


def test_crop_without_scale_or_flip_is_a_window_of_the_decoded_source(data):
    root, samples = data
    cfg = replace(PLAIN, crop_size=32)
    ds = pipeline.train_dataset(root, "train", cfg, batch_size=2, seed=1)
    for images, labels in take(ds, 3):
        for image, label in zip(images, labels, strict=True):
            assert source_of(image, label, samples) >= 0


def test_labels_stay_aligned_with_image_colours_under_full_augmentation(data):
    root, _ = data
    ds = pipeline.train_dataset(root, "train", RANDOM, batch_size=4, seed=2)
    images, labels = take(ds, 1)[0]
    scored = labels != IGNORE_LABEL
    distance = np.abs(images - COLORS[np.where(scored, labels, 0)]).max(axis=-1)
    # Each class is painted its own VOC colour; only resampled edges may blend.
    assert (distance[scored] < 40).mean() > 0.9
    assert (labels == IGNORE_LABEL).any()


def test_small_images_are_padded_with_mean_and_ignore(data):
    root, samples = data
    ds = pipeline.train_dataset(root, "train", PLAIN, batch_size=2, seed=0, shuffle=False)
    images, labels = take(ds, 1)[0]
    mean = np.array(IMAGENET_MEAN_RGB, np.float32)
    for image, label in zip(images, labels, strict=True):
        assert source_of(image[:32, :48], label[:32, :48], samples) >= 0
        assert (image[32:] == mean).all() and (image[:, 48:] == mean).all()
        assert (label[32:] == IGNORE_LABEL).all() and (label[:, 48:] == IGNORE_LABEL).all()


def test_same_seed_same_batches_other_seed_other_batches(data):
    root, _ = data
    first = take(pipeline.train_dataset(root, "train", RANDOM, batch_size=2, seed=5), 4)
    again = take(pipeline.train_dataset(root, "train", RANDOM, batch_size=2, seed=5), 4)
    other = take(pipeline.train_dataset(root, "train", RANDOM, batch_size=2, seed=6), 4)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.array_equal(x1, x3) for (x1, _), (x3, _) in zip(first, other, strict=True))


def test_an_epoch_is_a_function_of_seed_and_epoch_only(data):
    """A stream started at epoch 2 (a resumed run) gives exactly epoch 2 of a full stream."""
    root, _ = data
    steps = 3

    def stream(first_epoch):
        return pipeline.train_dataset(
            root, "train", RANDOM, 2, seed=5, first_epoch=first_epoch, steps_per_epoch=steps
        )

    full = take(stream(0), 3 * steps)
    resumed = take(stream(2), steps)
    for (x1, y1), (x2, y2) in zip(full[2 * steps :], resumed, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # ... and epochs differ from each other (new order, new crops).
    assert not np.array_equal(full[0][0], full[steps][0])
    assert not np.array_equal(full[steps][0], full[2 * steps][0])


def test_resize_pad_mode_pads_labels_with_ignore(data):
    root, _ = data
    cfg = replace(RANDOM, augment="resize_pad", flip=False)
    ds = pipeline.train_dataset(root, "train", cfg, batch_size=2, seed=0)
    images, labels = take(ds, 1)[0]
    assert images.shape == (2, 64, 64, 3) and labels.shape == (2, 64, 64)
    # 32x48 fits as 42x64 with 22 padded rows below (bottom-right, as inference pads).
    assert (labels[:, 42:] == IGNORE_LABEL).all()
    assert (labels[:, :42] != IGNORE_LABEL).mean() > 0.7
    # Padded with the mean colour, as inference pads (zero after preprocessing).
    np.testing.assert_allclose(images[:, 42:], np.broadcast_to(IMAGENET_MEAN_RGB, (2, 22, 64, 3)))


@pytest.mark.parametrize("per_shard", [2, 10])  # 5 files: by file; 1 file: by record
@pytest.mark.parametrize("pipelines", [2, 3])
def test_pipelines_partition_each_global_batch(tmp_path, per_shard, pipelines):
    """P input pipelines (one replica each, batch 1) together read, step by step, exactly the
    global batches of one pipeline at batch P: each record at most once per epoch, less than
    one global batch left out, for several seeds and epochs."""
    samples = write_shards(tmp_path, "train", 10, per_shard=per_shard)
    cfg = replace(PLAIN, crop_size=32)

    def ids(ds):
        return [[source_of(x, y, samples) for x, y in zip(*batch, strict=True)] for batch in ds]

    for seed, epoch in ((0, 0), (3, 1), (7, 4)):
        single = ids(
            pipeline.train_dataset(
                tmp_path, "train", cfg, pipelines, seed, repeat=False, first_epoch=epoch
            )
        )
        shares = [
            ids(
                pipeline.train_dataset(
                    tmp_path,
                    "train",
                    cfg,
                    1,
                    seed,
                    input_context=tf.distribute.InputContext(pipelines, index, pipelines),
                    repeat=False,
                    first_epoch=epoch,
                )
            )
            for index in range(pipelines)
        ]
        steps = 10 // pipelines
        assert len(single) == steps and all(len(share) == steps for share in shares)
        for step, batch in enumerate(single):
            assert [share[step][0] for share in shares] == batch
        seen = [i for batch in single for i in batch]
        assert -1 not in seen and len(set(seen)) == len(seen) and 10 - len(seen) < pipelines


def test_eval_dataset_yields_full_examples_in_record_order(data):
    root, samples = data
    examples = list(pipeline.eval_dataset(root, "train"))
    assert [e["id"].numpy().decode() for e in examples] == [s[0] for s in samples]
    for example, (_, image, label) in zip(examples, samples, strict=True):
        assert example["image"].dtype == tf.uint8 and example["label"].dtype == tf.uint8
        np.testing.assert_array_equal(example["image"].numpy(), image)
        np.testing.assert_array_equal(example["label"].numpy(), label)


def test_count_records_from_meta_and_by_counting(tmp_path):
    write_shards(tmp_path, "val", 5, per_shard=2)
    meta_path = tmp_path / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["counts"]["val"] == 5
    # The meta count is taken as is (no pass over the shards): make it tell apart from counting.
    meta["counts"]["val"] = 6
    meta_path.write_text(json.dumps(meta))
    assert pipeline.count_records(tmp_path, "val") == 6
    meta_path.unlink()
    assert pipeline.count_records(tmp_path, "val") == 5


def test_missing_split_names_dir_and_existing_splits(data):
    root, _ = data
    with pytest.raises(DataError, match="no 'val' shards") as info:
        pipeline.train_dataset(root, "val", RANDOM, batch_size=2, seed=0)
    assert str(root) in str(info.value) and "train" in str(info.value)
    with pytest.raises(DataError, match="no 'val' shards"):
        pipeline.eval_dataset(root, "val")
