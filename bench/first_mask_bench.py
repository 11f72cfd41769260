"""Time to first mask: `kfcn predict one.jpg --model M`, against its floor.

    python -m bench.first_mask_bench --model M.keras --image one.jpg [--rounds 3]

The floor is what no loader can save: `import tensorflow` plus one forward pass of M on the image
(the first call of a fresh process, graph tracing included). Each round, in fresh processes:

1. a probe that times `import tensorflow`, the rest of kfcn's imports, the model load (kfcn's
   loader and `keras.saving.load_model`), reading the file's bytes, and the first and second
   forward pass;
2. `kfcn predict` end to end (wall and CPU seconds of the whole process);
3. the same with the model loaded by `keras.saving.load_model`, as before kfcn read files itself.

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

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import tensorflow as tf
t1 = time.perf_counter()
import keras
from kfcn.images import read_image
from kfcn.models import load_model
from kfcn.padding import predict_classes
t2 = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    while f.read(1 << 24):
        pass
t3 = time.perf_counter()
model, _ = load_model(sys.argv[1])
t4 = time.perf_counter()
image = read_image(sys.argv[2])
t5 = time.perf_counter()
predict_classes(model, [image])
t6 = time.perf_counter()
predict_classes(model, [image])
t7 = time.perf_counter()
del model
t8 = time.perf_counter()
keras.saving.load_model(sys.argv[1], compile=False, safe_mode=True)
t9 = time.perf_counter()
print(json.dumps({"import_tf": t1 - t0, "import_kfcn": t2 - t1, "read_file": t3 - t2,
    "load": t4 - t3, "read_image": t5 - t4, "forward_first": t6 - t5, "forward": t7 - t6,
    "load_keras": t9 - t8}))
"""

KERAS_LOADER = (
    "import sys; import kfcn.models.io as io; io._fast_load = lambda *a, **k: None; "
    "from kfcn.cli import main; sys.argv[0] = 'kfcn'; main()"
)


def _run(argv: list[str]) -> tuple[float, float, str]:
    """Run a command; return its wall seconds, CPU seconds (user + sys) and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def measure(model: str, image: str, rounds: int) -> dict:
    """Medians over `rounds` of the probe's steps and of `kfcn predict` with both loaders."""
    with open(model, "rb") as f:  # warm the page cache
        while f.read(1 << 24):
            pass
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as out:
        predict = ["predict", image, "--model", model, "--out", out]
        for _ in range(rounds):
            _, _, text = _run([sys.executable, "-c", PROBE, model, image])
            for key, value in json.loads(text.strip().splitlines()[-1]).items():
                samples.setdefault(key, []).append(value)
            wall, cpu, _ = _run([sys.executable, "-m", "kfcn.cli", *predict])
            samples.setdefault("predict_wall", []).append(wall)
            samples.setdefault("predict_cpu", []).append(cpu)
            wall, cpu, _ = _run([sys.executable, "-c", KERAS_LOADER, *predict])
            samples.setdefault("predict_keras_loader_wall", []).append(wall)
            samples.setdefault("predict_keras_loader_cpu", []).append(cpu)
            floor = samples["import_tf"][-1] + samples["forward_first"][-1]
            samples.setdefault("floor", []).append(floor)
            samples.setdefault("ratio", []).append(samples["predict_wall"][-1] / floor)
            samples.setdefault("ratio_keras_loader", []).append(
                samples["predict_keras_loader_wall"][-1] / floor
            )
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
