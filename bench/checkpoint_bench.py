"""Cost of committing one training epoch (`kfcn.checkpoint.commit_epoch`) for a full-size FCN.

    python -m bench.checkpoint_bench [--variant fcn8] [--repeats 3] [--dir /tmp]

A commit writes the model + Adam state (`epoch-N.weights.h5`), the best model when the epoch
improved (`best-epoch-N.keras`), `state.json`, and then `history.csv` and the `best.keras` link.
Prints the seconds per commit (median) with and without a new best, and the bytes written.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import keras

from bench.common import describe_machine, machine_info
from kfcn.checkpoint import checkpoint_dir, commit_epoch
from kfcn.config import Config
from kfcn.keras_compat import build_for_fit
from kfcn.losses import MaskedSparseCrossEntropy
from kfcn.models import build_fcn, make_info, save_model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="fcn8", choices=("fcn32", "fcn16", "fcn8"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args(argv)
    print(describe_machine(machine_info()))

    model = build_fcn(args.variant, num_classes=21, backbone_weights="none")
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=MaskedSparseCrossEntropy())
    build_for_fit(model, (64, 64, 3), (64, 64))  # creates Adam's moments, as training does
    info = make_info(args.variant, Config(), None, None)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        stage = Path(tmp) / args.variant
        timings = {"with a new best": [], "without": []}
        epoch = 0
        for _ in range(args.repeats):
            for kind in timings:
                epoch += 1
                start = time.perf_counter()
                commit_epoch(
                    stage,
                    model,
                    epoch,
                    {"loss": 1.0, "val_mean_iou": float(epoch)},
                    best_score=float(epoch) if kind == "with a new best" else None,
                    save_best=lambda path: save_model(model, path, info),
                )
                timings[kind].append(time.perf_counter() - start)
        files = {p.name: p.stat().st_size for p in checkpoint_dir(stage).iterdir()}
    weights = next(size for name, size in files.items() if name.endswith(".weights.h5"))
    best = next(size for name, size in files.items() if name.endswith(".keras"))
    print(f"{args.variant}: {model.count_params():,} parameters (+ 2 Adam moments each)")
    for kind, values in timings.items():
        print(f"  commit {kind}: {statistics.median(values):.2f} s (median of {len(values)})")
    print(f"  bytes: weights + optimizer {weights:,}; best model {best:,}; state.json ~1 KB")


if __name__ == "__main__":
    main()
