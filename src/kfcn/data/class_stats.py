"""Per-class pixel counts of a prepared split, and the median-frequency class weights from them.

`kfcn prepare` stores the counts in `meta.json` (`class_pixels`: split -> one count per class).
For a directory prepared before it did, the first training counts them once (a pass over the
split's labels, with a progress bar) and caches them in `class_pixels.json` beside the shards,
keyed by the shards' names and sizes, so a changed split is counted again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from kfcn.data import records
from kfcn.errors import DataError
from kfcn.fileio import atomic_write

CACHE_FILE = "class_pixels.json"


def _shard_key(data_dir: Path, split: str) -> list:
    return [[p.name, p.stat().st_size] for p in records.list_shards(data_dir, split)]


def class_pixel_counts(
    data_dir: str | Path, split: str, num_classes: int, progress: bool = False
) -> np.ndarray:
    """The number of pixels of each class in `split`: from `meta.json`, the cache, or counted.

    Returns:
        (num_classes,) int64 counts (IGNORE_LABEL and out-of-range values are not counted).

    Raises:
        DataError: the split has no shards, or they cannot be read.
    """
    data_dir = Path(data_dir)
    stored = (records.read_meta(data_dir).get("class_pixels") or {}).get(split)
    if isinstance(stored, list) and len(stored) == num_classes:
        return np.asarray(stored, np.int64)
    key = _shard_key(data_dir, split)
    cache = data_dir / CACHE_FILE
    try:
        cached = json.loads(cache.read_text()).get(split) or {}
    except (OSError, ValueError):
        cached = {}
    if cached.get("shards") == key and len(cached.get("counts", [])) == num_classes:
        return np.asarray(cached["counts"], np.int64)
    counts = _count(data_dir, split, num_classes, progress)
    try:
        entries = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, ValueError):
        entries = {}
    entries[split] = {"shards": key, "counts": counts.tolist()}
    try:
        atomic_write(cache, json.dumps(entries, indent=2) + "\n")
    except OSError:
        pass  # a read-only data directory: counted again next time
    return counts


def _count(data_dir: Path, split: str, num_classes: int, progress: bool) -> np.ndarray:
    shards = records.list_shards(data_dir, split)
    ds = tf.data.TFRecordDataset([str(p) for p in shards])
    ds = ds.map(
        lambda s: records.decode_label(records.parse_example(s)["label/encoded"]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.map(lambda label: tf.math.bincount(tf.cast(label, tf.int32), minlength=256))
    total = np.zeros(256, np.int64)
    desc = f"counting class pixels of {split}"
    try:
        for counts in tqdm(ds, desc=desc, unit="img", disable=not progress):
            total += counts.numpy()[:256]
    except tf.errors.OpError as exc:
        raise DataError(f"{data_dir}: cannot read the '{split}' shards ({exc.message})") from None
    return total[:num_classes]


def median_frequency_weights(counts) -> np.ndarray:
    """Median-frequency balancing, after Eigen & Fergus (2015): weight_c = median(freq) / freq_c
    with freq_c = class c's share of all counted pixels of the split (not only of the images
    where c occurs), the median taken over the classes that occur.
    A class with no pixel gets weight 0 (it never appears in a label anyway).

    Returns:
        (C,) float64 weights.
    """
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    if not present.any():
        raise DataError("no labelled pixel in the train split: cannot weight the classes")
    freq = counts / counts.sum()
    median = np.median(freq[present])
    return np.where(present, median / np.where(present, freq, 1.0), 0.0)
