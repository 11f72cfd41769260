"""`kfcn prepare` throughput (images/s, bytes written) and its peak memory against dataset size.

Throughput runs on the real VOC sample when KFCN_REAL_DATA is set (an SBD directory holding its
one SBD image, and VOC lists restricted to the first `--images` VOC ids with files), otherwise on
a synthetic SBD + VOC set. Peak RSS is measured for two synthetic sets (100 and 1,000 images by
default), each prepared in a fresh child process that reports its own peak RSS (the process that
encodes and writes the shards; the reader processes hold a bounded number of samples each, and
their ru_maxrss would count the parent's pages at fork time, so it is not reported).

    python -m bench.prepare_bench [--images 200] [--rss 100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import describe_machine, fmt, machine_info, rate_stats, spread

_REPO = Path(__file__).resolve().parents[1]


def real_layout(real: Path, root: Path, limit: int) -> tuple[Path, Path]:
    """SBD + VOC directories of symlinks over the real sample: SBD = rider (val), VOC = the first
    `limit` images that have labels (all in VOC train/val lists as in the official lists)."""
    sbd = root / "benchmark_RELEASE" / "dataset"
    for sub, name in (("img", "rider.jpg"), ("cls", "rider.mat")):
        (sbd / sub).mkdir(parents=True)
        (sbd / sub / name).symlink_to(real / "SBD" / "dataset" / sub / name)
    (sbd / "train.txt").write_text("")
    (sbd / "val.txt").write_text("rider\n")
    voc = root / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for sub in ("JPEGImages", "SegmentationClass"):
        (voc / sub).symlink_to(real / "VOC2012" / sub, target_is_directory=True)
    present = sorted(p.stem for p in (real / "VOC2012" / "SegmentationClass").glob("*.png"))
    keep = set(present[:limit])
    for name in ("train", "val", "trainval"):
        text = (real / "VOC2012" / "ImageSets" / "Segmentation" / f"{name}.txt").read_text()
        ids = [i for i in text.split() if i in keep]
        (lists / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return sbd, voc


def synthetic_layout(root: Path, n: int, size=(375, 500)) -> tuple[Path, Path]:
    """A synthetic SBD + VOC set of about `n` images (80% SBD train/val, 20% VOC-only)."""
    from kfcn.data.synthetic import write_synthetic

    extra = max(1, n // 5)
    sbd_n = n - extra
    data = write_synthetic(
        root, sbd_train=sbd_n * 3 // 4, sbd_val=sbd_n - sbd_n * 3 // 4, voc_extra=extra, size=size
    )
    return data[0], data[1]


def _bytes_in(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _prepare_child(sbd: Path, voc: Path, out: Path, workers: int) -> dict:
    """Run `prepare_dataset` in a fresh child process (light reader processes, its own peak RSS)."""
    cmd = [sys.executable, "-m", "bench.prepare_bench", "--child"]
    cmd += [str(sbd), str(voc), str(out), str(workers)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(cmd, cwd=_REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput(
    real_dir: str | None, images: int, repeats: int, workers: int, size=(375, 500)
) -> dict:
    """Images/s of `prepare_dataset` (reader pool start-up included) into a fresh directory per
    repetition, and the bytes it writes against the bytes of the files it reads."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if real_dir:
            sbd, voc = real_layout(Path(real_dir), root / "src", images)
            source = "real VOC 2012 sample"
        else:
            sbd, voc = synthetic_layout(root / "src", images, size)
            source = f"synthetic {size[1]}x{size[0]}"
        reports = [_prepare_child(sbd, voc, root / f"out{i}", workers) for i in range(repeats)]
        out = root / f"out{repeats - 1}"
        ids = set((out / "train.txt").read_text().split()) | set(
            (out / "val.txt").read_text().split()
        )
        input_bytes = sum(
            f.stat().st_size
            for d in (voc / "JPEGImages", voc / "SegmentationClass", sbd / "img", sbd / "cls")
            for f in d.iterdir()
            if f.stem in ids
        )
        out_bytes = _bytes_in(out)
    times = [r["seconds"] for r in reports]
    count = reports[0]["images"]
    return {
        "source": source,
        "images": count,
        "workers": workers,
        "seconds": spread(times),
        "images_per_s": rate_stats(times, count),
        "output_bytes": out_bytes,
        "input_bytes": input_bytes,
        "main_peak_rss_mib": max(r["main_peak_rss_mib"] for r in reports),
    }


def peak_rss(n: int, workers: int, size=(240, 320)) -> dict:
    """Peak RSS (MiB) of a child process running `prepare_dataset` on `n` synthetic images."""
    with tempfile.TemporaryDirectory() as tmp:
        sbd, voc = synthetic_layout(Path(tmp) / "src", n, size)
        report = _prepare_child(sbd, voc, Path(tmp) / "out", workers)
    return {"image_size": list(size), "workers": workers, **report}


def _vm_hwm_kb() -> int:
    """This process's peak RSS in KiB. /proc's VmHWM belongs to the process's own address space;
    ru_maxrss would also count the parent's pages at the fork that started this process."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(sbd: str, voc: str, out: str, workers: str) -> None:
    """Child process: prepare, then print images, seconds and peak RSS as one JSON line."""
    from kfcn.data.prepare import prepare_dataset

    start = time.perf_counter()
    meta = prepare_dataset(sbd, voc, out, workers=int(workers))
    seconds = time.perf_counter() - start
    main_kb = _vm_hwm_kb()
    report = {
        "images": sum(meta["counts"].values()),
        "seconds": seconds,
        "main_peak_rss_mib": main_kb / 1024,
    }
    print(json.dumps(report))


def run(
    real_dir: str | None = None,
    images: int = 200,
    repeats: int = 2,
    rss_sizes: tuple[int, ...] = (100, 1000),
    workers: int | None = None,
    size=(375, 500),
    rss_image_size=(240, 320),
) -> dict:
    from kfcn.data.prepare import default_workers

    workers = workers or default_workers()
    return {
        "throughput": throughput(real_dir, images, repeats, workers, size),
        "rss": [peak_rss(n, workers, rss_image_size) for n in rss_sizes],
    }


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rss", default="100,1000", help="synthetic set sizes for peak RSS")
    args = parser.parse_args()
    print(f"machine: {describe_machine(machine_info())}")
    sizes = tuple(int(v) for v in args.rss.split(","))
    r = run(os.environ.get("KFCN_REAL_DATA"), args.images, args.repeats, sizes)
    t = r["throughput"]
    print(
        f"prepare {t['source']}: {t['images']} images, {fmt(t['images_per_s'])} img/s, "
        f"{t['output_bytes'] / 1e6:.1f} MB written"
    )
    for row in r["rss"]:
        print(f"peak RSS, {row['images']} images: {row['main_peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
