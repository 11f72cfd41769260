"""Time to first mask: `kfcn predict one.jpg --model M`, against its floor.

    python -m bench.first_mask_bench --model M.keras --image one.jpg [--rounds 3]

The floor is what no loader can save: `import tensorflow` plus one forward pass of M on the image
(the first call, graph tracing included). Both are timed inside the very `kfcn predict` process
whose wall time is measured, so the ratio holds even on a busy machine, where fresh processes
differ by seconds. Each round runs, in fresh processes:

1. `kfcn predict` end to end (wall and CPU seconds of the whole process, from outside), with
   `import tensorflow`, the model load and the forward pass timed inside;
2. the same as before: the model read by `keras.saving.load_model`, and `kfcn.cli.main` without
   the quick exit of `kfcn.cli.run`;
3. a probe that reads the model file's bytes (the raw read a loader cannot beat).

The page cache is warmed by one untimed read of the model first. Medians over the rounds are
printed and written as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import cpu_model, write_json_atomic

WRAPPER = r"""
import json, sys, time
t0 = time.perf_counter()
import tensorflow
t1 = time.perf_counter()
import kfcn.inference as inference
import kfcn.models.io as model_io
times = {"import_tf": t1 - t0, "load": 0.0, "forward": 0.0}
if sys.argv[1] == "keras":
    model_io._fast_load = lambda *args, **kwargs: None
load_model, classes = model_io.load_model, inference.Predictor.classes
def timed(key, fn):
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times[key] += time.perf_counter() - start
    return call
model_io.load_model = timed("load", load_model)
inference.Predictor.classes = timed("forward", classes)
import kfcn.models
kfcn.models.load_model = model_io.load_model
from kfcn.cli import main, run
entry = main if sys.argv[1] == "keras" else run  # before: no quick exit either
sys.argv = ["kfcn", *sys.argv[2:]]
try:
    entry()
except SystemExit:
    pass
print(json.dumps(times), file=sys.stderr)
"""

READ = r"""
import sys, time
start = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    while f.read(1 << 24):
        pass
print(time.perf_counter() - start)
"""


def _run(argv: list[str]) -> tuple[float, float, str]:
    """Run a command; return its wall seconds, CPU seconds (user + sys) and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout + done.stderr


def measure(model: str, image: str, rounds: int) -> dict:
    """Medians over `rounds` of the probe's steps and of `kfcn predict` with both loaders."""
    with open(model, "rb") as f:  # warm the page cache
        while f.read(1 << 24):
            pass
    samples: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory() as out:
        predict = ["predict", image, "--model", model, "--out", out]
        for _ in range(rounds):
            for loader in ("kfcn", "keras"):
                wall, cpu, text = _run([sys.executable, "-c", WRAPPER, loader, *predict])
                inside = json.loads(text.strip().splitlines()[-1])
                floor = inside["import_tf"] + inside["forward"]
                for key, value in inside.items():
                    add(f"{loader}_{key}", value)
                add(f"{loader}_wall", wall)
                add(f"{loader}_cpu", cpu)
                add(f"{loader}_floor", floor)
                add(f"{loader}_ratio", wall / floor)
                add(f"{loader}_other", wall - floor - inside["load"])
            add("read_file", float(_run([sys.executable, "-c", READ, model])[2].split()[0]))
    return {
        "cpu": cpu_model(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "rounds": rounds,
        "model_mb": round(Path(model).stat().st_size / 1e6, 1),
        "median_s": {key: round(statistics.median(v), 3) for key, v in samples.items()},
        "samples": {key: [round(x, 3) for x in v] for key, v in samples.items()},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file for the results.")
    args = parser.parse_args(argv)
    result = measure(args.model, args.image, args.rounds)
    print(json.dumps(result["median_s"], indent=2))
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
