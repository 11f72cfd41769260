"""Pascal VOC class names, the VOC colour map, and the ignore label."""

import numpy as np

IGNORE_LABEL = 255
"""Label value of pixels that are not scored (VOC object boundaries, padding)."""

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard VOC colour map: bit-interleaved RGB per class index.

    Returns:
        uint8 array of shape (n, 3); entry 255 is (224, 224, 192) as in the VOC label PNGs.
    """
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def flat_palette(colors: np.ndarray | None = None) -> list[int]:
    """A 768-entry flat palette for PIL 'P' images; `colors` (K, 3) overrides the first K entries."""
    cmap = voc_colormap()
    if colors is not None:
        colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        cmap[: len(colors)] = colors
    return cmap.reshape(-1).tolist()
