"""The TFRecord schema: the only place that knows feature names, shard names and meta.json.

One `tf.train.Example` per image:

    image/encoded   bytes   the source image file's bytes, unchanged (JPEG, or PNG for lossless sources)
    image/id        bytes   the sample id
    image/height    int64
    image/width     int64
    label/encoded   bytes   single-channel 8-bit PNG of class indices, IGNORE_LABEL = not scored
    image/format    bytes   optional: 'jpeg' (default when absent) or 'png'

Shards are `{split}-{i:05d}-of-{n:05d}.tfrecord`; `{split}.txt` lists the ids in record order and
`meta.json` (written last) describes the whole directory.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from kfcn.errors import DataError

META_FILE = "meta.json"
SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/id": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "label/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string, default_value="jpeg"),
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_label_png(label: np.ndarray) -> bytes:
    """Encode a (H, W) uint8 class-index array as a single-channel ('L') PNG."""
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"label must be a 2-D uint8 array; got {label.dtype} {label.shape}")
    buf = io.BytesIO()
    Image.fromarray(label, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def encode_example(
    image_bytes: bytes,
    image_id: str,
    height: int,
    width: int,
    label_png: bytes,
    image_format: str | None = None,
) -> bytes:
    """Serialize one sample. `image_format` is stored only when given (the VOC/SBD path omits it)."""
    feature = {
        "image/encoded": _bytes(image_bytes),
        "image/id": _bytes(image_id.encode("utf-8")),
        "image/height": _int64(height),
        "image/width": _int64(width),
        "label/encoded": _bytes(label_png),
    }
    if image_format is not None:
        feature["image/format"] = _bytes(image_format.encode("utf-8"))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # `features` is a protobuf map: without `deterministic` its key order follows the process's
    # string-hash seed, so the same sample would serialize differently from run to run.
    return example.SerializeToString(deterministic=True)


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Decode JPEG or PNG bytes to a (H, W, 3) uint8 RGB tensor.

    This is the single decode path for every image that reaches a model (training, evaluation,
    prediction, export). `INTEGER_ACCURATE` makes TF's JPEG decoder agree with PIL's; the default
    fast DCT differs on most pixels.
    """
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_png(encoded, channels=3, dtype=tf.uint8),
    )
    image.set_shape([None, None, 3])
    return image  # (H, W, 3) uint8


def decode_label(encoded: tf.Tensor) -> tf.Tensor:
    """Decode a label PNG to a (H, W) uint8 tensor of class indices."""
    label = tf.io.decode_png(encoded, channels=1, dtype=tf.uint8)
    label.set_shape([None, None, 1])
    return label[..., 0]  # (H, W) uint8


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parse one serialized example into its raw features (bytes stay encoded)."""
    return tf.io.parse_single_example(serialized, _FEATURES)


def decode_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parse and decode one example: `id`, `image` (H, W, 3) uint8, `label` (H, W) uint8."""
    raw = parse_example(serialized)
    return {
        "id": raw["image/id"],
        "image": decode_image(raw["image/encoded"]),
        "label": decode_label(raw["label/encoded"]),
    }


def shard_name(split: str, index: int, count: int) -> str:
    """File name of shard `index` (0-based) of `count` for `split`."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def list_splits(data_dir: str | Path) -> list[str]:
    """Names of the splits that have at least one finished shard in `data_dir`."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    return sorted(
        {m["split"] for p in data_dir.iterdir() if (m := SHARD_RE.match(p.name)) is not None}
    )


def list_shards(data_dir: str | Path, split: str) -> list[Path]:
    """The finished shards of `split`, in order.

    Raises:
        DataError: when the directory has no complete set of shards for `split`; the message lists
            the splits that do exist.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory does not exist (run `kfcn prepare` first)")
    shards = sorted(data_dir.glob(f"{split}-*-of-*.tfrecord"))
    shards = [p for p in shards if (m := SHARD_RE.match(p.name)) and m["split"] == split]
    if not shards:
        present = list_splits(data_dir)
        which = f"splits present: {', '.join(present)}" if present else "no shards at all"
        raise DataError(f"{data_dir}: no '{split}' shards ({split}-*.tfrecord); {which}")
    count = int(SHARD_RE.match(shards[0].name)["count"])
    if len(shards) != count:
        raise DataError(
            f"{data_dir}: split '{split}' has {len(shards)} of {count} shards; "
            "re-run `kfcn prepare` to finish it"
        )
    return shards


def read_meta(data_dir: str | Path) -> dict:
    """The `meta.json` of a prepared data directory.

    Raises:
        DataError: when it is missing or not valid JSON.
    """
    path = Path(data_dir) / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path}: missing; is {data_dir} a directory written by `kfcn prepare`?"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
