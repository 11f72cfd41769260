"""Throughput of the training input pipeline alone (no model), next to a raw-array pipeline.

kfcn: sharded TFRecords of the original JPEG bytes + PNG labels, decoded and augmented by
`kfcn.data.pipeline.train_dataset` (random scale 0.5-2, pad + random crop, flip).
Raw-array baseline (the seed's approach): every image and label stored as raw uint8 bytes in one
TFRecord file, read back with `tf.io.decode_raw` and brought to the crop size by
`tf.image.resize_with_pad`. Both read the same images: the real VOC sample when KFCN_REAL_DATA is
set, otherwise synthetic 500x375 photo-like JPEGs. Each is timed with a 1-thread tf.data pool
(per core) and with the default pool (all cores).

    python -m bench.pipeline_bench [--records 100] [--batch 8] [--crop 512] [--steps 20]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from bench.common import describe_machine, fmt, machine_info, rate_stats, time_calls
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


def synthetic_label(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    label = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(label)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
        box = [x0, y0, x0 + int(rng.integers(40, 200)), y0 + int(rng.integers(40, 200))]
        draw.ellipse(box, fill=int(rng.integers(1, 21)), outline=IGNORE_LABEL, width=3)
    return np.asarray(label)


def source_images(n: int, real_dir: str | None, size: tuple[int, int] = (375, 500)):
    """`n` (id, JPEG bytes, label (H, W) uint8): real VOC files under `real_dir`, else synthetic
    images of `size` (H, W). Returns the list and a word naming the source."""
    if real_dir:
        voc = Path(real_dir) / "VOC2012"
        labels = sorted((voc / "SegmentationClass").glob("*.png"))[:n]
        out = []
        for path in labels:
            jpeg = (voc / "JPEGImages" / f"{path.stem}.jpg").read_bytes()
            out.append((path.stem, jpeg, np.array(Image.open(path))))
        return out, f"real VOC 2012 ({len(out)} images)"
    rng = np.random.default_rng(0)
    h, w = size
    out = [(f"img{i:05d}", synthetic_jpeg(rng, w, h), synthetic_label(rng, w, h)) for i in range(n)]
    return out, f"synthetic {w}x{h} JPEG ({n} images)"


def write_kfcn_shards(data_dir: Path, samples, per_shard: int = 50) -> int:
    """kfcn's format: split 'train' in shards; returns the bytes on disk."""
    count = -(-len(samples) // per_shard)
    for index in range(count):
        path = data_dir / records.shard_name("train", index, count)
        with tf.io.TFRecordWriter(str(path)) as writer:
            for image_id, jpeg, label in samples[index * per_shard : (index + 1) * per_shard]:
                h, w = label.shape
                png = records.encode_label_png(label)
                writer.write(records.encode_example(jpeg, image_id, h, w, png))
    return sum(p.stat().st_size for p in data_dir.iterdir())


def write_raw_records(path: Path, samples) -> int:
    """The raw-array format: decoded uint8 image and label bytes in one file; returns its bytes."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for _, jpeg, label in samples:
            image = np.array(Image.open(io.BytesIO(jpeg)).convert("RGB"))  # (H, W, 3) uint8
            h, w = label.shape

            def feature(value):
                return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

            def number(value):
                return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image": feature(image.tobytes()),
                        "label": feature(label.tobytes()),
                        "height": number(h),
                        "width": number(w),
                    }
                )
            )
            writer.write(example.SerializeToString())
    return path.stat().st_size


def raw_dataset(path: Path, crop: int, batch: int) -> tf.data.Dataset:
    """The raw-array pipeline: decode_raw, resize_with_pad to `crop`, batch."""
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.string),
        "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        h, w = tf.cast(ex["height"], tf.int32), tf.cast(ex["width"], tf.int32)
        image = tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), [h, w, 3])
        label = tf.reshape(tf.io.decode_raw(ex["label"], tf.uint8), [h, w, 1])
        image = tf.image.resize_with_pad(image, crop, crop)  # (crop, crop, 3) float32
        label = tf.image.resize_with_pad(label, crop, crop, method="nearest")
        return image, tf.cast(label[..., 0], tf.int32)

    ds = tf.data.TFRecordDataset(str(path)).shuffle(100, seed=0).repeat()
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def with_threads(ds: tf.data.Dataset, threads: int | None) -> tf.data.Dataset:
    """`ds` on a private tf.data thread pool of `threads` (None = TF's default pool)."""
    if threads is None:
        return ds
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def images_per_second(ds, batch: int, warmup: int, steps: int, repeats: int) -> dict:
    iterator = iter(ds)

    def chunk():
        for _ in range(steps):
            next(iterator)

    times = time_calls(chunk, 1 if warmup else 0, repeats)
    return rate_stats(times, steps * batch)


def run(
    records_n: int = 100,
    batch: int = 8,
    crop: int = 512,
    steps: int = 10,
    repeats: int = 3,
    real_dir: str | None = None,
    size: tuple[int, int] = (375, 500),
    train_images_per_s: float | None = None,
) -> dict:
    """kfcn and raw-array pipelines on the same images, 1 thread and all cores.

    Args:
        train_images_per_s: the measured train-step rate, to say how many steps each could feed.
    """
    samples, source = source_images(records_n, real_dir, size)
    result = {"source": source, "records": len(samples), "batch": batch, "crop": crop, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        kfcn_dir, raw_path = Path(tmp) / "kfcn", Path(tmp) / "raw.tfrecord"
        kfcn_dir.mkdir()
        result["kfcn_bytes"] = write_kfcn_shards(kfcn_dir, samples)
        result["raw_bytes"] = write_raw_records(raw_path, samples)
        cfg = DataConfig(crop_size=crop, shuffle_buffer=100)
        makers = {
            "kfcn random (scale+crop+flip)": lambda: pipeline.train_dataset(
                kfcn_dir, "train", cfg, batch, seed=0
            ),
            "kfcn resize_pad (+flip)": lambda: pipeline.train_dataset(
                kfcn_dir, "train", replace(cfg, augment="resize_pad"), batch, seed=0
            ),
            "raw arrays resize_with_pad": lambda: raw_dataset(raw_path, crop, batch),
        }
        for name, make in makers.items():
            for threads in (1, None):
                rate = images_per_second(with_threads(make(), threads), batch, 1, steps, repeats)
                row = {"pipeline": name, "threads": threads or "default", "images_per_s": rate}
                if train_images_per_s:
                    row["feeds_train_steps_x"] = rate["median"] / train_images_per_s
                result["rows"].append(row)
    result["size_ratio_raw_over_kfcn"] = result["raw_bytes"] / result["kfcn_bytes"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="batches per timed repetition")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {describe_machine(machine_info())}")
    r = run(
        args.records,
        args.batch,
        args.crop,
        args.steps,
        args.repeats,
        os.environ.get("KFCN_REAL_DATA"),
    )
    print(
        f"data: {r['source']}; kfcn {r['kfcn_bytes'] / 1e6:.1f} MB, raw {r['raw_bytes'] / 1e6:.1f} MB"
    )
    for row in r["rows"]:
        print(
            f"{row['pipeline']:32s} threads={row['threads']!s:8s} {fmt(row['images_per_s'])} img/s"
        )


if __name__ == "__main__":
    main()
