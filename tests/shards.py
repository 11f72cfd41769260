"""Tiny synthetic prepared-data directories for tests: JPEG images, shape labels, meta.json.

Each image is a flat background with a rectangle and a disc, painted in the VOC colours of their
classes; the label holds those classes, with an IGNORE_LABEL outline around the rectangle. So a
pixel's colour tells its class, which lets tests check that transformed labels still line up with
their images.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from kfcn.data.records import META_FILE, encode_example, encode_label_png, shard_name
from kfcn.palette import IGNORE_LABEL, VOC_CLASSES, voc_colormap

COLORS = voc_colormap().astype(np.int64)  # (256, 3); class c is painted COLORS[c]


def make_sample(
    rng: np.random.Generator, size: tuple[int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) uint8 label (before JPEG compression)."""
    h, w = size
    label = np.zeros((h, w), dtype=np.uint8)
    rect_class, disc_class = rng.choice(np.arange(1, num_classes), size=2, replace=num_classes < 3)
    top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
    bottom, right = top + rng.integers(h // 4, h // 2 + 1), left + rng.integers(w // 4, w // 2 + 1)
    label[max(top - 1, 0) : bottom + 1, max(left - 1, 0) : right + 1] = IGNORE_LABEL
    label[top:bottom, left:right] = rect_class
    cy, cx, r = rng.integers(0, h), rng.integers(0, w), max(2, min(h, w) // 5)
    yy, xx = np.mgrid[:h, :w]
    label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = disc_class
    image = COLORS[label].astype(np.uint8)  # (H, W, 3); the ignore outline is (224, 224, 192)
    return image, label


def write_shards(
    data_dir: str | Path,
    split: str,
    n: int,
    size: tuple[int, int] = (32, 48),
    num_classes: int = 21,
    seed: int = 0,
    per_shard: int = 4,
    class_names: list[str] | None = None,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Write `n` synthetic examples of `split` as shards of `per_shard` records, plus meta.json.

    meta.json gets `counts`, `shards` and `id_files` entries for `split` (other splits already
    there are kept), `num_classes`, `class_names` and `ignore_label`, as `kfcn prepare` writes
    them (`class_names`: default the VOC names for 21 classes, else `class_0`, `class_1`, ... as
    `kfcn.models.make_info` names them); `{split}.txt` lists the ids in record order.

    Returns:
        (id, image, label) per record in record order; `image` is the JPEG as decoded (what the
        input pipeline sees), `label` the (H, W) uint8 class indices.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    count = max(1, -(-n // per_shard))
    samples = []
    for index in range(count):
        with tf.io.TFRecordWriter(str(data_dir / shard_name(split, index, count))) as writer:
            for i in range(index * per_shard, min(n, (index + 1) * per_shard)):
                image, label = make_sample(rng, size, num_classes)
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="JPEG", quality=95)
                image_id = f"{split}_{i:04d}"
                writer.write(
                    encode_example(buf.getvalue(), image_id, *size, encode_label_png(label))
                )
                decoded = np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
                samples.append((image_id, decoded, label))
    (data_dir / f"{split}.txt").write_text("".join(f"{s[0]}\n" for s in samples))
    meta_path = data_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.setdefault("counts", {})[split] = n
    meta.setdefault("shards", {})[split] = [shard_name(split, i, count) for i in range(count)]
    meta.setdefault("id_files", {})[split] = f"{split}.txt"
    meta["ignore_label"] = IGNORE_LABEL
    meta["num_classes"] = num_classes
    meta["class_names"] = (
        list(class_names)
        if class_names
        else [
            VOC_CLASSES[c] if num_classes == len(VOC_CLASSES) else f"class_{c}"
            for c in range(num_classes)
        ]
    )
    meta_path.write_text(json.dumps(meta, indent=2))
    return samples
