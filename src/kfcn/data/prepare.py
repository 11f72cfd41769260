"""SBD + VOC 2012, or a folder of images and masks -> sharded TFRecords, `{split}.txt` id lists
and `meta.json`.

The work is streamed shard by shard: worker processes read and check samples
(`sources.load_sample` for SBD/VOC, `folder.load_pair` for a folder) with a bounded number in
flight, and the main process encodes them (`records.encode_example`) in order. Every shard is
written under a hidden temporary name and renamed only when complete, next to a small manifest
(its ids, the source files' sizes and times, the reader's settings, its SHA-256, its label pixel
counts) that lets a re-run keep the shards that are already right. `meta.json` is removed first
and written last, so a directory that has it is finished.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from kfcn import __version__
from kfcn.choices import SCHEMES
from kfcn.data import folder
from kfcn.data.classes import ClassList, check_ignore_index, default_names, load_classes
from kfcn.data.records import META_FILE, SHARD_RE, encode_example, encode_label_png, shard_name
from kfcn.data.sources import LoadedSample, Sample, load_samples, plan_splits
from kfcn.errors import DataError
from kfcn.fileio import atomic_write, sha256_file
from kfcn.palette import IGNORE_LABEL, VOC_CLASSES, voc_colormap
from kfcn.pixels import STORED_SUFFIXES

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
    """Runs a batch reader over samples, in order, in-process or on a lazily started process pool.

    Samples go to the workers in batches of `_BATCH`, at most `2 * workers` batches in flight, so
    memory stays flat whatever the dataset size.

    Args:
        workers: reader processes; 1 = read in this process.
        load_batch: a picklable function from a list of samples to a list of loaded samples or
            DataErrors (`sources.load_samples`, or `folder.load_pairs` bound to a mask reader).
        settings: JSON-ready settings of `load_batch` that change what it returns; they are part
            of every shard's fingerprint.
    """

    def __init__(self, workers: int, load_batch: Callable = load_samples, settings=None):
        self.workers = workers
        self.load_batch = load_batch
        self.settings = settings
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> _Loader:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _start_pool(self, workers: int) -> concurrent.futures.ProcessPoolExecutor:
        # 'spawn' keeps TensorFlow (imported here) out of the workers; workers ignore SIGINT so
        # that Ctrl-C reaches only this process, which then cancels the pool cleanly.
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=functools.partial(signal.signal, signal.SIGINT, signal.SIG_IGN),
        )

    def load(self, samples: Sequence[Sample]) -> Iterator[tuple[Sample, LoadedSample | DataError]]:
        """Yield (sample, LoadedSample or the DataError it raised), in the order of `samples`.

        A sample that kills its reader process (a damaged file crashing a decoder) becomes a
        DataError naming its files, like any other bad sample, so `skip_bad` can skip it.
        """
        if self.workers <= 1:
            for sample in samples:
                yield sample, self.load_batch([sample])[0]
            return
        if self._pool is None:
            self._pool = self._start_pool(self.workers)
        batches = (samples[i : i + _BATCH] for i in range(0, len(samples), _BATCH))
        pending: collections.deque = collections.deque()
        for batch in batches:
            pending.append((batch, self._pool.submit(self.load_batch, batch)))
            if len(pending) >= 2 * self.workers:
                break
        while pending:
            batch, future = pending.popleft()
            following = next(batches, None)
            if following is not None:
                pending.append((following, self._pool.submit(self.load_batch, following)))
            try:
                loaded = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                # A dead worker breaks the whole pool and every pending batch with it, and the
                # batch that reports it first need not hold the culprit: read this batch one
                # sample at a time to find it, then resubmit the rest to a fresh pool.
                self._pool.shutdown(wait=True, cancel_futures=True)
                loaded = self._load_alone(batch)
                self._pool = self._start_pool(self.workers)
                pending = collections.deque(
                    (b, self._pool.submit(self.load_batch, b)) for b, _ in pending
                )
            yield from zip(batch, loaded, strict=True)

    def _load_alone(self, batch: Sequence[Sample]) -> list[LoadedSample | DataError]:
        """Read each sample of `batch` by itself in a one-worker pool; one that kills the worker
        becomes a DataError naming its files."""
        out: list[LoadedSample | DataError] = []
        pool = self._start_pool(1)
        try:
            for sample in batch:
                try:
                    out.append(pool.submit(self.load_batch, [sample]).result()[0])
                except concurrent.futures.process.BrokenProcessPool:
                    out.append(
                        DataError(
                            f"{sample.image_path} / {sample.label_path}: reading sample "
                            f"{sample.id} killed the reader process (a damaged file?)"
                        )
                    )
                    pool.shutdown(wait=True, cancel_futures=True)
                    pool = self._start_pool(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return out


def _fingerprint(samples: Sequence[Sample], settings=None) -> str:
    """Identifies a shard's input: ids, sources, paths, each file's size and mtime, and the
    reader's settings (a folder's class list)."""

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
    parts = [MANIFEST_FORMAT, __version__, entries] + ([settings] if settings is not None else [])
    blob = json.dumps(parts).encode("utf-8")
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
    if manifest.get("fingerprint") != fingerprint or "label_counts" not in manifest:
        return None
    if manifest.get("skipped") and not skip_bad:
        return None  # rewrite, so the bad sample stops this run as it should
    if shard.stat().st_size != manifest.get("bytes") or sha256_file(shard) != manifest.get(
        "sha256"
    ):
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
    """Write one shard under a temporary name, then its manifest, then rename it into place.

    The manifest also counts the shard's label pixels per value (`label_counts`, 256 entries), from
    which a folder dataset's class count and class statistics come without another pass.
    """
    tmp = shard.with_name(f".{shard.name}.tmp")
    ids: list[str] = []
    skipped: list[dict] = []
    label_counts = np.zeros(256, np.int64)
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
                # SBD/VOC samples are JPEGs and their records leave image/format out.
                image_format = getattr(loaded, "image_format", None)
                writer.write(
                    encode_example(
                        loaded.image_bytes,
                        sample.id,
                        loaded.height,
                        loaded.width,
                        label_png,
                        image_format,
                    )
                )
                label_counts += np.bincount(loaded.label.reshape(-1), minlength=256)
                ids.append(sample.id)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        manifest = {
            "format": MANIFEST_FORMAT,
            "shard": shard.name,
            "fingerprint": fingerprint,
            "ids": ids,
            "skipped": skipped,
            "label_counts": label_counts.tolist(),
            "bytes": tmp.stat().st_size,
            "sha256": sha256_file(tmp),
        }
        atomic_write(_manifest_path(shard), json.dumps(manifest))
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
    label_counts = np.zeros(256, np.int64)
    with tqdm(total=len(samples), desc=split, unit="img", disable=not progress) as bar:
        for index in range(count):
            chunk = samples[index * shard_size : (index + 1) * shard_size]
            shard = out_dir / shard_name(split, index, count)
            fingerprint = _fingerprint(chunk, loader.settings)
            manifest = _reusable(shard, fingerprint, skip_bad)
            if manifest is None:
                manifest = _write_shard(shard, split, chunk, loader, skip_bad, fingerprint, bar)
            else:
                bar.update(len(chunk))
            names.append(shard.name)
            ids.extend(manifest["ids"])
            skipped.extend(manifest["skipped"])
            label_counts += np.asarray(manifest["label_counts"], np.int64)
    atomic_write(out_dir / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    return {
        "count": len(ids),
        "ids": ids,
        "shards": names,
        "skipped": skipped,
        "label_counts": label_counts,
    }


def _write_splits(
    out_dir: Path,
    plan: dict[str, list[Sample]],
    loader: _Loader,
    skip_bad: bool,
    shard_size: int,
    progress: bool,
) -> dict[str, dict]:
    """Create `out_dir`, clear what is stale there, and write every split of `plan` that has
    samples; a split planned empty only loses its old shards. Returns each written split's summary.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out_dir}: cannot create output directory ({exc.strerror})") from None
    planned = {}
    for split, samples in plan.items():
        count = math.ceil(len(samples) / shard_size)
        planned[split] = [shard_name(split, i, count) for i in range(count)]
    _clear_stale(out_dir, planned)
    with loader:
        return {
            split: _write_split(out_dir, split, samples, loader, skip_bad, shard_size, progress)
            for split, samples in plan.items()
            if samples
        }


def _check_options(shard_size: int, workers: int | None) -> int:
    """Check the options both dataset kinds share; returns the number of workers."""
    if shard_size < 1:
        raise DataError(f"shard size {shard_size} must be at least 1")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise DataError(f"workers {workers} must be at least 1")
    return workers


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
        scheme: 'seed' (val = first 1,200 of SBD val.txt), 'voc12val' (val = VOC val.txt) or
            'seg11valid' (val = the FCN paper's 736 ids, train = SBD train.txt); see
            `sources.split_ids`.
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
    workers = _check_options(shard_size, workers)
    plan = plan_splits(sbd_dir, voc_dir, scheme)
    out_dir = Path(out_dir)
    splits = _write_splits(out_dir, plan, _Loader(workers), skip_bad, shard_size, progress)
    label_sources = {}
    for split, summary in splits.items():
        written = set(summary["ids"])
        label_sources[split] = {
            source: sum(1 for s in plan[split] if s.source == source and s.id in written)
            for source in ("sbd", "voc")
        }
    meta = {
        "kfcn_version": __version__,
        "scheme": scheme,
        "counts": {split: s["count"] for split, s in splits.items()},
        "shards": {split: s["shards"] for split, s in splits.items()},
        "id_files": {split: f"{split}.txt" for split in splits},
        "label_sources": label_sources,
        "num_classes": len(VOC_CLASSES),
        "class_names": list(VOC_CLASSES),
        "palette": voc_colormap(len(VOC_CLASSES)).tolist(),
        "ignore_label": IGNORE_LABEL,
        "class_pixels": {
            name: s["label_counts"][: len(VOC_CLASSES)].tolist() for name, s in splits.items()
        },
        "sbd_dir": str(Path(sbd_dir).resolve()),
        "voc_dir": str(Path(voc_dir).resolve()),
        "shard_size": shard_size,
        "skipped": [entry for s in splits.values() for entry in s["skipped"]],
    }
    atomic_write(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta


def _class_list(classes: str | Path | ClassList | None) -> ClassList | None:
    if classes is None or isinstance(classes, ClassList):
        return classes
    return load_classes(classes)


def _warn_unpaired(pairs: folder.FolderPairs, images_dir: Path, masks_dir: Path, echo) -> None:
    """One warning line per kind of file left unpaired (they are also listed in meta.json)."""
    kinds = (
        (
            pairs.images_without_mask,
            f"image(s) in {images_dir} have no mask NAME.png in {masks_dir}",
        ),
        (pairs.masks_without_image, f"mask(s) in {masks_dir} have no image in {images_dir}"),
        (
            pairs.other_files,
            f"file(s) are neither images ({', '.join(STORED_SUFFIXES)}) nor masks ({folder.MASK_SUFFIX})",
        ),
    )
    for names, what in kinds:
        if names:
            shown = ", ".join(names[:10]) + (
                f" and {len(names) - 10} more" if len(names) > 10 else ""
            )
            echo(f"warning: {len(names)} {what}, not used: {shown} (listed in meta.json)")


def _folder_classes(
    class_list: ClassList | None, total: np.ndarray, ignore_index: int
) -> tuple[list[str], list[list[int]]]:
    """Class names and palette: the class list's, or `class_0..` up to the largest label seen."""
    if class_list is not None:
        return list(class_list.names), class_list.palette
    seen = np.flatnonzero(total[:IGNORE_LABEL])  # label values with pixels, IGNORE_LABEL aside
    num_classes = int(seen.max()) + 1 if seen.size else 0
    if num_classes < 2:
        found = "only class 0" if num_classes else f"only the ignore index {ignore_index}"
        hint = "check --ignore-index, or give --classes FILE"
        if total[IGNORE_LABEL] and ignore_index == IGNORE_LABEL:
            hint = "255 is the ignore index: black-and-white masks must mark objects with 1"
        raise DataError(f"the masks hold {found}; a model needs at least 2 classes ({hint})")
    check_ignore_index(ignore_index, num_classes, "--ignore-index")
    return list(default_names(num_classes)), voc_colormap(num_classes).tolist()


def prepare_folder_dataset(
    images_dir: str | Path,
    masks_dir: str | Path,
    out_dir: str | Path,
    classes: str | Path | ClassList | None = None,
    val_fraction: float = 0.1,
    val_list: str | Path | None = None,
    ignore_index: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    skip_bad: bool = False,
    shard_size: int = 1000,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Write a folder of images and masks as the `train` and `val` splits of sharded TFRecords.

    `images_dir/NAME.{jpg,jpeg,png}` pairs with `masks_dir/NAME.png` (see `kfcn.data.folder` for
    the mask kinds and how images are stored). The records, `{split}.txt` and `meta.json` have the
    same schema as the SBD/VOC ones, so `kfcn train`, `evaluate` and `predict` work unchanged and
    take the classes from here.

    Args:
        images_dir: folder of images (not recursive).
        masks_dir: folder of masks named like their images.
        out_dir: created if needed; shards, `{split}.txt` and `meta.json` go here.
        classes: a class-list YAML file (or a loaded `ClassList`): names, optional colors
            (needed for RGB colour masks; the palette of predictions) and ignore_index. Without
            it the masks must hold class indices; their count is the largest value seen + 1 and
            the classes are named `class_0`, `class_1`, ... with the VOC colours.
        val_fraction: share of the pairs drawn for val (seeded by `seed`); 0 = no val split.
        val_list: a file of NAMEs, one per line, that make up val (instead of `val_fraction`).
        ignore_index: mask value of unscored pixels, stored as 255; None = the class list's
            `ignore_index`, else 255.
        seed: seed of the val draw; the same pairs and seed give the same split.
        workers: processes reading pairs; None = the number of CPUs, 1 = no extra processes.
        skip_bad: skip (and list in meta.json) pairs that cannot be used instead of stopping.
        shard_size: pairs per shard (the last shard of a split holds the rest).
        progress: show a progress bar per split on stderr.
        echo: called with each warning line (unpaired files), before any record is written.

    Returns:
        The dict written to `meta.json`: counts, shards, class_names, palette, num_classes,
        ignore_index, class_pixels (pixels per class and split), unpaired files, skipped pairs.

    Raises:
        DataError: a bad class list, a missing or empty folder, no pairs, unknown --val-list
            names, or (unless `skip_bad`) the first bad pair: unreadable files, mask values or
            colours that are not classes, or an image and mask of different sizes.
    """
    workers = _check_options(shard_size, workers)
    class_list = _class_list(classes)
    if ignore_index is None:
        ignore_index = getattr(class_list, "ignore_index", None)
        ignore_index = IGNORE_LABEL if ignore_index is None else ignore_index
    num_classes = len(class_list.names) if class_list is not None else None
    check_ignore_index(ignore_index, num_classes, "--ignore-index")
    images_dir, masks_dir, out_dir = Path(images_dir), Path(masks_dir), Path(out_dir)
    pairs = folder.find_pairs(images_dir, masks_dir)
    _warn_unpaired(pairs, images_dir, masks_dir, echo or (lambda line: None))
    val_names = folder.read_name_list(val_list) if val_list is not None else None
    split = folder.split_names(
        [s.id for s in pairs.samples], val_fraction, val_names, seed, where=str(val_list)
    )
    by_name = {s.id: s for s in pairs.samples}
    plan = {name: [by_name[n] for n in names] for name, names in split.items()}

    reader = folder.MaskReader(
        num_classes=num_classes,
        colors=class_list.colors if class_list is not None else None,
        ignore_index=ignore_index,
        ignore_color=class_list.ignore_color if class_list is not None else None,
        source=class_list.source if class_list is not None else "the class list",
    )
    settings = dataclasses.asdict(reader)
    settings.pop("source")  # names a file in messages only; it changes no record
    loader = _Loader(workers, functools.partial(folder.load_pairs, reader), settings)
    splits = _write_splits(out_dir, plan, loader, skip_bad, shard_size, progress)

    total = sum((s["label_counts"] for s in splits.values()), np.zeros(256, np.int64))
    names, palette = _folder_classes(class_list, total, ignore_index)
    if "train" in splits and echo is not None:
        empty = [n for n, c in zip(names, splits["train"]["label_counts"], strict=False) if not c]
        if empty:
            echo(f"warning: no pixel of the train split has class {', '.join(empty)}")
    meta = {
        "kfcn_version": __version__,
        "source": "folder",
        "counts": {name: s["count"] for name, s in splits.items()},
        "shards": {name: s["shards"] for name, s in splits.items()},
        "id_files": {name: f"{name}.txt" for name in splits},
        "num_classes": len(names),
        "class_names": names,
        "palette": palette,
        "ignore_label": IGNORE_LABEL,
        "ignore_index": ignore_index,
        "ignore_color": list(reader.ignore_color) if reader.ignore_color else None,
        "classes_file": str(Path(classes).resolve()) if isinstance(classes, (str, Path)) else None,
        "class_pixels": {
            name: s["label_counts"][: len(names)].tolist() for name, s in splits.items()
        },
        "images_dir": str(images_dir.resolve()),
        "masks_dir": str(masks_dir.resolve()),
        "split": {
            "val_list": str(Path(val_list).resolve()) if val_list is not None else None,
            "val_fraction": None if val_list is not None else val_fraction,
            "seed": seed,
        },
        "shard_size": shard_size,
        "unpaired": pairs.unpaired(),
        "skipped": [entry for s in splits.values() for entry in s["skipped"]],
    }
    atomic_write(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta
