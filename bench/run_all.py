"""Run every kfcn benchmark in one process and write bench/results/<device>.json (`make bench`).

    python -m bench.run_all                 # default subset, about 8 minutes on a 2-core CPU
    python -m bench.run_all --full          # every variant x batch x mode (CPU: about 1 hour)
    python -m bench.run_all --variants fcn8 --batches 1,4 --modes default,jit,mixed
    python -m bench.run_all --skip train,prepare --repeats 5

Default train subset: fcn8 at batch 1 in all three modes, fcn8 at the larger batch (default mode),
fcn32 and fcn16 at batch 1 (default mode). CPU batches are 1 and 4, GPU batches 8 and 16.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench import model_bench, peak_bench, pipeline_bench, prepare_bench
from bench.common import describe_machine, fmt, machine_info, write_json_atomic

SECTIONS = ("peak", "train", "predict", "pipeline", "prepare")
RESULTS = Path(__file__).resolve().parent / "results"


def train_plan(args, gpu: bool) -> list[tuple[str, int, str]]:
    """(variant, batch, mode) triples to measure."""
    small, large = (8, 16) if gpu else (1, 4)
    if args.variants or args.batches or args.modes or args.full:
        variants = (args.variants or "fcn32,fcn16,fcn8").split(",")
        batches = [int(b) for b in (args.batches or f"{small},{large}").split(",")]
        modes = (args.modes or ",".join(model_bench.MODES)).split(",")
        return [(v, b, m) for v in variants for b in batches for m in modes]
    plan = [("fcn8", small, m) for m in model_bench.MODES] + [("fcn8", large, "default")]
    return plan + [("fcn32", small, "default"), ("fcn16", small, "default")]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the whole train matrix")
    parser.add_argument("--variants", help="comma list of fcn32,fcn16,fcn8")
    parser.add_argument("--batches", help="comma list of train batch sizes")
    parser.add_argument("--modes", help="comma list of default,jit,mixed")
    parser.add_argument("--skip", default="", help=f"comma list of sections: {','.join(SECTIONS)}")
    parser.add_argument("--size", type=int, default=512, help="train crop / input side")
    parser.add_argument(
        "--widths", help="model.widths of the train and predict sections: small, or 7 ints a,b,..."
    )
    parser.add_argument("--predict-size", default="375,500", help="predict image H,W")
    parser.add_argument("--predict-batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1, help="untimed model steps first")
    parser.add_argument("--repeats", type=int, default=3, help="timed model steps")
    parser.add_argument("--matmul", type=int, default=2048)
    parser.add_argument("--conv", default="128,256,4", help="peak conv: size,channels,batch")
    parser.add_argument("--pipeline-records", type=int, default=100)
    parser.add_argument("--pipeline-steps", type=int, default=10)
    parser.add_argument("--prepare-images", type=int, default=200)
    parser.add_argument("--rss", default="100,1000", help="synthetic set sizes for peak RSS")
    parser.add_argument("--rss-image-size", default="240,320", help="H,W of the RSS sets")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/<device>)")
    return parser.parse_args(argv)


def run(args) -> dict:
    """Every section not skipped; returns the results dict (also written to `args.out`)."""
    skip = set(filter(None, args.skip.split(",")))
    info = machine_info()
    gpu = bool(info["gpus"])
    out = args.out or RESULTS / ("gpu.json" if gpu else "cpu.json")
    print(f"machine: {describe_machine(info)}", flush=True)
    result = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}}
    start = time.time()

    conv = tuple(int(v) for v in args.conv.split(","))
    result["peak"] = peak_bench.run(args.matmul, conv, warmup=2, repeats=max(args.repeats, 3))
    peak = result["peak"]["fp32_conv_gflops"]
    for row in result["peak"]["rows"]:
        print(f"peak {row['op']} {row['dtype']}: {fmt(row['gflops'])} GFLOP/s", flush=True)

    widths = model_bench.parse_widths(args.widths)
    if "train" not in skip:
        result["train"] = []
        for variant, batch, mode in train_plan(args, gpu):
            r = model_bench.train_step_bench(
                variant, batch, args.size, mode, args.warmup, args.repeats, peak, widths=widths
            )
            result["train"].append(r)
            print(
                f"train {variant} b{batch} {mode}: {fmt(r['images_per_s'], 2)} img/s, "
                f"{fmt(r['gflops'])} GFLOP/s, {r['ratio_to_conv_peak']:.2f} of conv peak",
                flush=True,
            )
    if "predict" not in skip:
        h, w = (int(v) for v in args.predict_size.split(","))
        r = model_bench.predict_bench(
            "fcn8", h, w, args.predict_batch, args.warmup, args.repeats, peak, widths=widths
        )
        result["predict"] = r
        print(
            f"predict fcn8 {w}x{h}: latency {r['latency_s']['median']:.2f} s, "
            f"{fmt(r['images_per_s'], 2)} img/s at batch {r['batch']}, "
            f"{r['ratio_to_conv_peak']:.2f} of conv peak",
            flush=True,
        )
    if "pipeline" not in skip:
        train_rate = None
        rows = [t for t in result.get("train", []) if t["mode"] == "default"]
        if rows:
            best = max(rows, key=lambda t: t["images_per_s"]["median"])
            train_rate = best["images_per_s"]["median"]
        r = pipeline_bench.run(
            args.pipeline_records,
            batch=8,
            crop=args.size,
            steps=args.pipeline_steps,
            repeats=3,
            real_dir=os.environ.get("KFCN_REAL_DATA"),
            train_images_per_s=train_rate,
        )
        r["train_images_per_s"] = train_rate
        result["pipeline"] = r
        print(
            f"pipeline on {r['source']}: kfcn {r['kfcn_bytes'] / 1e6:.1f} MB, "
            f"raw arrays {r['raw_bytes'] / 1e6:.1f} MB",
            flush=True,
        )
        for row in r["rows"]:
            print(f"  {row['pipeline']} threads={row['threads']}: {fmt(row['images_per_s'])} img/s")
    if "prepare" not in skip:
        rss_hw = tuple(int(v) for v in args.rss_image_size.split(","))
        sizes = tuple(int(v) for v in args.rss.split(",") if v)
        r = prepare_bench.run(
            os.environ.get("KFCN_REAL_DATA"),
            args.prepare_images,
            min(args.repeats, 2),  # each repeat is a `kfcn prepare` process
            sizes,
            None,
            rss_image_size=rss_hw,
        )
        result["prepare"] = r
        t = r["throughput"]
        print(
            f"prepare {t['source']}: {t['images']} images, {fmt(t['images_per_s'])} img/s, "
            f"{t['output_bytes'] / 1e6:.1f} MB written from {t['input_bytes'] / 1e6:.1f} MB",
            flush=True,
        )
        for row in r["rss"]:
            print(f"  peak RSS {row['images']} images: {row['main_peak_rss_mib']:.0f} MiB")
    result["total_seconds"] = time.time() - start
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json_atomic(out, result)
    print(f"wrote {out} ({result['total_seconds']:.0f} s)")
    return result


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
