"""Read the SBD and VOC 2012 downloads: id lists, the split schemes, and validated samples.

SBD (`benchmark_RELEASE/dataset`) stores labels as MATLAB structs `GTcls` in `cls/ID.mat`; VOC 2012
(`VOCdevkit/VOC2012`) stores them as palette PNGs in `SegmentationClass/ID.png`. Both become the
same thing here: a (H, W) uint8 array of class indices, 255 = not scored.

This module imports no TensorFlow, so `prepare`'s worker processes start in a fraction of a second.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from kfcn.choices import SCHEMES
from kfcn.errors import DataError
from kfcn.palette import IGNORE_LABEL, VOC_CLASSES

SBD_URL = "http://home.bharathh.info/pubs/codes/SBD/download.html"
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
SBD_LAYOUT = (
    "--sbd-dir must be SBD's benchmark_RELEASE/dataset holding img/*.jpg, cls/*.mat, train.txt "
    f"and val.txt (benchmark.tgz from {SBD_URL})"
)
VOC_LAYOUT = (
    "--voc-dir must be VOCdevkit/VOC2012 holding JPEGImages/, SegmentationClass/ and "
    "ImageSets/Segmentation/{train,val,trainval}.txt "
    f"(VOCtrainval_11-May-2012.tar from {VOC_URL})"
)

SEED_VAL_SIZE = 1200
"""Scheme `seed` validates on the first this-many ids of SBD val.txt."""


def seg11valid_ids() -> list[str]:
    """The 736 ids of seg11valid, in the published list's order (`kfcn.data.seg11valid`)."""
    from kfcn.data.seg11valid import IDS

    return list(IDS)


NUM_CLASSES = len(VOC_CLASSES)


@dataclass(frozen=True)
class Sample:
    """One planned sample: where its image and label come from."""

    id: str
    source: str  # 'sbd' or 'voc'
    image_path: str
    label_path: str


@dataclass(frozen=True)
class LoadedSample:
    """A sample read and checked: the JPEG's bytes, unchanged, and its label."""

    id: str
    image_bytes: bytes
    height: int
    width: int
    label: np.ndarray  # (H, W) uint8 class indices, IGNORE_LABEL = not scored


@dataclass(frozen=True)
class IdLists:
    """The id lists of both datasets, each in file order."""

    sbd_train: tuple[str, ...]
    sbd_val: tuple[str, ...]
    voc_train: tuple[str, ...]
    voc_val: tuple[str, ...]
    voc_trainval: tuple[str, ...]


def read_id_list(path: str | Path, layout: str) -> list[str]:
    """Ids of a list file, one per line, in file order (blank lines ignored, duplicates dropped).

    Raises:
        DataError: when the file is missing (the message explains `layout`) or an id is not a
            plain file stem.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {layout}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read id list ({exc})") from None
    ids: dict[str, None] = {}
    for number, line in enumerate(lines, start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if "/" in image_id or "\\" in image_id or image_id.startswith(".") or " " in image_id:
            raise DataError(f"{path}:{number}: '{image_id}' is not an image id like 2008_000123")
        ids[image_id] = None
    return list(ids)


def _check_layout(top: Path, subdirs: Sequence[str], nested: str, layout: str) -> None:
    """Raise a DataError naming the first of `top`/`subdirs` that is missing.

    When they exist one level further down, under `nested` (e.g. `benchmark_RELEASE/dataset`),
    the message suggests that directory instead.
    """
    for path in [top, *(top / sub for sub in subdirs)]:
        if path.is_dir():
            continue
        hint = ""
        if all((top / nested / sub).is_dir() for sub in subdirs):
            hint = f" (did you mean {top / nested}?)"
        raise DataError(f"{path}: missing{hint}; {layout}")


def read_id_lists(sbd_dir: str | Path, voc_dir: str | Path) -> IdLists:
    """Read SBD train/val.txt and VOC ImageSets/Segmentation/{train,val,trainval}.txt.

    Raises:
        DataError: naming the first missing directory or list file and the expected layout.
    """
    sbd_dir, voc_dir = Path(sbd_dir), Path(voc_dir)
    _check_layout(sbd_dir, ("img", "cls"), "dataset", SBD_LAYOUT)
    _check_layout(voc_dir, ("JPEGImages", "SegmentationClass"), "VOC2012", VOC_LAYOUT)
    sets = voc_dir / "ImageSets" / "Segmentation"
    return IdLists(
        sbd_train=tuple(read_id_list(sbd_dir / "train.txt", SBD_LAYOUT)),
        sbd_val=tuple(read_id_list(sbd_dir / "val.txt", SBD_LAYOUT)),
        voc_train=tuple(read_id_list(sets / "train.txt", VOC_LAYOUT)),
        voc_val=tuple(read_id_list(sets / "val.txt", VOC_LAYOUT)),
        voc_trainval=tuple(read_id_list(sets / "trainval.txt", VOC_LAYOUT)),
    )


def split_ids(lists: IdLists, scheme: str = "seed") -> dict[str, list[tuple[str, str]]]:
    """Assign ids to the `train` and `val` splits, each id with the dataset its label comes from.

    `seed`: val = the first `SEED_VAL_SIZE` ids of SBD val.txt; train = SBD train.txt + the rest of
    SBD val.txt + the VOC trainval ids not in SBD. Labels come from SBD wherever SBD has the id.
    `voc12val`: val = VOC val.txt; train = (SBD train ∪ SBD val ∪ VOC train) − VOC val ("train_aug").
    Labels come from VOC wherever VOC (train ∪ val ∪ trainval) has the id.
    `seg11valid` (the FCN paper's): val = the 736 seg11valid ids (`seg11valid_ids`) with VOC 2012
    labels; train = SBD train.txt with SBD labels.

    Order: val keeps its list file's order; train is sorted by id, so it does not depend on the
    order of the list files. No id is in both splits.

    Returns:
        {"train": [(id, "sbd" | "voc"), ...], "val": [...]}.
    """
    if scheme not in SCHEMES:
        raise DataError(f"scheme '{scheme}' is not one of {', '.join(SCHEMES)}")
    sbd_ids = set(lists.sbd_train) | set(lists.sbd_val)
    if scheme == "seed":
        val_ids = list(lists.sbd_val[:SEED_VAL_SIZE])
        train_ids = set(lists.sbd_train) | set(lists.sbd_val[SEED_VAL_SIZE:])
        train_ids |= set(lists.voc_trainval)
        val = [(i, "sbd") for i in val_ids]
        in_sbd = sbd_ids
    elif scheme == "seg11valid":
        val_ids = seg11valid_ids()
        train_ids = set(lists.sbd_train)
        val = [(i, "voc") for i in val_ids]
        in_sbd = train_ids
    else:
        voc_ids = set(lists.voc_train) | set(lists.voc_val) | set(lists.voc_trainval)
        val_ids = list(lists.voc_val)
        train_ids = sbd_ids | set(lists.voc_train)
        val = [(i, "voc") for i in val_ids]
        in_sbd = sbd_ids - voc_ids
    train_ids -= set(val_ids)
    train = [(i, "sbd" if i in in_sbd else "voc") for i in sorted(train_ids)]
    return {"train": train, "val": val}


def sample_for(image_id: str, source: str, sbd_dir: str | Path, voc_dir: str | Path) -> Sample:
    """The image and label paths of `image_id` in dataset `source` ('sbd' or 'voc')."""
    if source == "sbd":
        base = Path(sbd_dir)
        return Sample(
            image_id,
            source,
            str(base / "img" / f"{image_id}.jpg"),
            str(base / "cls" / f"{image_id}.mat"),
        )
    base = Path(voc_dir)
    return Sample(
        image_id,
        source,
        str(base / "JPEGImages" / f"{image_id}.jpg"),
        str(base / "SegmentationClass" / f"{image_id}.png"),
    )


def plan_splits(
    sbd_dir: str | Path, voc_dir: str | Path, scheme: str = "seed"
) -> dict[str, list[Sample]]:
    """Read both datasets' lists and return the samples of each split, in record order.

    Raises:
        DataError: for a missing directory or list file, an unknown scheme, or an empty split.
    """
    splits = split_ids(read_id_lists(sbd_dir, voc_dir), scheme)
    for split, entries in splits.items():
        if not entries:
            where = "SBD val.txt" if scheme == "seed" and split == "val" else "the id lists"
            raise DataError(f"split '{split}' of scheme '{scheme}' is empty; check {where}")
    return {
        split: [sample_for(i, source, sbd_dir, voc_dir) for i, source in entries]
        for split, entries in splits.items()
    }


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def read_bytes(path: Path, what: str) -> bytes:
    """The bytes of the file at `path`; `what` ('image', 'label') names it in messages.

    Raises:
        DataError: the file is missing or cannot be read.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file missing") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({_one_line(exc)})") from None


def _struct_field(value, name: str):
    """Field `name` of a MATLAB struct as loaded by scipy, whether or not it was squeezed."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, np.ndarray) and value.dtype.names and name in value.dtype.names:
        return value[name].reshape(-1)[0] if value.size == 1 else None
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)


def _as_label(values: np.ndarray, path: Path) -> np.ndarray:
    """Check a label array (2-D, integral, values 0..20 or 255) and return it as uint8."""
    values = np.asarray(values)
    if values.ndim != 2 or values.size == 0:
        raise DataError(f"{path}: label has shape {values.shape}; expected a 2-D (H, W) array")
    if values.dtype != np.uint8:
        if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
            raise DataError(f"{path}: label has dtype {values.dtype}; expected integers")
        if values.min() < 0 or values.max() > 255 or not np.array_equal(values, np.round(values)):
            raise DataError(f"{path}: label values are not integers in 0..255")
        values = values.astype(np.uint8)
    counts = np.bincount(values.reshape(-1), minlength=256)
    bad = np.flatnonzero(counts[NUM_CLASSES:IGNORE_LABEL])
    if bad.size:
        shown = ", ".join(str(v + NUM_CLASSES) for v in bad[:5])
        raise DataError(
            f"{path}: label values {shown} out of range; expected 0..{NUM_CLASSES - 1} "
            f"or {IGNORE_LABEL}"
        )
    return values


def _check_mat5(data: bytes, path: Path) -> None:
    """Check that `data` is a whole MATLAB 5 file: every top-level element is complete and every
    compressed one inflates to its end with a valid checksum.

    scipy's reader can crash the whole process on a truncated or corrupt file; this finds such
    damage first.
    """
    order = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if len(data) < 128 or order is None:
        raise DataError(f"{path}: not a MATLAB 5 .mat file (or truncated)")
    version = struct.unpack(order + "H", data[124:126])[0]
    if version != 0x0100:
        raise DataError(f"{path}: MAT-file version {version:#06x}; expected MATLAB 5 (0x0100)")
    pos = 128
    while pos < len(data):
        if pos + 8 > len(data):
            raise DataError(f"{path}: truncated .mat file")
        kind, size = struct.unpack(order + "II", data[pos : pos + 8])
        if kind >> 16:  # a small element: its data fits in the 8-byte tag
            pos += 8
            continue
        end = pos + 8 + size
        if end > len(data):
            raise DataError(f"{path}: truncated .mat file")
        if kind == 15:  # miCOMPRESSED
            inflater = zlib.decompressobj()
            try:
                inflater.decompress(data[pos + 8 : end])
            except zlib.error as exc:
                raise DataError(f"{path}: corrupt .mat file ({exc})") from None
            if not inflater.eof:
                raise DataError(f"{path}: truncated .mat file (compressed data ends early)")
        pos = end


def read_sbd_label(path: str | Path) -> np.ndarray:
    """The class-index label of an SBD `cls/ID.mat`: its `GTcls.Segmentation`, (H, W) uint8.

    Raises:
        DataError: when the file is missing, damaged, lacks GTcls.Segmentation or holds
            values other than 0..20 and 255.
    """
    path = Path(path)
    data = read_bytes(path, "label")
    _check_mat5(data, path)
    try:
        # squeeze_me=False keeps every field's shape fixed: squeezing turns a one-class file's
        # CategoriesPresent into a plain int and would do the same to a 1-pixel-high image.
        mat = scipy.io.loadmat(
            io.BytesIO(data), squeeze_me=False, struct_as_record=False, variable_names=["GTcls"]
        )
    # scipy raises many kinds of error on a malformed file (IndexError, ZeroDivisionError, ...).
    except Exception as exc:
        raise DataError(f"{path}: unreadable .mat file ({_one_line(exc)})") from None
    segmentation = _struct_field(mat.get("GTcls"), "Segmentation")
    if segmentation is None:
        raise DataError(f"{path}: no GTcls.Segmentation; expected an SBD cls/*.mat file")
    return _as_label(segmentation, path)


def read_voc_label(path: str | Path) -> np.ndarray:
    """The class-index label of a VOC `SegmentationClass/ID.png`, (H, W) uint8.

    The PNG is a palette image: its pixel values are the class indices (255 = void); the palette
    colours are only for display and are never read.

    Raises:
        DataError: when the file is missing, unreadable, not a palette/greyscale PNG, or holds
            values other than 0..20 and 255.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file missing")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise DataError(
                    f"{path}: label PNG has mode {image.mode}; expected a palette ('P') or "
                    "greyscale ('L') PNG of class indices"
                )
            label = np.array(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable label PNG ({_one_line(exc)})") from None
    return _as_label(label, path)


def read_jpeg(path: str | Path) -> tuple[bytes, int, int]:
    """The bytes of a JPEG file, checked to decode completely, and its (height, width).

    Raises:
        DataError: when the file is missing, not a JPEG, truncated or corrupt.
    """
    path = Path(path)
    data = read_bytes(path, "image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, mode, (width, height) = image.format, image.mode, image.size
            image.load()  # decodes every scanline: a truncated file raises here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable or truncated JPEG ({_one_line(exc)})") from None
    if kind != "JPEG":
        raise DataError(f"{path}: not a JPEG (the file holds {kind} data)")
    if mode not in ("RGB", "L"):
        raise DataError(f"{path}: JPEG colour mode {mode}; expected RGB or greyscale")
    return data, height, width


def load_sample(sample: Sample) -> LoadedSample:
    """Read and check one sample: JPEG decodes fully, label is valid and matches its size.

    Runs in `prepare`'s worker processes.

    Raises:
        DataError: one line naming the file at fault and the problem.
    """
    data, height, width = read_jpeg(sample.image_path)
    if sample.source == "sbd":
        label = read_sbd_label(sample.label_path)
    else:
        label = read_voc_label(sample.label_path)
    if label.shape != (height, width):
        raise DataError(
            f"{sample.label_path}: label is {label.shape[0]}x{label.shape[1]} but its image "
            f"{sample.image_path} is {height}x{width} (HxW)"
        )
    return LoadedSample(sample.id, data, height, width, label)


def load_samples(samples: Sequence[Sample]) -> list[LoadedSample | DataError]:
    """`load_sample` over a batch; a sample's DataError is returned in its place, not raised.

    This is the unit of work of `prepare`'s worker processes: a batch costs one round trip.
    """
    results: list[LoadedSample | DataError] = []
    for sample in samples:
        try:
            results.append(load_sample(sample))
        except DataError as exc:
            results.append(exc)
    return results
