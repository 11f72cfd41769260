"""Inference speed: bfloat16 vs float32 predict, evaluate batching, quantized TFLite variants.

    python -m bench.inference_bench precision --model M.keras --images DIR [--rounds 3]
    python -m bench.inference_bench evaluate --model M.keras --data-dir DIR [--max-images 24]
    python -m bench.inference_bench tflite --model M.keras --data-dir DIR --size 375x500

* `precision`: `kfcn predict DIR --precision float32|bfloat16` end to end (fresh processes,
  alternating), wall seconds per run; medians and their ratio.
* `evaluate`: the model loaded once, `confusion_over_split` over the first `--max-images` val
  images at `--batch-size` 1 and 4 (alternating); images per second.
* `tflite`: one export per `--quantize` variant (float32 first); file size, the median latency
  of the interpreter on one image, and the share of mask pixels equal to the float32 file's on
  the val images of exactly `--size` (int8 calibrated on `--calibration-images` train images).

Results are printed as JSON and written to `--out` when given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import cpu_model, write_json_atomic


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def bench_precision(model: str, images: str, rounds: int) -> dict:
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(rounds):
            for precision in times:
                argv = [sys.executable, "-m", "kfcn.cli", "predict", images, "--model", model]
                start = time.perf_counter()
                subprocess.run([*argv, "--out", out, "--precision", precision], check=True)
                times[precision].append(time.perf_counter() - start)
    medians = {key: _median(v) for key, v in times.items()}
    return {
        "wall_s": medians,
        "speedup": round(medians["float32"] / medians["bfloat16"], 3),
        "samples": times,
    }


def bench_evaluate(model: str, data_dir: str, max_images: int, rounds: int) -> dict:
    from kfcn.evaluate import confusion_over_split
    from kfcn.models import load_model

    keras_model, info = load_model(model)
    n = len(info["class_names"])
    confusion_over_split(keras_model, data_dir, "val", n, 1)  # trace once
    rates: dict[int, list[float]] = {1: [], 4: []}
    for _ in range(rounds):
        for batch in rates:
            start = time.perf_counter()
            _, count = confusion_over_split(
                keras_model, data_dir, "val", n, max_images, batch_size=batch
            )
            rates[batch].append(count / (time.perf_counter() - start))
    medians = {f"batch_{b}": _median(v) for b, v in rates.items()}
    return {
        "img_per_s": medians,
        "speedup": round(medians["batch_4"] / medians["batch_1"], 3),
        "images": max_images,
    }


def bench_tflite(model: str, data_dir: str, size: tuple[int, int], calibration: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from kfcn.data import pipeline
    from kfcn.export import export_tflite
    from kfcn.models import load_model

    keras_model, info = load_model(model)
    images = [
        ex["image"].numpy()
        for ex in pipeline.eval_dataset(data_dir, "val")
        if tuple(ex["image"].shape[:2]) == size
    ][:8]
    results: dict[str, dict] = {}
    masks: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        for quantize in ("none", "float16", "dynamic", "int8"):
            out = Path(tmp) / f"{quantize}.tflite"
            start = time.perf_counter()
            export_tflite(
                keras_model,
                out,
                size,
                info,
                quantize=quantize,
                calibration_data=data_dir if quantize == "int8" else None,
                calibration_images=calibration,
            )
            convert_s = time.perf_counter() - start
            interpreter = tf.lite.Interpreter(model_path=str(out), num_threads=2)
            run = interpreter.get_signature_runner("serving_default")
            run(image=images[0][np.newaxis])  # warm-up
            latency, outputs = [], []
            for image in images:
                start = time.perf_counter()
                outputs.append(run(image=image[np.newaxis])["mask"][0])
                latency.append(time.perf_counter() - start)
            masks[quantize] = np.stack(outputs)
            results[quantize] = {
                "mb": round(out.stat().st_size / 1e6, 1),
                "latency_s": _median(latency),
                "convert_s": round(convert_s, 1),
            }
            del interpreter, run
            out.unlink()
    for quantize, entry in results.items():
        entry["size_ratio"] = round(entry["mb"] / results["none"]["mb"], 3)
        entry["agreement"] = round(float(np.mean(masks[quantize] == masks["none"])), 4)
    return {"variants": results, "images": len(images), "size": list(size)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["precision", "evaluate", "tflite"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", help="precision: a folder of images")
    parser.add_argument("--data-dir", help="evaluate, tflite: a kfcn prepare directory")
    parser.add_argument("--max-images", type=int, default=24)
    parser.add_argument("--size", default="375x500")
    parser.add_argument("--calibration-images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.what == "precision":
        result = bench_precision(args.model, args.images, args.rounds)
    elif args.what == "evaluate":
        result = bench_evaluate(args.model, args.data_dir, args.max_images, args.rounds)
    else:
        height, width = (int(v) for v in args.size.split("x"))
        result = bench_tflite(args.model, args.data_dir, (height, width), args.calibration_images)
    result["cpu"] = cpu_model()
    print(json.dumps(result, indent=2))
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
