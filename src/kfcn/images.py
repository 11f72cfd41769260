"""Image files: reading what users hand to `kfcn predict`, and writing outputs atomically.

Input files are read as the upright RGB pixels a viewer displays:

* JPEG bytes are decoded by `kfcn.data.records.decode_image`, the decode path of training and
  evaluation, so a JPEG gets exactly the prediction `kfcn evaluate` scores for it. The EXIF
  orientation is read with PIL (metadata only) and applied to the decoded pixels.
* Every other format (PNG of any mode, BMP, GIF, TIFF, WebP, ...) is decoded by PIL, turned
  upright by its EXIF orientation and converted to 8-bit RGB by `kfcn.pixels.to_rgb`, the
  conversion `prepare` stores folder images with:
    - with transparency (RGBA, LA, PA, or a transparent palette colour): composited on white;
    - 16-bit grayscale (I;16): the high byte (value >> 8), as TensorFlow's PNG decoder does;
    - 32-bit integer (I) as 16-bit; float (F) clipped to 0-255;
    - anything else (1, L, P, CMYK, ...): PIL's conversion to RGB.
  PNG is lossless, so an 8-bit RGB PNG gives the same pixels as TensorFlow's `decode_png`.
"""

from __future__ import annotations

import glob
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

from kfcn.data.records import decode_image
from kfcn.errors import DataError
from kfcn.fileio import atomic_write
from kfcn.pixels import IMAGE_SUFFIXES, exif_orientation, to_rgb

JPEG_MAGIC = b"\xff\xd8\xff"
GLOB_CHARS = frozenset("*?[")


def expand_inputs(args: Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Turn IMAGE arguments into a list of files.

    An argument that exists is a file (kept whatever its name) or a directory (its files with an
    `IMAGE_SUFFIXES` ending, not recursive, hidden files skipped, sorted by name). An argument that
    does not exist but holds `*`, `?` or `[` is a glob (`**` recurses), expanded here so quoted
    globs work too; its matching files are kept, sorted. Any other argument is kept as a file, so
    reading it reports it missing. A file reached twice is kept once, at its first place.

    Returns:
        `(files, problems)`: the files in argument order, and `(argument, message)` for each
        directory without images or glob without matches.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
            if not found:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                problems.append((str(arg), f"{arg}: no image files ({suffixes}) in this directory"))
        elif path.exists() or not GLOB_CHARS & set(str(arg)):
            found = [path]
        else:
            found = sorted(
                Path(m) for m in glob.glob(str(arg), recursive=True) if Path(m).is_file()
            )
            if not found:
                problems.append((str(arg), f"{arg}: no files match this pattern"))
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                files.append(p)
    return files, problems


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as the upright RGB pixels a viewer displays (see the module docstring).

    Returns:
        (H, W, 3) uint8 RGB, H and W after the EXIF orientation.

    Raises:
        DataError: one line naming the file, when it is missing, unreadable, not an image, or
            corrupt or truncated.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.startswith(JPEG_MAGIC):
        try:
            image = decode_image(tf.constant(data)).numpy()  # (H, W, 3) uint8
        except tf.errors.OpError:
            raise DataError(
                f"{path}: not a readable JPEG image (corrupt, truncated or an unsupported variant)"
            ) from None
        return apply_orientation(image, jpeg_orientation(data))
    return _read_with_pil(path, data)


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of JPEG bytes, 1 when absent; reads metadata only, no pixels."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return exif_orientation(image)
    except Exception:  # bytes PIL cannot open must not reject pixels that TF decoded
        return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn (H, W, ...) pixels stored with EXIF `orientation` upright, as PIL's
    `ImageOps.exif_transpose` does. Unknown values leave the pixels as they are."""
    ops = {
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # rotated 180
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),  # transposed
        6: lambda a: np.rot90(a, -1),  # stored rotated 90 counter-clockwise: turn clockwise
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),  # transversed
        8: lambda a: np.rot90(a, 1),  # stored rotated 90 clockwise: turn counter-clockwise
    }
    op = ops.get(orientation)
    return image if op is None else np.ascontiguousarray(op(image))


def _read_with_pil(path: Path, data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large to read safely ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        # PIL raises UnidentifiedImageError (an OSError) for non-images, OSError for truncated
        # files, and ValueError or SyntaxError for some malformed headers.
        reason = str(exc).strip() or type(exc).__name__
        raise DataError(f"{path}: not a readable image ({reason})") from None


def encode_image(image: Image.Image, fmt: str, **params) -> bytes:
    """`image` encoded as a file of format `fmt` ('PNG', 'JPEG', ...), as bytes."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename, so the
    file is either absent, its previous version, or complete.

    Raises:
        DataError: the folder cannot be created or written.
    """
    try:
        return atomic_write(path, data)
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from None
