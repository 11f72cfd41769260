"""Cost of `kfcn convert` on a full-size (VGG16-width, 21-class, ~540 MB) Caffe FCN-8s, and the
converted model against OpenCV's Caffe importer at full width.

    python -m bench.convert_bench [--variant fcn8] [--at-once] [--size 375x500] [--dir /tmp]

Writes a random-weight `.caffemodel` and deploy prototxt (`tests.caffe_nets`, the nets the tests
use at reduced width), then runs `kfcn convert` in a fresh process, as a user would, and reports
its wall time (process start to exit, TensorFlow's import included; and the conversion alone) and
its peak resident memory. Then it scores one random image with the converted model and with
OpenCV (`opencv-python-headless<5`) and prints max |kfcn - caffe| / max |caffe| and the argmax
agreement. Targets: <= 30 s and <= 3 GB peak RSS on a 2-core host.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import describe_machine, machine_info

CHILD = """
import json, sys, time
start = time.perf_counter()
from kfcn.convert import convert_caffemodel
imported = time.perf_counter()
convert_caffemodel(sys.argv[1], sys.argv[2])
done = time.perf_counter()
print(json.dumps({"import_s": imported - start, "convert_s": done - imported}))
"""


def convert_in_child(source: Path, out: Path) -> dict:
    """Run the conversion in a fresh process: its times and peak RSS (the process's own)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:  # an earlier child was larger: the figure is not this one's
        peak_kib = float("nan")
    times = json.loads(result.stdout.strip().splitlines()[-1])
    return {"process_s": wall, **times, "peak_rss_gb": peak_kib * 1024 / 1e9}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="fcn8", choices=("fcn32", "fcn16", "fcn8"))
    parser.add_argument("--at-once", action="store_true")
    parser.add_argument("--size", default="375x500", help="HxW of the image compared with OpenCV")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args(argv)
    from tests.caffe_nets import opencv_scores, write_caffe_net

    h, w = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        widths = (64, 128, 256, 512, 512, 4096, 4096)
        net = write_caffe_net(folder, args.variant, args.at_once, widths=widths, classes=21)
        size_mb = net.caffemodel.stat().st_size / 1e6
        out = folder / "converted.keras"
        figures = convert_in_child(net.caffemodel, out)

        from kfcn.models import load_model
        from kfcn.padding import predict_logits

        model, _ = load_model(out)
        image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = predict_logits(model, image)
        ref = opencv_scores(net, image)
        error = float(np.abs(got - ref).max() / np.abs(ref).max())
        agree = float((got.argmax(-1) == ref.argmax(-1)).mean())

    print(describe_machine(machine_info()))
    print(
        f"{args.variant}{' at-once' if args.at_once else ''}: {size_mb:.0f} MB caffemodel; "
        f"kfcn convert {figures['process_s']:.1f} s in a fresh process "
        f"(import {figures['import_s']:.1f} s, conversion {figures['convert_s']:.1f} s), "
        f"peak RSS {figures['peak_rss_gb']:.2f} GB"
    )
    print(
        f"vs OpenCV at {h}x{w}: max |kfcn - caffe| / max |caffe| = {error:.2e}, argmax {agree:.6f}"
    )


if __name__ == "__main__":
    main()
