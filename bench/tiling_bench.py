"""Sliding-window inference and class weights, measured.

    python -m bench.tiling_bench memory [--side 6000x4000] [--tile 512]
    python -m bench.tiling_bench speed [--side 2048] [--tile 512] [--overlap 0.33] [--rounds 2]
    python -m bench.tiling_bench agreement --model RUN_OR_FILE --data-dir DIR [--tile 128]
    python -m bench.tiling_bench rare [--steps 300] [--seed 0]

* `memory`: `kfcn predict --tile` of one random 6000x4000 photo with the full-width VGG16
  FCN-8s (random weights: the widths, not the values, set the memory), in a fresh process;
  its peak resident set size (ru_maxrss) and wall time.
* `speed`: on a 2048x2048 image, the whole-image forward pass (one call) against the tiled
  prediction, the model loaded once and both traced first; medians of alternating rounds and
  their ratio (tiled / whole).
* `agreement`: a trained model on every val image larger than one window: the share of
  pixels where tiled and whole-image masks agree, and the mean IoU of each.
* `rare`: an imbalanced synthetic dataset (one class under 2 % of the pixels); FCN-8s (the
  small network) trained twice with the same seed and steps, `train.class_weights: none` and
  `median_frequency`; the rare class's IoU, recall and precision (and the mean IoU) on the val
  split for each.

Results are printed as JSON and written to `--out` when given.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine_info, spread, write_json_atomic


def _vgg_fcn8(folder: Path, widths=None, num_classes: int = 21) -> Path:
    from kfcn.config import Config
    from kfcn.models import build_fcn, make_info, save_model

    model = build_fcn("fcn8", num_classes=num_classes, backbone_weights="none", widths=widths)
    cfg = Config()
    cfg.model.backbone_weights, cfg.model.widths = "none", widths
    cfg.model.num_classes = num_classes
    return save_model(model, folder / "fcn8.keras", make_info("fcn8", cfg))


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour picture (blocks blurred by bilinear enlargement)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 64 + 2, w // 64 + 2, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def bench_memory(side: str, tile: int) -> dict:
    from PIL import Image

    w, h = (int(x) for x in side.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = _vgg_fcn8(tmp)
        Image.fromarray(_photo(h, w)).save(tmp / "photo.jpg", quality=90)
        argv = [sys.executable, "-m", "bench.tiling_bench", "_predict", str(model)]
        argv += [str(tmp / "photo.jpg"), str(tmp / "out"), str(tile)]
        start = time.perf_counter()
        child = subprocess.run(argv, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        peak_kb = json.loads(child.stdout.strip().splitlines()[-1])["peak_rss_kb"]
        with Image.open(tmp / "out" / "photo.png") as mask:
            assert mask.size == (w, h)
    return {
        "image": f"{w}x{h}",
        "model": "VGG16 FCN-8s (134 M weights)",
        "tile": tile,
        "overlap": "1/3",
        "peak_rss_gb": round(peak_kb / 2**20, 3),
        "wall_s": round(wall, 1),
    }


def _predict_child(model: str, image: str, out: str, tile: str) -> None:
    from kfcn.predict import predict_images

    predict_images(model, [image], out, tile=int(tile))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_rss_kb": peak}))


def bench_speed(side: int, tile: int, overlap: float, rounds: int) -> dict:
    from kfcn.inference import Predictor
    from kfcn.models import load_model
    from kfcn.tiling import TiledPredictor, windows

    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(_vgg_fcn8(Path(tmp)))[0]
    image = _photo(side, side)
    whole = Predictor([model])
    tiled = TiledPredictor(whole, tile, overlap)
    whole.batch_probabilities(image[np.newaxis, :tile, :tile])  # trace the window size
    whole.batch_probabilities(np.stack([image[:tile, :tile]] * 2))  # and a batch of them
    whole.classes([image])  # and the whole image's
    times: dict[str, list[float]] = {"whole": [], "tiled": []}
    for _ in range(rounds):
        for name, predictor in (("whole", whole), ("tiled", tiled)):
            start = time.perf_counter()
            predictor.classes([image])
            times[name].append(time.perf_counter() - start)
    med = {k: spread(v)["median"] for k, v in times.items()}
    n = len(windows(side, side, tile, overlap))
    return {
        "image": f"{side}x{side}",
        "model": "VGG16 FCN-8s",
        "tile": tile,
        "overlap": overlap,
        "windows": n,
        "window_pixels_over_image_pixels": round(n * tile * tile / side**2, 3),
        "seconds": {k: round(v, 2) for k, v in med.items()},
        "ratio_tiled_over_whole": round(med["tiled"] / med["whole"], 3),
        "samples": times,
    }


def bench_agreement(model: str, data_dir: str, tile: int, overlap: float) -> dict:
    from kfcn.data import pipeline
    from kfcn.inference import load_predictor
    from kfcn.metrics import ConfusionMatrix
    from kfcn.tiling import TiledPredictor

    whole, info, paths = load_predictor(model)
    tiled = TiledPredictor(whole, tile, overlap)
    n = len(info["class_names"])
    cms = {"whole": ConfusionMatrix(n), "tiled": ConfusionMatrix(n)}
    same = total = images = 0
    for ex in pipeline.eval_dataset(data_dir, "val"):
        image, label = ex["image"].numpy(), ex["label"].numpy()
        if tiled.fits(image):
            continue
        a, b = whole.classes([image])[0], tiled.classes([image])[0]
        cms["whole"].update(label, a)
        cms["tiled"].update(label, b)
        same += int((a == b).sum())
        total += a.size
        images += 1
    scores = {k: float(np.nan_to_num(cm.scores()["mean_iou"])) for k, cm in cms.items()}
    return {
        "model": str(paths[0]),
        "tile": tile,
        "overlap": overlap,
        "images_larger_than_a_window": images,
        "pixel_agreement": round(same / max(total, 1), 5),
        "mean_iou": {k: round(v, 4) for k, v in scores.items()},
    }


# --- an imbalanced dataset: background, a large "field" class, a rare small "spot" class

RARE_CLASSES = ["background", "field", "spot"]
RARE_SIZE = (96, 128)


def _rare_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = RARE_SIZE
    label = np.zeros((h, w), np.uint8)
    top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
    label[top : top + rng.integers(h // 3, h // 2), left : left + rng.integers(w // 3, w // 2)] = 1
    yy, xx = np.mgrid[:h, :w]
    if rng.random() < 0.7:  # most images hold one spot of radius 4-6 px
        cy, cx, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(4, 7)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
    colours = np.array([[90, 110, 90], [150, 140, 70], [120, 120, 100]], np.float64)
    image = colours[label] + rng.normal(0, 18, (h, w, 3))  # the spot is close to the background
    return np.clip(image, 0, 255).astype(np.uint8), label


def _write_rare(folder: Path, counts: dict[str, int], seed: int) -> np.ndarray:
    import tensorflow as tf
    from PIL import Image

    from kfcn.data.records import META_FILE, encode_example, encode_label_png, shard_name

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"counts": {}, "shards": {}, "id_files": {}, "ignore_label": 255}
    pixels = np.zeros(len(RARE_CLASSES), np.int64)
    for split, n in counts.items():
        ids = []
        with tf.io.TFRecordWriter(str(folder / shard_name(split, 0, 1))) as writer:
            for i in range(n):
                image, label = _rare_sample(rng)
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="PNG")
                ids.append(f"{split}_{i:04d}")
                example = encode_example(
                    buf.getvalue(), ids[-1], *RARE_SIZE, encode_label_png(label), "png"
                )
                writer.write(example)
                if split == "train":
                    pixels += np.bincount(label.reshape(-1), minlength=len(RARE_CLASSES))
        (folder / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        meta["counts"][split] = n
        meta["shards"][split] = [shard_name(split, 0, 1)]
        meta["id_files"][split] = f"{split}.txt"
    meta.update(num_classes=len(RARE_CLASSES), class_names=RARE_CLASSES)
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    return pixels


def bench_rare(steps: int, seed: int) -> dict:
    from kfcn.config import load_config
    from kfcn.evaluate import evaluate_model
    from kfcn.train import TrainOptions, train_stage

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pixels = _write_rare(tmp / "data", {"train": 200, "val": 60}, seed=seed)
        out["train_pixel_share"] = dict(
            zip(RARE_CLASSES, (pixels / pixels.sum()).round(4).tolist(), strict=True)
        )
        init = _vgg_fcn8(
            tmp, widths="small", num_classes=len(RARE_CLASSES)
        )  # FCN-8s from random weights
        for weights in ("none", "median_frequency"):
            sets = [
                "model.backbone_weights=none",
                "model.widths=small",
                "model.dropout=0.0",
                "model.freeze.fcn8=[]",
                "data.crop_size=96",
                "data.scale_min=0.9",
                "data.scale_max=1.1",
                "train.batch_size=8",
                "train.epochs=1",
                f"train.steps_per_epoch={steps}",
                "train.learning_rate=1e-3",
                f"train.seed={seed}",
                "train.validate=false",
                f"train.class_weights={weights}",
            ]
            cfg = load_config(None, sets)
            run = tmp / f"run-{weights}"
            opts = TrainOptions("fcn8", tmp / "data", run, init=init)
            final = train_stage(cfg, opts, echo=lambda line: print(line, file=sys.stderr))
            report = evaluate_model(final, tmp / "data", "val")
            cm = np.asarray(report["confusion_matrix"], np.float64)  # rows: true class
            spot = RARE_CLASSES.index("spot")
            out[weights] = {
                "spot_iou": round(report["per_class_iou"]["spot"] or 0.0, 4),
                "spot_recall": round(cm[spot, spot] / max(cm[spot].sum(), 1), 4),
                "spot_precision": round(cm[spot, spot] / max(cm[:, spot].sum(), 1), 4),
                "mean_iou": round(report["mean_iou"], 4),
                "per_class_iou": report["per_class_iou"],
            }
    out.update(steps=steps, seed=seed, batch=8, model="FCN-8s, model.widths: small")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    memory = sub.add_parser("memory")
    memory.add_argument("--side", default="6000x4000")
    memory.add_argument("--tile", type=int, default=512)
    speed = sub.add_parser("speed")
    speed.add_argument("--side", type=int, default=2048)
    speed.add_argument("--tile", type=int, default=512)
    speed.add_argument("--overlap", type=float, default=0.33)
    speed.add_argument("--rounds", type=int, default=2)
    agree = sub.add_parser("agreement")
    agree.add_argument("--model", required=True)
    agree.add_argument("--data-dir", required=True)
    agree.add_argument("--tile", type=int, default=128)
    agree.add_argument("--overlap", type=float, default=1 / 3)
    rare = sub.add_parser("rare")
    rare.add_argument("--steps", type=int, default=300)
    rare.add_argument("--seed", type=int, default=0)
    child = sub.add_parser("_predict")
    child.add_argument("args", nargs=4)
    for p in (memory, speed, agree, rare):
        p.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.what == "_predict":
        _predict_child(*args.args)
        return
    if args.what == "memory":
        result = bench_memory(args.side, args.tile)
    elif args.what == "speed":
        result = bench_speed(args.side, args.tile, args.overlap, args.rounds)
    elif args.what == "agreement":
        result = bench_agreement(args.model, args.data_dir, args.tile, args.overlap)
    else:
        result = bench_rare(args.steps, args.seed)
    result = {"bench": args.what, **result, "machine": machine_info()}
    print(json.dumps(result, indent=2))
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
