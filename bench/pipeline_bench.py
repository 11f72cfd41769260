"""Throughput of the training input pipeline alone (no model), in images per second.

Writes synthetic VOC-sized JPEG records (500x375, textured so they compress like photos) to a
temporary directory, then times `kfcn.data.pipeline.train_dataset` after a warm-up, once with the
full random augmentation (scale + crop + flip) and once with `resize_pad`.

    python bench/pipeline_bench.py [--records 200] [--batch 8] [--crop 512] [--steps 50]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from kfcn.config import DataConfig
from kfcn.data import pipeline, records
from kfcn.palette import IGNORE_LABEL


def synthetic_jpeg(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A smooth random colour field plus grain: about the JPEG size of a VOC photo."""
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    image = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float32)
    image = image + rng.normal(0, 10, image.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def synthetic_label(rng: np.random.Generator, width: int, height: int) -> bytes:
    label = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(label)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
        box = [x0, y0, x0 + int(rng.integers(40, 200)), y0 + int(rng.integers(40, 200))]
        draw.ellipse(box, fill=int(rng.integers(1, 21)), outline=IGNORE_LABEL, width=3)
    return records.encode_label_png(np.asarray(label))


def write_records(data_dir: Path, n: int, per_shard: int = 50) -> int:
    """Write `n` records of split 'train'; returns the total JPEG bytes."""
    rng = np.random.default_rng(0)
    count = -(-n // per_shard)
    total = 0
    for index in range(count):
        path = data_dir / records.shard_name("train", index, count)
        with tf.io.TFRecordWriter(str(path)) as writer:
            for i in range(index * per_shard, min(n, (index + 1) * per_shard)):
                jpeg = synthetic_jpeg(rng, 500, 375)
                total += len(jpeg)
                label = synthetic_label(rng, 500, 375)
                writer.write(records.encode_example(jpeg, f"img{i:05d}", 375, 500, label))
    return total


def images_per_second(ds: tf.data.Dataset, batch: int, warmup: int, steps: int) -> float:
    iterator = iter(ds)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch / (time.perf_counter() - start)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores usable; Python {platform.python_version()}, TF {tf.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=10, help="batches before timing")
    parser.add_argument("--steps", type=int, default=50, help="batches timed")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        jpeg_bytes = write_records(Path(tmp), args.records)
        print(
            f"data: {args.records} records of 500x375 JPEG (mean {jpeg_bytes / args.records / 1024:.0f}"
            f" KiB); batch {args.batch}, crop {args.crop}, {args.warmup} warm-up + "
            f"{args.steps} timed batches"
        )
        base = DataConfig(crop_size=args.crop)
        for label, cfg in (
            ("random (scale 0.5-2 + crop + flip)", base),
            ("resize_pad (+ flip)", replace(base, augment="resize_pad")),
        ):
            ds = pipeline.train_dataset(tmp, "train", cfg, args.batch, seed=0)
            rate = images_per_second(ds, args.batch, args.warmup, args.steps)
            print(f"{label:38s} {rate:7.1f} images/s")


if __name__ == "__main__":
    main()
