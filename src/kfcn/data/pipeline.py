"""tf.data input pipelines: prepared shards -> decoded, augmented, batched tensors.

Training order (TF Model Garden's), built anew for every epoch: shard files -> parallel
interleaved reads -> shuffle of serialized records -> this input pipeline's share of each global
batch -> decode -> augment -> batch(drop_remainder); then the epochs are chained and prefetched.
Everything after the file list is TensorFlow ops (no Python per example), and every random choice
is seeded from (seed, epoch, position in the epoch), so one seed gives the same batches on every
run, a resumed run the same batches as an uninterrupted one, and R replicas the batches of one.

Evaluation reads the records in order, one full-resolution example at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from kfcn.config import AUGMENTS, DataConfig
from kfcn.data import augment, records
from kfcn.errors import ConfigError, DataError
from kfcn.palette import IGNORE_LABEL

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
    first_epoch: int = 0,
    steps_per_epoch: int | None = None,
    num_classes: int | None = None,
) -> tf.data.Dataset:
    """Augmented training batches from the shards of `split`, epoch after epoch.

    Randomness is keyed, not carried: epoch k's file order, record shuffle and every
    augmentation draw derive from (`seed`, k, position in the epoch) only. So a run resumed at
    epoch k (`first_epoch=k`) gets exactly the batches the uninterrupted run got.

    Several replicas train exactly as one replica at their global batch. Every input pipeline
    reads the same record stream (`epoch_records`) and keeps, of each global batch, the slice of
    its own replicas (replica order: pipeline by pipeline, then its local replicas), so replica r
    of R gets records r*b .. r*b+b-1 of each global batch of R*b, with the augmentation draws of
    their global positions. Only the kept records are decoded; each pipeline reads every record
    (serialized bytes only).

    With an `input_context` (from `tf.distribute.Strategy.distribute_datasets_from_function`)
    `batch_size` is the per-replica batch (`train.batch_size`), and this pipeline yields one
    batch per local replica per step, in replica order. (A dataset handed to `model.fit` as is
    gets each batch split across the replicas: pass the global batch there.)

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
        repeat: one epoch after another, forever; off: the single epoch `first_epoch`.
        first_epoch: the (0-based) epoch the stream starts at.
        steps_per_epoch: global batches per epoch (records are cycled within the epoch to fill
            them); None: one pass over the records, the last partial global batch dropped.
        num_classes: when given, a label value >= this (other than IGNORE_LABEL) stops the
            pipeline with an error that `bad_label_error` turns into one line.

    Returns:
        Dataset of (images (B, S, S, 3) float32 in 0-255, labels (B, S, S) int32) with
        S = data_cfg.crop_size; labels are class indices or IGNORE_LABEL.

    Raises:
        DataError: when `data_dir` has no complete set of `split` shards (naming the splits it has).
        ConfigError: for an unknown `data_cfg.augment`.
    """
    if data_cfg.augment not in AUGMENTS:
        expected = " or ".join(repr(name) for name in AUGMENTS)
        raise ConfigError(
            f"data.augment = {data_cfg.augment!r} is not allowed; expected {expected}"
        )
    shards = records.list_shards(data_dir, split)
    share = ReplicaShare.of(input_context, batch_size)
    if steps_per_epoch is None:  # whole global batches only: every pipeline has the same steps
        steps_per_epoch = count_records(data_dir, split) // share.global_batch

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        stream = epoch_records(shards, data_cfg.shuffle_buffer, seed, epoch, shuffle)
        stream = stream.repeat().take(steps_per_epoch * share.global_batch)
        # The position within the epoch keys each example's augmentation draws.
        ds = stream.enumerate().filter(share.keeps)
        ds = ds.map(
            lambda i, s: (i, records.decode_example(s)),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
        if num_classes is not None:
            ds = ds.map(
                lambda i, ex: (i, check_labels(ex, num_classes, split)),
                num_parallel_calls=AUTOTUNE,
                deterministic=True,
            )
        augment_seed = epoch_key(seed, epoch)[2]
        ds = ds.map(
            _augment_fn(data_cfg, augment_seed), num_parallel_calls=AUTOTUNE, deterministic=True
        )
        return ds.batch(batch_size, drop_remainder=True)

    last = np.iinfo(np.int64).max if repeat else first_epoch + 1
    ds = tf.data.Dataset.range(first_epoch, last).flat_map(one_epoch)
    return ds.prefetch(AUTOTUNE)


@dataclass(frozen=True)
class ReplicaShare:
    """Which records of each global batch an input pipeline keeps: `kept` consecutive records
    starting at `offset` (its local replicas' per-replica batches, in replica order)."""

    global_batch: int
    offset: int
    kept: int

    @classmethod
    def of(cls, context: tf.distribute.InputContext | None, batch_size: int) -> ReplicaShare:
        if context is None:
            return cls(batch_size, 0, batch_size)
        local = context.num_replicas_in_sync // context.num_input_pipelines
        kept = local * batch_size
        return cls(
            context.num_replicas_in_sync * batch_size, context.input_pipeline_id * kept, kept
        )

    def keeps(self, position: tf.Tensor, _record=None) -> tf.Tensor:
        """True for the stream positions (0-based, in the epoch) this pipeline decodes."""
        in_batch = position % self.global_batch
        return (in_batch >= self.offset) & (in_batch < self.offset + self.kept)


def epoch_key(seed: int, epoch) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The (file order, record shuffle, augmentation) keys of `epoch`, each (2,) int64."""
    key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), epoch)
    return tuple(tf.unstack(tf.random.experimental.stateless_split(key, 3)))


def epoch_records(
    shards: list[Path], shuffle_buffer: int, seed: int, epoch, shuffle: bool = True
) -> tf.data.Dataset:
    """The serialized records of one epoch, in the order every input pipeline sees them.

    Shuffles are stateless ops keyed by the epoch (tf.data's shuffle takes no per-epoch key):
    the shard files in a keyed order, read interleaved, then shuffled within blocks of
    `shuffle_buffer` records.
    """
    file_seed, record_seed, _ = epoch_key(seed, epoch)
    files = tf.constant([str(p) for p in shards])
    if shuffle:
        files = tf.random.experimental.stateless_shuffle(files, seed=file_seed)
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(shards), MAX_PARALLEL_FILES),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if shuffle:
        ds = _block_shuffle(ds, shuffle_buffer, record_seed)
    return ds


_BAD_LABEL = "kfcn-label-out-of-range"
_BAD_LABEL_RE = re.compile(
    re.escape(_BAD_LABEL) + r"\] \[(?P<split>[^\]]*)\] \[(?P<id>[^\]]*)\] \[(?P<value>\d+)\] "
    r"\[(?P<classes>\d+)\]"
)


def check_labels(example: dict, num_classes: int, split: str) -> dict:
    """`example` unchanged, after checking that its label holds only classes and IGNORE_LABEL.

    Such a label would otherwise reach the loss as a valid pixel with a zero one-hot row (no
    loss, yet counted). The failed check carries the split, record id and largest bad value,
    which `bad_label_error` reads back.
    """
    label = tf.cast(example["label"], tf.int32)  # (H, W)
    bad = tf.logical_and(label >= num_classes, label != IGNORE_LABEL)
    value = tf.reduce_max(tf.where(bad, label, 0))
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        [_BAD_LABEL, split, example["id"], value, num_classes],
    )
    with tf.control_dependencies([check]):
        return {**example, "label": tf.identity(example["label"])}


def bad_label_error(exc: BaseException) -> DataError | None:
    """The one-line error for a failed `check_labels`, or None for any other error."""
    match = _BAD_LABEL_RE.search(str(exc))
    if match is None:
        return None
    last = int(match["classes"]) - 1
    return DataError(
        f"label value {match['value']} in record '{match['id']}' of the '{match['split']}' split "
        f"is neither a class (0-{last}) nor the ignore value {IGNORE_LABEL}; fix the masks and "
        "prepare the data again (`kfcn prepare` refuses such values)"
    )


def _block_shuffle(ds: tf.data.Dataset, block: int, seed: tf.Tensor) -> tf.data.Dataset:
    """Shuffle within consecutive blocks of `block` records, each block keyed by (seed, index):
    the mixing of a `block`-sized shuffle buffer, with no state carried between epochs."""
    ds = ds.batch(block).enumerate()
    ds = ds.map(
        lambda i, chunk: tf.random.experimental.stateless_shuffle(
            chunk, seed=tf.random.experimental.stateless_fold_in(seed, i)
        )
    )
    return ds.unbatch()


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
