"""Your own dataset: a folder of images and a folder of masks, paired by name, and split.

`images/NAME.jpg` (or `.jpeg`, `.png`) pairs with `masks/NAME.png`. A mask is either

* an index mask: a palette ('P'), greyscale ('L') or 16-bit PNG whose pixel values are class
  indices (an RGB PNG whose three channels are equal counts as one too), or
* an RGB colour mask, read through the class colours of the class list (`kfcn.data.classes`).

Mask values equal to the ignore index (or pixels of the list's `ignore_color`) are stored as
IGNORE_LABEL (255); any other value or colour that is not a class is an error naming the file.
Images keep their bytes when a model decodes them as a viewer displays them (a JPEG or an 8-bit
RGB PNG without an EXIF rotation); any other image is stored as a lossless RGB PNG of its upright
pixels, converted as `kfcn predict` converts images (`kfcn.pixels`), so training, evaluation and
prediction see the same pixels.

This module imports no TensorFlow, so `prepare`'s reader processes start quickly.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from kfcn.data.classes import MAX_CLASSES, colour_codes
from kfcn.data.sources import LoadedSample, Sample, read_bytes
from kfcn.errors import DataError
from kfcn.palette import IGNORE_LABEL
from kfcn.pixels import SIXTEEN_BIT_MODES, STORED_SUFFIXES, exif_orientation, to_rgb

MASK_SUFFIX = ".png"
SOURCE = "folder"
_SHOWN = 5  # values, colours or names quoted in one message


@dataclass(frozen=True)
class LoadedPair(LoadedSample):
    """A pair read and checked; `image_bytes` are JPEG or PNG bytes as `image_format` says."""

    image_format: str = "jpeg"


@dataclass
class FolderPairs:
    """The pairs found in an images folder and a masks folder, and what was left over."""

    samples: list[Sample]  # sorted by name
    images_without_mask: list[str] = field(default_factory=list)  # file names
    masks_without_image: list[str] = field(default_factory=list)
    other_files: list[str] = field(default_factory=list)  # neither image nor mask, as DIR/NAME

    def unpaired(self) -> dict[str, list[str]]:
        """What `meta.json` lists under `unpaired`."""
        return {
            "images_without_mask": self.images_without_mask,
            "masks_without_image": self.masks_without_image,
            "other_files": self.other_files,
        }


def _shown(items: Sequence, limit: int = _SHOWN) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _scan(directory: Path, suffixes: Sequence[str], flag: str) -> tuple[dict[str, Path], list[str]]:
    """{name: file} of the files with one of `suffixes` in `directory` (not recursive), and the
    other entries as `DIR/NAME`. Hidden files are skipped."""
    if not directory.is_dir():
        raise DataError(f"{directory}: {flag} directory not found")
    found: dict[str, Path] = {}
    other: list[str] = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.is_file() or path.suffix.lower() not in suffixes:
            other.append(f"{directory.name}/{path.name}{'/' if path.is_dir() else ''}")
            continue
        name = path.stem
        if "\n" in name or "\r" in name:
            raise DataError(f"{path}: file names with line breaks cannot be used as sample names")
        if name in found:
            raise DataError(f"{found[name]} and {path}: two files named '{name}'; keep one")
        found[name] = path
    return found, other


def find_pairs(images_dir: str | Path, masks_dir: str | Path) -> FolderPairs:
    """Pair `images_dir/NAME.{jpg,jpeg,png}` with `masks_dir/NAME.png` (not recursive).

    Returns:
        The pairs, sorted by NAME, and the files left unpaired.

    Raises:
        DataError: a folder is missing or the same as the other, holds no image (or mask) files,
            two images share a NAME, or no image has a mask.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if images_dir.is_dir() and images_dir.resolve() == masks_dir.resolve():
        raise DataError(
            f"{images_dir}: --images and --masks are the same folder; put the masks in a folder "
            "of their own, named like their images (NAME.png)"
        )
    images, other_images = _scan(images_dir, STORED_SUFFIXES, "--images")
    masks, other_masks = _scan(masks_dir, (MASK_SUFFIX,), "--masks")
    if not images:
        globs = ", ".join(f"*{suffix}" for suffix in STORED_SUFFIXES)
        raise DataError(f"{images_dir}: no images ({globs}) in this folder")
    if not masks:
        raise DataError(f"{masks_dir}: no masks (*.png) in this folder")
    names = sorted(images.keys() & masks.keys())
    if not names:
        raise DataError(
            f"no image in {images_dir} has a mask in {masks_dir}; images/NAME.jpg (.jpeg, .png) "
            f"pairs with masks/NAME.png (images: {_shown(sorted(images))}; "
            f"masks: {_shown(sorted(masks))})"
        )
    samples = [Sample(n, SOURCE, str(images[n]), str(masks[n])) for n in names]
    return FolderPairs(
        samples,
        sorted(images[n].name for n in images.keys() - masks.keys()),
        sorted(masks[n].name for n in masks.keys() - images.keys()),
        other_images + other_masks,
    )


def read_name_list(path: str | Path) -> list[str]:
    """Names in a list file, one per line, in file order (blank lines and repeats dropped).

    Raises:
        DataError: the file is missing or unreadable.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: --val-list file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the name list ({exc})") from None
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def _resolve_names(entries: Sequence[str], names: set[str], where: str) -> list[str]:
    """Match list entries to sample names; `NAME.jpg` or `images/NAME.png` match NAME too."""
    resolved, unknown = [], []
    for entry in entries:
        path = Path(entry)
        if entry in names:
            resolved.append(entry)
        elif path.suffix.lower() in STORED_SUFFIXES and path.stem in names:
            resolved.append(path.stem)
        else:
            unknown.append(entry)
    if unknown:
        raise DataError(
            f"{where}: {len(unknown)} name(s) are not among the {len(names)} image/mask pairs: "
            f"{_shown(unknown)} (one NAME per line, for images/NAME.jpg + masks/NAME.png)"
        )
    return list(dict.fromkeys(resolved))


def split_names(
    names: Sequence[str],
    val_fraction: float = 0.1,
    val_names: Sequence[str] | None = None,
    seed: int = 0,
    where: str = "--val-list",
) -> dict[str, list[str]]:
    """Split sample names into `train` and `val`, reproducibly.

    With `val_names`, val is those names, in that order (a name may also be a file name, e.g.
    `NAME.jpg`). Otherwise val is `round(val_fraction * N)` names (at least 1 when the fraction is
    above 0) drawn by a permutation seeded with `seed` from the sorted names, and listed sorted:
    the same names and seed always give the same split. Train is the rest, sorted.

    Returns:
        {"train": [...], "val": [...]}; val is empty when `val_fraction` is 0.

    Raises:
        DataError: a fraction outside [0, 1), unknown names in `val_names`, or an empty train.
    """
    ordered = sorted(names)
    if val_names is not None:
        val = _resolve_names(val_names, set(ordered), where)
    else:
        if isinstance(val_fraction, bool) or not 0 <= val_fraction < 1:
            raise DataError(f"--val-fraction {val_fraction}: expected a number in [0, 1)")
        count = round(val_fraction * len(ordered))
        if val_fraction > 0:
            count = max(1, count)
        picked = np.random.default_rng(seed).permutation(len(ordered))[:count]
        val = sorted(ordered[i] for i in picked)
    in_val = set(val)
    train = [n for n in ordered if n not in in_val]
    if not train:
        raise DataError(
            f"all {len(ordered)} pair(s) went to val, none is left to train on; use a smaller "
            "--val-fraction (0 for no val split) or a shorter --val-list"
        )
    return {"train": train, "val": val}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_rgb8_png(data: bytes) -> bool:
    """An 8-bit RGB PNG (IHDR bit depth 8, colour type 2): TensorFlow decodes it as PIL does."""
    return len(data) > 26 and data[12:16] == b"IHDR" and data[24] == 8 and data[25] == 2


def read_folder_image(path: str | Path) -> tuple[bytes, str, int, int]:
    """Read a JPEG or PNG image for storing: its bytes when they can be kept, else a lossless PNG.

    JPEGs (RGB or greyscale) and 8-bit RGB PNGs without transparency keep their bytes; an EXIF
    rotation, any other PNG mode, or a CMYK JPEG gives a PNG of the upright RGB pixels.

    Returns:
        (bytes, 'jpeg' or 'png', height, width), the size as displayed.

    Raises:
        DataError: the file is missing, not a JPEG or PNG, truncated or corrupt.
    """
    path = Path(path)
    data = read_bytes(path, "image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
            if kind not in ("JPEG", "PNG"):
                raise DataError(f"{path}: holds {kind} data; expected a JPEG or PNG image")
            image.load()  # decodes every scanline: a truncated file raises here
            upright = exif_orientation(image) == 1
            if kind == "JPEG" and upright and image.mode in ("RGB", "L"):
                return data, "jpeg", image.height, image.width
            if (
                kind == "PNG"
                and upright
                and _is_rgb8_png(data)
                and "transparency" not in image.info
            ):
                return data, "png", image.height, image.width
            pixels = to_rgb(ImageOps.exif_transpose(image))  # (H, W, 3) uint8
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({_one_line(exc)})") from None
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG")
    return buf.getvalue(), "png", pixels.shape[0], pixels.shape[1]


@dataclass(frozen=True)
class MaskReader:
    """How masks become labels: the class count and colours, and what is not scored.

    Picklable, so it travels to `prepare`'s reader processes; its fields are part of each shard's
    fingerprint, so changing the class list rewrites the shards.
    """

    num_classes: int | None = None  # None: classes 0..254 allowed, the count is inferred later
    colors: tuple[tuple[int, int, int], ...] | None = None  # class colours, for RGB masks
    ignore_index: int = IGNORE_LABEL
    ignore_color: tuple[int, int, int] | None = None
    source: str = "the class list"  # names the class list in messages

    def read(self, path: str | Path) -> np.ndarray:
        """The (H, W) uint8 label of a mask PNG: class indices, IGNORE_LABEL = not scored.

        Raises:
            DataError: the file is missing or unreadable, of an unsupported mode, or holds values
                or colours that are not classes; the message names the file and the values.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: mask file missing")
        try:
            with Image.open(path) as image:
                if image.format != "PNG":
                    raise DataError(f"{path}: holds {image.format} data; masks must be PNG files")
                image = ImageOps.exif_transpose(image)
                mode = image.mode
                if mode in ("RGB", "RGBA"):  # alpha carries no class: it is dropped
                    return self._colour_label(np.asarray(image.convert("RGB")), path)
                if mode in ("PA", "LA"):
                    values = np.asarray(image.getchannel(0))
                elif mode in ("P", "L", "1") or mode in SIXTEEN_BIT_MODES:
                    values = np.asarray(image)
                else:
                    raise DataError(
                        f"{path}: mask PNG of mode {mode}; expected class indices (palette, "
                        "greyscale or 16-bit) or an RGB colour mask"
                    )
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: unreadable mask PNG ({_one_line(exc)})") from None
        return self._index_label(values.astype(np.int64), path)

    def _index_label(self, values: np.ndarray, path: Path) -> np.ndarray:
        """Check index values (H, W) and map the ignore index to IGNORE_LABEL."""
        limit = self.num_classes or MAX_CLASSES
        ignored = values == self.ignore_index
        bad = (values < 0) | (values >= limit)
        bad &= ~ignored
        if bad.any():
            found, counts = np.unique(values[bad], return_counts=True)
            shown = _shown([f"{v} ({c} px)" for v, c in zip(found, counts, strict=True)])
            classes = (
                f"the {limit} classes 0..{limit - 1} of {self.source}"
                if self.num_classes
                else f"class indices 0..{limit - 1}"
            )
            raise DataError(
                f"{path}: mask values {shown} are not classes; expected {classes} or the "
                f"ignore index {self.ignore_index}"
            )
        return np.where(ignored, IGNORE_LABEL, values).astype(np.uint8)

    def _colour_label(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        """Map an RGB mask (H, W, 3) to class indices by colour."""
        if self.colors is None:
            if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                return self._index_label(rgb[..., 0].astype(np.int64), path)  # grey = indices
            raise DataError(
                f"{path}: an RGB colour mask, but no class colours are known; pass --classes "
                "FILE with `colors:` (one RGB triple per class)"
            )
        codes = colour_codes(rgb)  # (H*W,)
        classes = colour_codes(self.colors)  # (K,)
        order = np.argsort(classes)
        pos = np.minimum(np.searchsorted(classes[order], codes), len(order) - 1)
        known = classes[order][pos] == codes
        label = order[pos].astype(np.uint8)
        if self.ignore_color is not None:
            ignored = codes == colour_codes([self.ignore_color])[0]
            label[ignored] = IGNORE_LABEL
            known |= ignored
        if not known.all():
            found, counts = np.unique(codes[~known], return_counts=True)
            shown = _shown(
                [
                    f"[{c >> 16}, {(c >> 8) & 255}, {c & 255}] ({n} px)"
                    for c, n in zip(found, counts, strict=True)
                ]
            )
            extra = " or its ignore_color" if self.ignore_color is not None else ""
            raise DataError(
                f"{path}: mask colours {shown} are not class colours; expected the colors of "
                f"{self.source}{extra}"
            )
        return label.reshape(rgb.shape[:2])


def load_pair(sample: Sample, reader: MaskReader) -> LoadedPair:
    """Read and check one image/mask pair (runs in `prepare`'s reader processes).

    Raises:
        DataError: one line naming the file at fault (both files for a size mismatch).
    """
    data, fmt, height, width = read_folder_image(sample.image_path)
    label = reader.read(sample.label_path)
    if label.shape != (height, width):
        raise DataError(
            f"{sample.label_path}: mask is {label.shape[0]}x{label.shape[1]} but its image "
            f"{sample.image_path} is {height}x{width} (HxW, as displayed)"
        )
    return LoadedPair(sample.id, data, height, width, label, fmt)


def load_pairs(reader: MaskReader, samples: Sequence[Sample]) -> list[LoadedPair | DataError]:
    """`load_pair` over a batch; a pair's DataError is returned in its place, not raised."""
    results: list[LoadedPair | DataError] = []
    for sample in samples:
        try:
            results.append(load_pair(sample, reader))
        except DataError as exc:
            results.append(exc)
    return results
