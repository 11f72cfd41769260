"""Per backbone and variant: parameter count, `.keras` file size and forward time on one image.

    python -m bench.backbone_bench [--size 512] [--repeats 5] [--backbones vgg16,mobilenetv2]
                                   [--variants fcn8] [--out bench/results/backbones-cpu.json]

All models are built in one process (random weights: `backbone_weights: none`) and timed in
turns — each round times one `predict_logits` call of every model — so that a load that comes and
goes on a shared machine falls on all of them alike, and the ratios between them stay meaningful
even when the absolute times do not. Times are the median of `--repeats` rounds after one untimed
warm-up call per model.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import keras
import numpy as np

from bench.common import describe_machine, machine_info, spread, write_json_atomic
from kfcn.config import BACKBONE_NAMES, STAGES, Config
from kfcn.models import build_fcn, make_info, save_model
from kfcn.padding import predict_logits


def _file_mb(model: keras.Model, variant: str, backbone: str, folder: Path) -> float:
    cfg = Config()
    cfg.model.backbone = backbone
    path = save_model(model, folder / f"{backbone}-{variant}.keras", make_info(variant, cfg))
    size = path.stat().st_size / 1e6
    path.unlink()
    return size


def run(backbones, variants, size: int, repeats: int) -> dict:
    """Build every (backbone, variant), then time them in turns; returns the results as a dict."""
    import time

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    models, rows = {}, {}
    with tempfile.TemporaryDirectory(prefix="kfcn-bench-") as tmp:
        for backbone in backbones:
            for variant in variants:
                keras.utils.set_random_seed(0)
                model = build_fcn(variant, backbone=backbone, backbone_weights="none")
                key = f"{backbone}/{variant}"
                rows[key] = {
                    "backbone": backbone,
                    "variant": variant,
                    "params": int(model.count_params()),
                    "file_mb": _file_mb(model, variant, backbone, Path(tmp)),
                }
                predict_logits(model, image)  # warm-up: traces the forward function
                models[key] = model
                print(f"built {key}: {rows[key]['params']:,} parameters", flush=True)
    times = {key: [] for key in models}
    for r in range(repeats):
        for key, model in models.items():
            start = time.perf_counter()
            predict_logits(model, image)
            times[key].append(time.perf_counter() - start)
        print(f"round {r + 1}/{repeats} done", flush=True)
    for key, row in rows.items():
        row["forward_s"] = spread(times[key])
    return {"size": size, "repeats": repeats, "rows": list(rows.values())}


def table(results: dict) -> str:
    """A Markdown table of the results, with each forward time's speed-up over VGG16's."""
    rows = results["rows"]
    vgg = {r["variant"]: r["forward_s"]["median"] for r in rows if r["backbone"] == "vgg16"}
    size = results["size"]
    lines = [
        f"| backbone | variant | parameters | .keras size | forward {size}² (s, median (min–max)) "
        "| vs VGG16 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r["forward_s"]
        speed = f"{vgg[r['variant']] / t['median']:.1f}×" if r["variant"] in vgg else "–"
        lines.append(
            f"| {r['backbone']} | {r['variant']} | {r['params']:,} | {r['file_mb']:.1f} MB "
            f"| {t['median']:.3f} ({t['min']:.3f}–{t['max']:.3f}) | {speed} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join(BACKBONE_NAMES))
    parser.add_argument("--variants", default=",".join(STAGES))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/results/backbones-cpu.json")
    args = parser.parse_args(argv)
    info = machine_info()
    print(describe_machine(info), flush=True)
    results = run(args.backbones.split(","), args.variants.split(","), args.size, args.repeats)
    results["machine"] = info
    write_json_atomic(args.out, results)
    print(table(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
