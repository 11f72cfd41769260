"""Accuracy, size and speed of one model in every export format, scored by `kfcn evaluate`.

    python -m bench.format_bench --model demo/run --data-dir demo/records --size 512x512 \
        [--calibration-images 100] [--repeats 7] [--out bench/results/formats.json] \
        [--markdown table.md]

The model is exported as a SavedModel, an ONNX file and TFLite files (float32, float16, dynamic
range, int8 calibrated on `--calibration-images` train images) at `--size`. Every file is
scored on the val split with `kfcn.evaluate.evaluate_model`, as `kfcn evaluate --model FILE`
scores it; the `.keras` model twice: at each image's size (the baseline of the SavedModel and
ONNX files) and fitted to `--size` (`--size`, the baseline of the TFLite files). Latency is the
median wall time of one call on one `--size` image (the first val image fitted to it), after a
warm-up, all formats in one process, alternating (the order turning each round, a pause
before each call); ONNX Runtime's ratio to the SavedModel is
measured in the same run. The markdown table names the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import cpu_model, write_json_atomic

TFLITE = ("none", "float16", "dynamic", "int8")


def _exports(model: str, data_dir: str, size, calibration: int, folder: Path) -> dict:
    from kfcn.export import export_model

    files = {
        "SavedModel": export_model(model, "saved_model", folder / "saved_model"),
        "ONNX": export_model(model, "onnx", folder / "model.onnx"),
    }
    for quantize in TFLITE:
        data = data_dir if quantize == "int8" else None
        out = folder / f"model-{quantize}.tflite"
        files[f"TFLite {quantize}"] = export_model(
            model, "tflite", out, size, quantize, data, calibration
        )
    return files


def _file_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _segments(keras_file: Path, files: dict, size):
    """name -> a function running one fitted (H, W, 3) uint8 image through that format."""
    import tensorflow as tf

    from kfcn.exported import load_exported
    from kfcn.models import load_model
    from kfcn.padding import predict_logits

    model, _ = load_model(keras_file)
    runners = {".keras": lambda image: tf.nn.softmax(predict_logits(model, image)).numpy()}
    loaded = {name: load_exported(path) for name, path in files.items()}
    for name, exported in loaded.items():
        runners[name] = lambda image, e=exported: e.segment(image)
    return runners, loaded


REST_S = 0.1
"""Pause before each timed call: a runtime's worker threads keep spinning for a while after a
call, and on a small host they would take the cores of the next format's call."""


def _latencies(runners: dict, image: np.ndarray, repeats: int) -> dict[str, float]:
    for run in runners.values():  # warm-up: graph tracing, allocation
        run(image)
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(repeats):
        # Alternating, so drifts of the host hit all alike; the order turns each round, so
        # no format always follows the same other one.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            time.sleep(REST_S)
            start = time.perf_counter()
            runners[name](image)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def run(args) -> dict:
    from kfcn.data import pipeline
    from kfcn.evaluate import evaluate_model
    from kfcn.export import parse_size
    from kfcn.fitting import fit_uint8
    from kfcn.runs import resolve_model

    size = parse_size(args.size)
    keras_file = resolve_model(args.model)
    with tempfile.TemporaryDirectory(prefix="format-bench-") as tmp:
        files = _exports(str(keras_file), args.data_dir, size, args.calibration_images, Path(tmp))
        scores = {
            ".keras": evaluate_model(keras_file, args.data_dir, "val", max_images=args.max_images),
            f".keras --size {args.size}": evaluate_model(
                keras_file, args.data_dir, "val", max_images=args.max_images, size=size
            ),
        }
        for name, path in files.items():
            scores[name] = evaluate_model(path, args.data_dir, "val", max_images=args.max_images)
        first = next(iter(pipeline.eval_dataset(args.data_dir, "val")))["image"]
        image = fit_uint8(first, size)[0].numpy()  # (H, W, 3) uint8
        runners, _ = _segments(keras_file, files, size)
        latency = _latencies(runners, image, args.repeats)
        sizes = {name: _file_size(path) for name, path in files.items()}
        sizes[".keras"] = _file_size(keras_file)
    rows = []
    for name, report in scores.items():
        base = scores[f".keras --size {args.size}" if name.startswith("TFLite") else ".keras"]
        runner = ".keras" if name.startswith(".keras") else name
        rows.append(
            {
                "format": name,
                "file_bytes": sizes.get(runner),
                "mean_iou_pct": 100 * report["mean_iou"],
                "delta_pct": 100 * (report["mean_iou"] - base["mean_iou"]),
                "baseline": ".keras --size" if name.startswith("TFLite") else ".keras",
                "latency_ms": 1000 * latency[runner] if not name.endswith(args.size) else None,
            }
        )
    return {
        "model": str(keras_file),
        "data_dir": str(args.data_dir),
        "images": scores[".keras"]["num_images"],
        "size": args.size,
        "cpu": cpu_model(),
        "onnx_vs_saved_model_latency": latency["ONNX"] / latency["SavedModel"],
        "rows": rows,
    }


def markdown(result: dict) -> str:
    """The README table of a result."""
    lines = [
        f"| format | file | mean IoU (%) | Δ vs baseline (pt) | median latency, one "
        f"{result['size']} image (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        size = f"{row['file_bytes'] / 1e6:.1f} MB" if row["file_bytes"] else ""
        latency = f"{row['latency_ms']:.1f}" if row["latency_ms"] is not None else ""
        delta = "" if row["format"] == ".keras" else f"{row['delta_pct']:+.3f} ({row['baseline']})"
        lines.append(
            f"| {row['format']} | {size} | {row['mean_iou_pct']:.3f} | {delta} | {latency} |"
        )
    lines.append("")
    lines.append(
        f"{result['images']} val images of `{result['data_dir']}`, model `{result['model']}`; "
        f"CPU: {result['cpu']}. ONNX Runtime / SavedModel latency: "
        f"{result['onnx_vs_saved_model_latency']:.2f}."
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=".keras file or run directory")
    parser.add_argument("--data-dir", required=True, help="a kfcn prepare directory")
    parser.add_argument("--size", default="512x512", help="TFLite input and latency size HxW")
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--max-images", type=int, default=None, help="score the first N")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per format")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    args = parser.parse_args(argv)
    result = run(args)
    table = markdown(result)
    print(table)
    if args.out is not None:
        write_json_atomic(args.out, result)
    if args.markdown is not None:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
