"""ONNX Runtime against the SavedModel: latency of one image, per backbone and width.

    python -m bench.onnx_latency_bench [--backbone vgg16] [--widths full] [--variant fcn8] \
        [--size 512x512] [--repeats 9] [--out bench/results/onnx-latency-cpu.json]

Builds the FCN (random weights: the latency does not depend on their values), exports it with
`kfcn.export.export_model`'s SavedModel and ONNX writers, loads both as `kfcn evaluate` does
(`kfcn.exported.load_exported`) and times one `--size` uint8 image per call, alternating the two
formats in one process after a warm-up. `bench.format_bench` gives the same ratio for the demo's
trained small network; this gives it at the size users deploy.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.common import cpu_model, write_json_atomic
from bench.format_bench import _latencies


def run(args) -> dict:
    from kfcn.config import Config
    from kfcn.export import export_onnx, export_saved_model, parse_size
    from kfcn.exported import load_exported
    from kfcn.models import build_fcn, make_info

    size = parse_size(args.size)
    widths = None if args.widths == "full" else args.widths
    info = make_info(args.variant, Config())  # the VOC classes, names and colours
    classes = len(info["class_names"])
    model = build_fcn(args.variant, classes, args.backbone, backbone_weights="none", widths=widths)
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="onnx-latency-") as tmp:
        files = {
            "SavedModel": export_saved_model(model, Path(tmp) / "saved_model", info),
            "ONNX": export_onnx(model, Path(tmp) / "model.onnx", info),
        }
        del model
        runners = {name: load_exported(path).segment for name, path in files.items()}
        latency = _latencies(runners, image, args.repeats)
    return {
        "backbone": args.backbone,
        "widths": args.widths,
        "variant": args.variant,
        "size": args.size,
        "cpu": cpu_model(),
        "latency_ms": {name: 1000 * value for name, value in latency.items()},
        "onnx_vs_saved_model_latency": latency["ONNX"] / latency["SavedModel"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vgg16", help="vgg16, resnet50 or mobilenetv2")
    parser.add_argument("--widths", default="full", help="VGG16: full or small")
    parser.add_argument("--variant", default="fcn8", help="fcn32, fcn16 or fcn8")
    parser.add_argument("--size", default="512x512", help="the image size HxW")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per format")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = parser.parse_args(argv)
    result = run(args)
    times = ", ".join(f"{name} {ms:.1f} ms" for name, ms in result["latency_ms"].items())
    print(
        f"{args.backbone} ({args.widths}) {args.variant}, one {args.size} image: {times}; "
        f"ONNX Runtime / SavedModel {result['onnx_vs_saved_model_latency']:.2f} "
        f"(CPU: {result['cpu']})"
    )
    if args.out is not None:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
