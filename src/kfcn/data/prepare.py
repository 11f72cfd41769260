"""SBD + VOC 2012 -> sharded TFRecords, `{split}.txt` id lists and `meta.json`.

The work is streamed shard by shard: worker processes read and check samples (`sources.load_sample`)
with a bounded number in flight, and the main process encodes them (`records.encode_example`) in
order. Every shard is written under a hidden temporary name and renamed only when complete, next to
a small manifest (its ids, the source files' sizes and times, its SHA-256) that lets a re-run keep
the shards that are already right. `meta.json` is removed first and written last, so a directory
that has it is finished.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import json
import math
import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import tensorflow as tf
from tqdm import tqdm

from kfcn import __version__
from kfcn.data.records import META_FILE, SHARD_RE, encode_example, encode_label_png, shard_name
from kfcn.data.sources import SCHEMES, LoadedSample, Sample, load_samples, plan_splits
from kfcn.errors import DataError
from kfcn.palette import IGNORE_LABEL, VOC_CLASSES, voc_colormap

_BATCH = 8  # samples per task sent to a worker: amortises the inter-process round trip
MANIFEST_FORMAT = 1
"""Bumped whenever the bytes written for the same input change, so old shards are rewritten."""


def default_workers() -> int:
    """The number of CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Loader:
    """Runs `load_sample` over samples, in order, in-process or on a lazily started process pool.

    Samples go to the workers in batches of `_BATCH`, at most `2 * workers` batches in flight, so
    memory stays flat whatever the dataset size.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> _Loader:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def load(self, samples: Sequence[Sample]) -> Iterator[tuple[Sample, LoadedSample | DataError]]:
        """Yield (sample, LoadedSample or the DataError it raised), in the order of `samples`."""
        if self.workers <= 1:
            for sample in samples:
                yield sample, load_samples([sample])[0]
            return
        if self._pool is None:
            # 'spawn' keeps TensorFlow (imported here) out of the workers; workers ignore SIGINT so
            # that Ctrl-C reaches only this process, which then cancels the pool cleanly.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=functools.partial(signal.signal, signal.SIGINT, signal.SIG_IGN),
            )
        batches = (samples[i : i + _BATCH] for i in range(0, len(samples), _BATCH))
        pending: collections.deque = collections.deque()
        for batch in batches:
            pending.append((batch, self._pool.submit(load_samples, batch)))
            if len(pending) >= 2 * self.workers:
                break
        while pending:
            batch, future = pending.popleft()
            following = next(batches, None)
            if following is not None:
                pending.append((following, self._pool.submit(load_samples, following)))
            try:
                loaded = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                ids = ", ".join(sample.id for sample in batch)
                raise DataError(
                    f"a reader process crashed on one of the samples {ids} (a damaged file?); "
                    "check their image and label files"
                ) from None
            yield from zip(batch, loaded, strict=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fingerprint(samples: Sequence[Sample]) -> str:
    """Identifies a shard's input: ids, sources, paths, and each file's size and mtime."""

    def stat(path: str) -> list[int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    entries = [
        [s.id, s.source, s.image_path, stat(s.image_path), s.label_path, stat(s.label_path)]
        for s in samples
    ]
    blob = json.dumps([MANIFEST_FORMAT, __version__, entries]).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _manifest_path(shard: Path) -> Path:
    return shard.with_name(f".{shard.name}.json")


def _reusable(shard: Path, fingerprint: str, skip_bad: bool) -> dict | None:
    """The manifest of `shard` if the finished file on disk is exactly what this run would write."""
    if not shard.is_file():
        return None
    try:
        manifest = json.loads(_manifest_path(shard).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != fingerprint:
        return None
    if manifest.get("skipped") and not skip_bad:
        return None  # rewrite, so the bad sample stops this run as it should
    if shard.stat().st_size != manifest.get("bytes") or _sha256(shard) != manifest.get("sha256"):
        return None
    return manifest


def _write_shard(
    shard: Path,
    split: str,
    samples: Sequence[Sample],
    loader: _Loader,
    skip_bad: bool,
    fingerprint: str,
    bar: tqdm,
) -> dict:
    """Write one shard under a temporary name, then its manifest, then rename it into place."""
    tmp = shard.with_name(f".{shard.name}.tmp")
    ids: list[str] = []
    skipped: list[dict] = []
    try:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for sample, loaded in loader.load(samples):
                bar.update(1)
                if isinstance(loaded, DataError):
                    if not skip_bad:
                        raise loaded
                    skipped.append({"split": split, "id": sample.id, "problem": str(loaded)})
                    continue
                label_png = encode_label_png(loaded.label)
                writer.write(
                    encode_example(
                        loaded.image_bytes, sample.id, loaded.height, loaded.width, label_png
                    )
                )
                ids.append(sample.id)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        manifest = {
            "format": MANIFEST_FORMAT,
            "shard": shard.name,
            "fingerprint": fingerprint,
            "ids": ids,
            "skipped": skipped,
            "bytes": tmp.stat().st_size,
            "sha256": _sha256(tmp),
        }
        _write_text_atomic(_manifest_path(shard), json.dumps(manifest))
        os.replace(tmp, shard)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def _write_split(
    out_dir: Path,
    split: str,
    samples: Sequence[Sample],
    loader: _Loader,
    skip_bad: bool,
    shard_size: int,
    progress: bool,
) -> dict:
    """Write (or keep) every shard of one split, then `{split}.txt`; returns the split's summary."""
    count = math.ceil(len(samples) / shard_size)
    names, ids, skipped = [], [], []
    with tqdm(total=len(samples), desc=split, unit="img", disable=not progress) as bar:
        for index in range(count):
            chunk = samples[index * shard_size : (index + 1) * shard_size]
            shard = out_dir / shard_name(split, index, count)
            fingerprint = _fingerprint(chunk)
            manifest = _reusable(shard, fingerprint, skip_bad)
            if manifest is None:
                manifest = _write_shard(shard, split, chunk, loader, skip_bad, fingerprint, bar)
            else:
                bar.update(len(chunk))
            names.append(shard.name)
            ids.extend(manifest["ids"])
            skipped.extend(manifest["skipped"])
    _write_text_atomic(out_dir / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    written = set(ids)
    return {
        "count": len(ids),
        "shards": names,
        "label_sources": {
            source: sum(1 for s in samples if s.source == source and s.id in written)
            for source in ("sbd", "voc")
        },
        "skipped": skipped,
    }


def _clear_stale(out_dir: Path, planned: dict[str, list[str]]) -> None:
    """Remove what would make a half-written directory look finished or inconsistent.

    `meta.json` and the id lists go first; then temporary files of interrupted runs, and shards
    (with their manifests) of the planned splits whose names this run will not write, e.g. those of
    an earlier run with another shard size.
    """
    (out_dir / META_FILE).unlink(missing_ok=True)
    for split in planned:
        (out_dir / f"{split}.txt").unlink(missing_ok=True)
    for path in out_dir.iterdir():
        name = path.name
        if name.startswith(".") and name.endswith(".tmp"):
            path.unlink(missing_ok=True)
            continue
        match = SHARD_RE.match(name)
        if match and match["split"] in planned and name not in planned[match["split"]]:
            path.unlink(missing_ok=True)
            _manifest_path(path).unlink(missing_ok=True)


def prepare_dataset(
    sbd_dir: str | Path,
    voc_dir: str | Path,
    out_dir: str | Path,
    scheme: str = "seed",
    workers: int | None = None,
    skip_bad: bool = False,
    shard_size: int = 1000,
    progress: bool = False,
) -> dict:
    """Write the `train` and `val` splits of SBD + VOC 2012 as sharded TFRecords.

    Args:
        sbd_dir: SBD's `benchmark_RELEASE/dataset` (img/*.jpg, cls/*.mat, train.txt, val.txt).
        voc_dir: `VOCdevkit/VOC2012` (JPEGImages, SegmentationClass, ImageSets/Segmentation).
        out_dir: created if needed; shards, `{split}.txt` and `meta.json` go here.
        scheme: 'seed' (val = first 1,200 of SBD val.txt) or 'voc12val' (val = VOC val.txt);
            see `sources.split_ids`.
        workers: processes reading samples; None = the number of CPUs, 1 = no extra processes.
        skip_bad: skip (and list in meta.json) samples that cannot be read instead of stopping.
        shard_size: samples per shard (the last shard of a split holds the rest).
        progress: show a progress bar per split on stderr.

    With `workers` > 1 the readers are spawned processes, which re-import the main module: a
    script calling this must keep its work under `if __name__ == "__main__":`.

    Returns:
        The dict written to `meta.json`.

    Raises:
        DataError: a missing directory or list file, or (unless `skip_bad`) the first bad sample.
    """
    if scheme not in SCHEMES:
        raise DataError(f"scheme '{scheme}' is not one of {', '.join(SCHEMES)}")
    if shard_size < 1:
        raise DataError(f"shard size {shard_size} must be at least 1")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise DataError(f"workers {workers} must be at least 1")
    plan = plan_splits(sbd_dir, voc_dir, scheme)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out_dir}: cannot create output directory ({exc.strerror})") from None
    planned = {}
    for split, samples in plan.items():
        count = math.ceil(len(samples) / shard_size)
        planned[split] = [shard_name(split, i, count) for i in range(count)]
    _clear_stale(out_dir, planned)
    with _Loader(workers) as loader:
        splits = {
            split: _write_split(out_dir, split, samples, loader, skip_bad, shard_size, progress)
            for split, samples in plan.items()
        }
    meta = {
        "kfcn_version": __version__,
        "scheme": scheme,
        "counts": {split: s["count"] for split, s in splits.items()},
        "shards": {split: s["shards"] for split, s in splits.items()},
        "id_files": {split: f"{split}.txt" for split in splits},
        "label_sources": {split: s["label_sources"] for split, s in splits.items()},
        "num_classes": len(VOC_CLASSES),
        "class_names": list(VOC_CLASSES),
        "palette": voc_colormap(len(VOC_CLASSES)).tolist(),
        "ignore_label": IGNORE_LABEL,
        "sbd_dir": str(Path(sbd_dir).resolve()),
        "voc_dir": str(Path(voc_dir).resolve()),
        "shard_size": shard_size,
        "skipped": [entry for s in splits.values() for entry in s["skipped"]],
    }
    _write_text_atomic(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta
