"""tf.data input pipelines: prepared shards -> decoded, augmented, batched tensors.

Training order (TF Model Garden's): shard files -> per-worker file sharding -> parallel
interleaved reads -> shuffle of serialized records -> repeat -> decode -> augment ->
batch(drop_remainder) -> prefetch. Everything after the file list is TensorFlow ops (no Python per
example), and every random choice is a stateless op seeded from (seed, input pipeline, example
counter), so one seed gives the same batches on every run.

Evaluation reads the records in order, one full-resolution example at a time.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from kfcn.config import DataConfig
from kfcn.data import augment, records
from kfcn.errors import ConfigError, DataError

AUTOTUNE = tf.data.AUTOTUNE
MAX_PARALLEL_FILES = 4


def _augment_fn(data_cfg: DataConfig, base_seed: tf.Tensor):
    """The per-example transform: (counter, decoded example) -> (image, label)."""
    size = data_cfg.crop_size

    def transform(index: tf.Tensor, example: dict) -> tuple[tf.Tensor, tf.Tensor]:
        seed = tf.random.experimental.stateless_fold_in(base_seed, index)  # (2,)
        scale_seed, crop_seed, flip_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3)
        )
        image, label = example["image"], example["label"]  # (H, W, 3) uint8, (H, W) uint8
        if data_cfg.augment == "resize_pad":
            image, label = augment.resize_pad(image, label, size)
        else:
            image, label = augment.random_scale(
                image, label, data_cfg.scale_min, data_cfg.scale_max, scale_seed
            )
            image, label = augment.random_crop_or_pad(image, label, size, crop_seed)
        if data_cfg.flip:
            image, label = augment.random_flip(image, label, flip_seed)
        return image, tf.cast(label, tf.int32)  # (size, size, 3) float32, (size, size) int32

    return transform


def train_dataset(
    data_dir: str | Path,
    split: str,
    data_cfg: DataConfig,
    batch_size: int,
    seed: int,
    input_context: tf.distribute.InputContext | None = None,
    shuffle: bool = True,
    repeat: bool = True,
) -> tf.data.Dataset:
    """Augmented training batches from the shards of `split`.

    With an `input_context` (from `tf.distribute.Strategy.distribute_datasets_from_function`)
    this pipeline reads only its share of the shard files (by record when there are fewer files
    than pipelines). `batch_size` is the batch of *this* pipeline, i.e. the per-replica batch
    (`train.batch_size`), as `distribute_datasets_from_function` expects. (A dataset handed to
    `model.fit` as is gets each batch split across the replicas: pass the global batch there.)

    Args:
        data_dir: directory written by `kfcn prepare`.
        split: split name, e.g. "train".
        data_cfg: crop size and augmentation: 'random' = random scale, then pad and random crop;
            'resize_pad' = `augment.resize_pad`; either is followed by a random flip when
            `data_cfg.flip`.
        batch_size: images per batch (per replica).
        seed: seed of the shuffles and of every augmentation draw.
        input_context: the distribution input context, if any.
        shuffle: shuffle files and records (off: record order, still augmented).
        repeat: repeat forever (for `steps_per_epoch`); off: one pass.

    Returns:
        Dataset of (images (B, S, S, 3) float32 in 0-255, labels (B, S, S) int32) with
        S = data_cfg.crop_size; labels are class indices or IGNORE_LABEL.

    Raises:
        DataError: when `data_dir` has no complete set of `split` shards (naming the splits it has).
        ConfigError: for an unknown `data_cfg.augment`.
    """
    if data_cfg.augment not in ("random", "resize_pad"):
        raise ConfigError(
            f"data.augment = {data_cfg.augment!r} is not allowed; expected 'random' or 'resize_pad'"
        )
    shards = records.list_shards(data_dir, split)
    pipelines, pipeline_id = 1, 0
    if input_context is not None:
        pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
    # Each pipeline reads its own files; with fewer files than pipelines, its own records.
    by_file = len(shards) >= pipelines
    files = tf.data.Dataset.from_tensor_slices([str(p) for p in shards])
    if by_file:
        files = files.shard(pipelines, pipeline_id)
    if shuffle:
        files = files.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
    ds = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(shards), MAX_PARALLEL_FILES),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if not by_file:
        ds = ds.shard(pipelines, pipeline_id)
    if shuffle:
        ds = ds.shuffle(data_cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # A running example counter (across epochs) keys each example's augmentation draws.
    base_seed = tf.constant([seed, pipeline_id], dtype=tf.int64)
    ds = ds.enumerate()
    ds = ds.map(
        lambda i, s: (i, records.decode_example(s)), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    ds = ds.map(_augment_fn(data_cfg, base_seed), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(AUTOTUNE)


def eval_dataset(data_dir: str | Path, split: str) -> tf.data.Dataset:
    """Full-resolution examples of `split`, unbatched, in record order (`{split}.txt` order).

    Returns:
        Dataset of dicts: `id` string, `image` (H, W, 3) uint8, `label` (H, W) uint8; sizes
        differ between examples.

    Raises:
        DataError: when `data_dir` has no complete set of `split` shards.
    """
    shards = records.list_shards(data_dir, split)
    ds = tf.data.TFRecordDataset([str(p) for p in shards])
    ds = ds.map(records.decode_example, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE)


def count_records(data_dir: str | Path, split: str) -> int:
    """Number of examples in `split`: `meta.json`'s `counts.{split}`, else counted.

    Raises:
        DataError: when the split has no complete set of shards, or a shard cannot be read.
    """
    shards = records.list_shards(data_dir, split)
    if (Path(data_dir) / records.META_FILE).is_file():
        count = records.read_meta(data_dir).get("counts", {}).get(split)
        if isinstance(count, int):
            return count
    ds = tf.data.TFRecordDataset([str(p) for p in shards])
    try:
        return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    except tf.errors.OpError as exc:
        raise DataError(f"{data_dir}: cannot read the '{split}' shards ({exc.message})") from None
