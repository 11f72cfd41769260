"""PIL images as 8-bit RGB pixels: the image file endings, the EXIF orientation and the colour
conversion shared by `prepare` (`kfcn.data.folder`, which stores images with them) and
`kfcn predict` (`kfcn.images`, which reads images with them), so training, evaluation and
prediction see the same pixels.

This module imports no TensorFlow: `prepare`'s reader processes use it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

STORED_SUFFIXES = (".jpg", ".jpeg", ".png")
"""Image files of a dataset folder (case-insensitive): JPEG and PNG, the formats a record holds."""

IMAGE_SUFFIXES = frozenset(
    {*STORED_SUFFIXES, ".jpe", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
"""Image files `kfcn predict` takes from a directory argument (case-insensitive)."""

EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image, 1 when absent or unreadable."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not reject readable pixels
        return 1


def to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode as (H, W, 3) uint8 RGB.

    Transparency (RGBA, LA, PA, or a transparent palette colour) is composited on white; 16-bit
    greyscale (I;16) keeps its high byte (value >> 8), as TensorFlow's PNG decoder does; 32-bit
    integer (I) is read as 16-bit; float (F) is clipped to 0-255; any other mode (1, L, P, CMYK,
    ...) takes PIL's conversion to RGB.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        gray = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)  # (H, W, 3)
    if image.mode == "F":
        gray = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)  # (H, W, 3)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
