"""A small synthetic dataset in the real SBD and VOC 2012 layouts, for tests and the demo.

Each image is a light, striped background with 1-3 filled rectangles or ellipses, each of one
object class and painted in (nearly) that class's VOC palette colour, so a small network learns it
in minutes. The files look like the real ones: SBD `cls/ID.mat` structs `GTcls` (Segmentation,
Boundaries, CategoriesPresent) without void pixels, and VOC palette PNGs with a 255 band along
object outlines. Ids look like real ones (2008_000123). Everything is determined by `seed`.

`write_folder_toy` writes a 3-class toy set in the layout of your own data instead: a folder of
images, a folder of masks (index and RGB colour variants) and a `classes.yaml`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.io
import scipy.ndimage
import scipy.sparse
from PIL import Image

from kfcn.errors import OptionError
from kfcn.palette import IGNORE_LABEL, VOC_CLASSES, flat_palette, voc_colormap

Size = tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]


class SyntheticDataset(NamedTuple):
    """Where `write_synthetic` put the two datasets (pass them to `kfcn prepare`)."""

    sbd_dir: Path  # root/benchmark_RELEASE/dataset
    voc_dir: Path  # root/VOCdevkit/VOC2012


def parse_size(text: str) -> Size:
    """Parse 'HxW' (e.g. '64x80') or 'H1-H2xW1-W2' (e.g. '64-96x80-128', sizes drawn per image).

    Raises:
        ValueError: when `text` is neither form or a side is below 8 pixels.
    """
    match = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*[xX]\s*(\d+)(?:-(\d+))?\s*", text)
    if match is None:
        raise ValueError(
            f"size '{text}' is not HxW (e.g. 64x80) or H1-H2xW1-W2 (e.g. 64-96x80-128)"
        )
    h1, h2, w1, w2 = (int(g) if g else None for g in match.groups())
    heights, widths = (h1, h2 or h1), (w1, w2 or w1)
    if min(heights + widths) < 8 or heights[0] > heights[1] or widths[0] > widths[1]:
        raise ValueError(f"size '{text}': sides must be at least 8 and ranges low-high")
    if heights[0] == heights[1] and widths[0] == widths[1]:
        return heights[0], widths[0]
    return heights, widths


def _size_ranges(size: Size) -> tuple[tuple[int, int], tuple[int, int]]:
    height, width = size
    heights = (height, height) if isinstance(height, int) else tuple(height)
    widths = (width, width) if isinstance(width, int) else tuple(width)
    return heights, widths


def _unique_ids(
    rng: np.random.Generator, count: int, years: Sequence[int], taken: set
) -> list[str]:
    """`count` new ids like 2008_000123, none of them in `taken`."""
    ids: list[str] = []
    # Real ids stay below _010000; larger requests get more room so drawing stays quick.
    numbers = max(10_000, 4 * count // len(years))
    while len(ids) < count:
        year = int(rng.choice(years))
        image_id = f"{year}_{int(rng.integers(1, numbers)):06d}"
        if image_id not in taken:
            taken.add(image_id)
            ids.append(image_id)
    return sorted(ids)


def _draw_sample(
    rng: np.random.Generator, heights, widths, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 and its label (H, W) uint8, without void pixels."""
    height = int(rng.integers(heights[0], heights[1] + 1))
    width = int(rng.integers(widths[0], widths[1] + 1))
    rows, cols = np.mgrid[0:height, 0:width]  # (H, W) each
    # Background: light (every channel >= ~200, farther than 64 from any class colour), striped.
    base = rng.uniform(205, 240, size=3)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
    stripes = 10 * np.sin((rows * np.cos(angle) + cols * np.sin(angle)) * 2 * np.pi / period)
    image = base + stripes[..., None] + rng.normal(0, 4, size=(height, width, 3))
    label = np.zeros((height, width), np.uint8)
    colours = voc_colormap(num_classes).astype(np.float64)
    count = int(rng.integers(1, 4))
    classes = rng.choice(np.arange(1, num_classes), size=min(count, num_classes - 1), replace=False)
    for cls in classes:
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry = max(rng.uniform(0.15, 0.35) * height, 1.0)
        rx = max(rng.uniform(0.15, 0.35) * width, 1.0)
        if rng.random() < 0.5:
            mask = (np.abs(rows - cy) <= ry) & (np.abs(cols - cx) <= rx)
        else:
            mask = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
        label[mask] = cls
        colour = colours[cls] + rng.uniform(-12, 12, size=3)
        image[mask] = colour + rng.normal(0, 6, size=(int(mask.sum()), 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def _void_band(label: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of a class change: where real VOC labels are void (255)."""
    high = scipy.ndimage.maximum_filter(label, size=3, mode="nearest")
    low = scipy.ndimage.minimum_filter(label, size=3, mode="nearest")
    return high != low


def _write_sbd_mat(path: Path, label: np.ndarray, band: np.ndarray, num_classes: int) -> None:
    """`GTcls` as in SBD: Boundaries (one sparse map per object class), Segmentation, classes."""
    boundaries = np.empty((num_classes - 1, 1), dtype=object)
    for cls in range(1, num_classes):
        boundaries[cls - 1, 0] = scipy.sparse.csc_matrix(band & (label == cls), dtype=np.uint8)
    present = np.unique(label[label > 0]).astype(np.uint8).reshape(-1, 1)
    gtcls = {"Boundaries": boundaries, "Segmentation": label, "CategoriesPresent": present}
    scipy.io.savemat(path, {"GTcls": gtcls}, do_compression=True, oned_as="column")


def _write_voc_png(path: Path, label: np.ndarray, band: np.ndarray) -> None:
    image = Image.fromarray(np.where(band, IGNORE_LABEL, label).astype(np.uint8), mode="P")
    image.putpalette(flat_palette())
    image.save(path, format="PNG")


def _write_list(path: Path, ids: Sequence[str]) -> None:
    path.write_text("".join(f"{i}\n" for i in ids))


def write_synthetic(
    root: str | Path,
    *,
    sbd_train: int = 240,
    sbd_val: int = 60,
    voc_extra: int = 40,
    size: Size = ((64, 96), (80, 128)),
    seed: int = 0,
    num_classes: int = len(VOC_CLASSES),
) -> SyntheticDataset:
    """Write a synthetic SBD and VOC 2012 under `root`, in the layouts `kfcn prepare` reads.

    VOC trainval holds `voc_extra` ids that SBD lacks plus as many SBD ids (at least 2), with VOC
    files for all of them; VOC val takes about half of each kind, so both split schemes see ids
    in both datasets. An id in both datasets has the same JPEG in both; its SBD label has no void
    pixels and its VOC label has a 255 band along object outlines, so one can tell them apart.

    Args:
        root: created if needed.
        sbd_train, sbd_val: ids in SBD train.txt and val.txt.
        voc_extra: VOC trainval ids that are not in SBD.
        size: (H, W), or ((H_min, H_max), (W_min, W_max)) to draw each image's size.
        seed: everything written depends only on the arguments.
        num_classes: classes 1..num_classes-1 appear as objects (at most 21).

    Returns:
        The SBD `dataset` directory and the VOC `VOC2012` directory.
    """
    if min(sbd_train, sbd_val, voc_extra) < 0:
        raise ValueError("sample counts must be >= 0")
    if not 2 <= num_classes <= len(VOC_CLASSES):
        raise ValueError(f"num_classes must be 2..{len(VOC_CLASSES)}; got {num_classes}")
    heights, widths = _size_ranges(size)
    root = Path(root)
    sbd_dir = root / "benchmark_RELEASE" / "dataset"
    voc_dir = root / "VOCdevkit" / "VOC2012"
    for folder in (sbd_dir / "img", sbd_dir / "cls", voc_dir / "JPEGImages"):
        folder.mkdir(parents=True, exist_ok=True)
    (voc_dir / "SegmentationClass").mkdir(exist_ok=True)
    (voc_dir / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    train_ids = _unique_ids(rng, sbd_train, (2008, 2009, 2010, 2011), taken)
    val_ids = _unique_ids(rng, sbd_val, (2008, 2009, 2010, 2011), taken)
    extra_ids = _unique_ids(rng, voc_extra, (2007,), taken)
    sbd_ids = train_ids + val_ids
    picked = rng.choice(len(sbd_ids), size=min(len(sbd_ids), max(2, voc_extra)), replace=False)
    both = sorted(sbd_ids[i] for i in picked)
    voc_val = sorted(list(both[: (len(both) + 1) // 2]) + extra_ids[: (len(extra_ids) + 1) // 2])
    trainval = sorted(set(both) | set(extra_ids))

    in_sbd, in_voc = set(sbd_ids), set(trainval)
    for index, image_id in enumerate(sorted(in_sbd | in_voc)):
        # One generator per image: an image depends on the seed and its id's rank, nothing else.
        image, label = _draw_sample(
            np.random.default_rng([seed, index]), heights, widths, num_classes
        )
        band = _void_band(label)
        jpeg = Image.fromarray(image)
        if image_id in in_sbd:
            jpeg.save(sbd_dir / "img" / f"{image_id}.jpg", format="JPEG", quality=92)
            _write_sbd_mat(sbd_dir / "cls" / f"{image_id}.mat", label, band, num_classes)
        if image_id in in_voc:
            jpeg.save(voc_dir / "JPEGImages" / f"{image_id}.jpg", format="JPEG", quality=92)
            _write_voc_png(voc_dir / "SegmentationClass" / f"{image_id}.png", label, band)

    # The lists last: they are what makes the directories look complete.
    _write_list(sbd_dir / "train.txt", train_ids)
    _write_list(sbd_dir / "val.txt", val_ids)
    sets = voc_dir / "ImageSets" / "Segmentation"
    _write_list(sets / "train.txt", sorted(set(trainval) - set(voc_val)))
    _write_list(sets / "val.txt", voc_val)
    _write_list(sets / "trainval.txt", trainval)
    return SyntheticDataset(sbd_dir, voc_dir)


TOY_CLASSES = ("background", "disc", "box")
TOY_COLORS = ((0, 0, 0), (255, 160, 0), (0, 120, 255))
TOY_IGNORE_COLOR = (255, 255, 255)
_TOY_CLASSES_YAML = """\
# Classes of the kfcn toy dataset, in mask-value order (class 0, 1, 2).
names: [background, disc, box]
# One RGB colour per class: how RGB colour masks are read, and the palette of predictions.
colors: [[0, 0, 0], [255, 160, 0], [0, 120, 255]]
# Index masks: the value of pixels that are not scored (object outlines here).
ignore_index: 255
# RGB colour masks: the colour of pixels that are not scored.
ignore_color: [255, 255, 255]
"""


class FolderToy(NamedTuple):
    """Where `write_folder_toy` put the toy dataset (pass them to `kfcn prepare`)."""

    images: Path  # root/images: NAME.jpg and NAME.png
    masks: Path  # root/masks: palette PNGs of class indices, 255 = not scored
    masks_rgb: Path  # root/masks_rgb: RGB colour masks, ignore_color = not scored
    classes: Path  # root/classes.yaml


def _draw_toy(rng: np.random.Generator, heights, widths) -> tuple[np.ndarray, np.ndarray]:
    """One toy image (H, W, 3) uint8 with a disc and/or a box, and its label (H, W) uint8."""
    height = int(rng.integers(heights[0], heights[1] + 1))
    width = int(rng.integers(widths[0], widths[1] + 1))
    rows, cols = np.mgrid[0:height, 0:width]  # (H, W) each
    # A grey, noisy background; discs are orange-ish and boxes blue-ish, so colour tells them apart.
    image = rng.uniform(90, 150) + rng.normal(0, 8, size=(height, width, 3))
    label = np.zeros((height, width), np.uint8)
    kinds = [k for k in (1, 2) if rng.random() < 0.75] or [int(rng.integers(1, 3))]
    paint = {1: (230, 150, 40), 2: (40, 110, 220)}
    for kind in kinds:
        cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
        ry, rx = rng.uniform(0.12, 0.3) * height, rng.uniform(0.12, 0.3) * width
        if kind == 1:
            r = max(min(ry, rx), 2.0)
            mask = (rows - cy) ** 2 + (cols - cx) ** 2 <= r * r
        else:
            mask = (np.abs(rows - cy) <= max(ry, 1.0)) & (np.abs(cols - cx) <= max(rx, 1.0))
        label[mask] = kind
        image[mask] = np.asarray(paint[kind]) + rng.normal(0, 10, size=(int(mask.sum()), 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def write_folder_toy(
    root: str | Path, n: int = 40, seed: int = 0, size: Size = ((40, 56), (48, 72))
) -> FolderToy:
    """Write a 3-class toy dataset as a folder of images and masks, the layout of your own data.

    Classes: background, disc and box (`classes.yaml`, with colours). Images are named
    `toy_000`, `toy_001`, ...; even ones are JPEGs, odd ones PNGs. Every mask exists twice: in
    `masks/` as a palette PNG of class indices (255 along object outlines, not scored) and in
    `masks_rgb/` as an RGB colour mask (the class colours, white outlines). Either folder goes to
    `kfcn prepare --images ROOT/images --masks ... --classes ROOT/classes.yaml`.

    Args:
        root: created if needed.
        n: number of images (at least 1).
        seed: everything written depends only on the arguments.
        size: (H, W), or ((H_min, H_max), (W_min, W_max)) to draw each image's size.

    Returns:
        The images, masks, masks_rgb folders and the classes.yaml file.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    heights, widths = _size_ranges(size)
    root = Path(root)
    toy = FolderToy(root / "images", root / "masks", root / "masks_rgb", root / "classes.yaml")
    for folder in toy[:3]:
        folder.mkdir(parents=True, exist_ok=True)
    colors = np.zeros((256, 3), np.uint8)
    colors[: len(TOY_COLORS)] = TOY_COLORS
    colors[IGNORE_LABEL] = TOY_IGNORE_COLOR
    for index in range(n):
        image, label = _draw_toy(np.random.default_rng([seed, index]), heights, widths)
        label = np.where(_void_band(label), IGNORE_LABEL, label).astype(np.uint8)
        name = f"toy_{index:03d}"
        if index % 2:
            Image.fromarray(image).save(toy.images / f"{name}.png", format="PNG")
        else:
            Image.fromarray(image).save(toy.images / f"{name}.jpg", format="JPEG", quality=92)
        indexed = Image.fromarray(label, mode="P")
        indexed.putpalette(colors.reshape(-1).tolist())
        indexed.save(toy.masks / f"{name}.png", format="PNG")
        Image.fromarray(colors[label], mode="RGB").save(toy.masks_rgb / f"{name}.png")
    toy.classes.write_text(_TOY_CLASSES_YAML)
    return toy


SBD_VOC_OPTIONS = ("sbd_train", "sbd_val", "voc_extra")  # options of the SBD + VOC layouts only


def synthesize_dataset(
    out_dir: Path,
    toy: bool = False,
    count: int = 40,
    sbd_train: int = 240,
    sbd_val: int = 60,
    voc_extra: int = 40,
    size: str | None = None,
    seed: int = 0,
    given: frozenset[str] = frozenset(),
    echo: Callable[[str], None] = print,
) -> None:
    """`kfcn synthesize`: write the SBD + VOC layouts (or with `toy`, a toy folder), then echo
    where they are and the `kfcn prepare` command that reads them.

    Args:
        out_dir: the root directory.
        toy: write `write_folder_toy`'s `count` images instead of `write_synthetic`'s datasets.
        size: 'HxW' or 'H1-H2xW1-W2' (`parse_size`); None = 64-96x80-128, --toy 40-56x48-72.
        given: the options set on the command line; the others hold their defaults.
        echo: called with each line of the report.

    Raises:
        OptionError: SBD + VOC counts with `toy`, `count` without it, or a bad `size`.
    """
    voc_only = [name for name in SBD_VOC_OPTIONS if name in given]
    if toy and voc_only:
        raise OptionError(f"--{voc_only[0].replace('_', '-')} cannot be used with --toy")
    if not toy and "count" in given:
        raise OptionError("--count is for --toy; use --sbd-train, --sbd-val, --voc-extra")
    try:
        parsed = parse_size(size or ("40-56x48-72" if toy else "64-96x80-128"))
    except ValueError as exc:
        raise OptionError(str(exc), option="--size") from None
    records = out_dir / "records"
    if toy:
        made = write_folder_toy(out_dir, n=count, seed=seed, size=parsed)
        echo(f"wrote {count} images to {made.images}, masks to {made.masks} and {made.masks_rgb}")
        echo(
            f"next: kfcn prepare --images {made.images} --masks {made.masks} "
            f"--classes {made.classes} --out {records}"
        )
        return
    sbd, voc = write_synthetic(
        out_dir, sbd_train=sbd_train, sbd_val=sbd_val, voc_extra=voc_extra, size=parsed, seed=seed
    )
    echo(f"--sbd-dir {sbd}")
    echo(f"--voc-dir {voc}")
    echo(f"next: kfcn prepare --sbd-dir {sbd} --voc-dir {voc} --out {records}")
