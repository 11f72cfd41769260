"""Sliding-window inference: an image at its native resolution, one window at a time.

The image is cut into SIZE x SIZE windows (smaller where the image is) at a stride of
SIZE x (1 - overlap); the last row and column of windows are aligned to the image's bottom and
right border, so every window lies inside the image and every pixel is covered. Each window's
class probabilities (every model and TTA view of the window, as `kfcn.inference.Predictor`
computes them) are added into the full-size result: the class of a pixel is the argmax of the
average over the windows covering it (a plain average, no weighting towards window centres;
every class of a pixel has the same window count, so the argmax of the sums is taken).

Memory is bounded by the window, not the image: the windows are run one row ("band") at a time,
a few windows per model call (`BATCH_PIXELS`), and the accumulated probabilities are held only
for the rows a later band can still touch (SIZE rows x image width x classes, float32); finished
rows are turned into classes at once.

An image no larger than one window is predicted whole, exactly as without tiling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from kfcn.errors import ConfigError

DEFAULT_OVERLAP = 1 / 3
PROGRESS_MIN_WINDOWS = 5
"""Images with at least this many windows show a progress bar of their windows."""
BATCH_PIXELS = 2 * 512 * 512
"""Windows of one band run together, as many per model call as hold this many pixels. On CPU,
with the VGG16 FCN-8s, two 512 x 512 windows a call cost about half as much per window as one a
call (three or four gain no more), and each further window in a call holds 0.15-0.4 GB more at
the peak."""


def check_tile(tile: int | None, overlap: float) -> None:
    """Check `--tile` and `--tile-overlap`.

    Raises:
        ConfigError: a tile under 32 pixels, or an overlap outside [0, 1).
    """
    if tile is not None and (isinstance(tile, bool) or int(tile) != tile or tile < 32):
        raise ConfigError(f"--tile {tile!r}: expected a window side of at least 32 pixels")
    if not (isinstance(overlap, int | float) and 0 <= overlap < 1):
        raise ConfigError(f"--tile-overlap {overlap!r}: expected a fraction in [0, 1), e.g. 0.33")


def window_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the windows along one axis of `length` pixels.

    Windows start every `stride = max(1, floor(tile * (1 - overlap)))` pixels; the last one
    starts at `length - tile`, flush with the border. A length up to `tile` has one window.
    """
    if length <= tile:
        return [0]
    stride = max(1, math.floor(tile * (1 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def windows(h: int, w: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of every window of an (h, w) image, row by row."""
    th, tw = min(tile, h), min(tile, w)
    return [
        (top, left, th, tw)
        for top in window_starts(h, tile, overlap)
        for left in window_starts(w, tile, overlap)
    ]


class TiledPredictor:
    """A predictor (a `kfcn.inference.Predictor`, with its models, TTA and precision, or an
    exported model's `kfcn.exported.FormatPredictor`) run window by window on large images.

    Args:
        inner: the predictor whose probabilities each window gets.
        tile: the window side, pixels.
        overlap: the fraction of a window shared with the next one, in [0, 1).
        progress: show a progress bar of the windows of images with many of them.
        batch_pixels: the windows of a band go through the model together, as many per call as
            hold at most this many pixels (at least one).
    """

    plain = False

    def __init__(
        self,
        inner,
        tile: int,
        overlap: float = DEFAULT_OVERLAP,
        progress=False,
        batch_pixels: int = BATCH_PIXELS,
    ):
        check_tile(tile, overlap)
        self.inner = inner
        self.num_classes = inner.num_classes
        self.input_multiple = inner.input_multiple
        self.tile, self.overlap, self.progress = int(tile), float(overlap), progress
        self.batch_pixels = int(batch_pixels)

    def fits(self, image) -> bool:
        """Whether the image fits in one window (and is predicted whole)."""
        return max(np.shape(image)[:2]) <= self.tile

    def classes(self, images: Sequence) -> list[np.ndarray]:
        """Class indices of each image: whole when it fits one window, else by windows."""
        out = []
        for image in images:
            if self.fits(image):
                out.extend(self.inner.classes([image]))  # exactly the untiled prediction
            else:
                out.append(self.tiled_classes(image))
        return out

    def _band_probabilities(self, band: np.ndarray, lefts: list[int], tw: int):
        """Yield (left, (th, tw, C) probabilities) of each window of one band of rows."""
        per_call = max(1, self.batch_pixels // (band.shape[0] * tw))
        for i in range(0, len(lefts), per_call):
            chunk = lefts[i : i + per_call]
            crops = np.stack([band[:, left : left + tw] for left in chunk])  # (B, th, tw, 3)
            yield from zip(chunk, self.inner.batch_probabilities(crops), strict=True)

    def tiled_classes(self, image) -> np.ndarray:
        """(H, W) uint8 classes of an (H, W, 3) image, from the windows' averaged probabilities."""
        image = np.asarray(image)
        h, w = image.shape[:2]
        tops = window_starts(h, self.tile, self.overlap)
        lefts = window_starts(w, self.tile, self.overlap)
        th, tw = min(self.tile, h), min(self.tile, w)
        out = np.zeros((h, w), np.uint8)
        # Rows [base, base + th) of the running sums; rows above `base` are finished.
        total = np.zeros((th, w, self.num_classes), np.float32)  # (th, W, C)
        base = 0
        n = len(tops) * len(lefts)
        bar = tqdm(
            total=n,
            desc="windows",
            unit="win",
            leave=False,
            disable=not self.progress or n < PROGRESS_MIN_WINDOWS,
        )
        with bar:
            for i, top in enumerate(tops):
                shift = top - base  # rows finished by the previous band were emitted: drop them
                if shift:  # in place: no second copy of the running sums
                    total[: th - shift] = total[shift:]
                    total[th - shift :] = 0.0
                    base = top
                band = image[top : top + th]  # (th, W, 3)
                for left, probs in self._band_probabilities(band, lefts, tw):
                    total[:, left : left + tw] += probs  # (th, tw, C)
                    bar.update()
                # Rows no later band reaches: up to the next band's top (all, after the last).
                done = (tops[i + 1] if i + 1 < len(tops) else top + th) - base
                # A pixel's classes share its window count: the argmax of the sums is the
                # argmax of the averages.
                out[base : base + done] = total[:done].argmax(-1)
        return out

    def describe(self) -> dict:
        """The inner predictor's `describe()` plus {"tile": {"size", "overlap"}}."""
        return {**self.inner.describe(), "tile": self.tile_setting()}

    def tile_setting(self) -> dict:
        """{"size": the window side, "overlap": the fraction}, for reports."""
        return {"size": self.tile, "overlap": self.overlap}
