"""`kfcn predict`: colour-palette segmentation masks (and overlays) for image files.

For each input `DIR/NAME.png` is written: a palette ('P' mode) PNG of the predicted class
indices, exactly the size of the displayed (EXIF-oriented) image, whose palette is the model's
(the VOC colour map by default); index 255 is never used. With `overlay`, `DIR/NAME_overlay.jpg`
too: the image blended half and half with the colour mask, above a legend of the classes present.

Inputs are read by `kfcn.images.read_image` (JPEGs through the training/evaluation decode path)
and padded by `kfcn.padding` exactly as `kfcn evaluate` does, so an image gets the prediction
`evaluate` scores for it. An image whose long side exceeds `max_side` (default 2048 px) is
first shrunk (area averaging) so its long side is `max_side`, predicted at that size, and the
class mask is enlarged back to full size by nearest neighbour: the memory of the forward pass
stays bounded (a 4000x3000 photo peaks at about 3.5 GB with FCN-8s on CPU) while the outputs
keep the input's size.

With `tile`, images are instead predicted at their native resolution by sliding windows
(`kfcn.tiling`): nothing is shrunk, and memory is bounded by the window.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from kfcn.errors import DataError, ModelError
from kfcn.images import encode_image, expand_inputs, read_image, write_atomic
from kfcn.inference import TTA, Predictor, check_precision, load_predictor
from kfcn.models import make_info
from kfcn.padding import batches_by_padded_size
from kfcn.palette import IGNORE_LABEL, flat_palette
from kfcn.tiling import DEFAULT_OVERLAP, TiledPredictor, check_tile

MAX_SIDE = 2048
"""Images with a longer side are predicted at this size and their masks enlarged back."""

OVERLAY_ALPHA = 0.5
OVERLAY_SUFFIX = "_overlay.jpg"


@dataclass
class PredictResult:
    """What `predict_images` did."""

    written: list[Path] = field(default_factory=list)
    """Every file written, masks and overlays (in input order when `batch_size` is 1)."""
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(input, one-line message) per input that could not be read, or argument that matched
    no file."""
    num_inputs: int = 0
    """Files found plus arguments that matched no file."""


def predict_images(
    model: str | Path | keras.Model | Sequence[str | Path],
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    overlay: bool = False,
    batch_size: int = 1,
    *,
    info: dict | None = None,
    max_side: int = MAX_SIDE,
    progress: bool = False,
    ensemble: bool = False,
    tta: TTA | None = None,
    precision: str = "float32",
    tile: int | None = None,
    tile_overlap: float = DEFAULT_OVERLAP,
) -> PredictResult:
    """Predict a segmentation mask for each input image and write it (and an overlay) to `out_dir`.

    Args:
        model: a `.keras` model file, a run directory (its latest finished stage, see
            `kfcn.runs.resolve_model`) or a loaded `keras.Model`; or several files or run
            directories, an ensemble whose probabilities are averaged; or a file written by
            `kfcn export` (SavedModel directory, TFLite or ONNX file; see `kfcn.exported`).
        inputs: image files, directories (their images, not recursive, sorted) and glob patterns.
        out_dir: output folder, created when missing. Outputs are named after the input's stem;
            a later input whose stem is taken (ignoring case) gets `-2`, `-3`, ...
        overlay: also write `NAME_overlay.jpg`.
        batch_size: images per model call; only images of the same padded size share a call.
        info: class names and palette (as `kfcn.models.make_info` returns) for a `keras.Model`;
            default the file's info, or VOC names and colours.
        max_side: longest side predicted at full resolution (see the module docstring).
        progress: show a progress bar and print each failure on stderr as it happens.
        ensemble: a run directory stands for all its finished stages (averaged).
        tta: test-time augmentation (flip, scales; see `kfcn.inference`), or None.
        precision: 'float32', 'bfloat16' or 'float16' (see `kfcn.inference.check_precision`).
        tile: predict by SIZE x SIZE sliding windows at native resolution (`max_side` is then
            not applied); None = the whole image.
        tile_overlap: the fraction of a window shared with the next, in [0, 1).

    Returns:
        The files written and the inputs that failed; unreadable inputs do not stop the others.

    Raises:
        DataError: an output would replace an input file (checked before anything is written),
            or an output cannot be written.
        ModelError: the model cannot be loaded or has more than 255 classes.
        ConfigError: this machine cannot run `precision`.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files, problems = expand_inputs(inputs)
    targets = _plan_outputs(files, Path(out_dir), overlay)
    check_tile(tile, tile_overlap)
    predictor, info = _load(model, info, ensemble, tta, precision)
    if tile is not None:
        predictor = TiledPredictor(predictor, tile, tile_overlap, progress=progress)
        max_side = None  # native resolution: the windows bound the memory
    palette = np.asarray(info["palette"], np.uint8).reshape(-1, 3)  # (C, 3)
    result = PredictResult(num_inputs=len(files) + len(problems))
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress)

    def fail(name: str, message: str) -> None:
        result.failures.append((name, message))
        if progress:
            tqdm.write(f"kfcn: error: {message}", file=sys.stderr)

    def readable():
        for file in files:
            try:
                image = read_image(file)  # (H, W, 3) uint8
            except DataError as exc:
                fail(str(file), str(exc))
                bar.update()
                continue
            yield file, image, shrink(image, max_side)

    with bar:
        for name, message in problems:
            fail(name, message)
        batches = batches_by_padded_size(
            readable(), batch_size, image_of=lambda b: b[2], multiple=predictor.input_multiple
        )
        for batch in batches:
            masks = predictor.classes([small for _, _, small in batch])
            for (file, image, _), mask in zip(batch, masks, strict=True):
                mask = enlarge(mask, image.shape[:2])  # (H, W) uint8
                mask_path, overlay_path = targets[file]
                result.written.append(write_atomic(mask_path, encode_mask(mask, palette)))
                if overlay:
                    picture = overlay_image(image, mask, palette, info["class_names"])
                    data = encode_image(picture, "JPEG", quality=90)
                    result.written.append(write_atomic(overlay_path, data))
                bar.update()
    return result


def output_names(files: list[Path]) -> list[str]:
    """One output name per input: its stem, with `-2`, `-3`, ... for a stem already taken
    (compared ignoring case, for case-insensitive file systems)."""
    taken: set[str] = set()
    names = []
    for file in files:
        name, n = file.stem, 1
        while name.lower() in taken:
            n += 1
            name = f"{file.stem}-{n}"
        taken.add(name.lower())
        names.append(name)
    return names


def _plan_outputs(files: list[Path], out_dir: Path, overlay: bool) -> dict[Path, tuple[Path, Path]]:
    """input -> (mask path, overlay path); refuses any output that is one of the inputs."""
    targets = {
        file: (out_dir / f"{name}.png", out_dir / f"{name}{OVERLAY_SUFFIX}")
        for file, name in zip(files, output_names(files), strict=True)
    }
    inputs = {file.resolve() for file in files}
    for file, (mask_path, overlay_path) in targets.items():
        for out in (mask_path, overlay_path) if overlay else (mask_path,):
            if out.resolve() in inputs:
                raise DataError(
                    f"{out}: the output for {file} would overwrite this input file; "
                    "choose another --out folder"
                )
    return targets


def _load(
    model, info: dict | None, ensemble: bool, tta: TTA | None, precision: str
) -> tuple[Predictor, dict]:
    from kfcn.exported import load_format_predictor

    loaded = (
        None
        if isinstance(model, keras.Model)
        else load_format_predictor(model, ensemble, tta, precision)
    )
    if isinstance(model, keras.Model):
        predictor = Predictor([model], tta, check_precision(precision))
    elif loaded is not None:  # an exported file (SavedModel, TFLite, ONNX)
        predictor, stored, _ = loaded
        info = info or stored
    else:
        predictor, stored, _ = load_predictor(model, ensemble, tta, precision)
        info = info or stored
    num_classes = predictor.num_classes
    if info is None:
        info = make_info("unknown", {"model": {"num_classes": num_classes}})
    if num_classes > IGNORE_LABEL:
        raise ModelError(
            f"the model predicts {num_classes} classes; palette PNG masks hold at most "
            f"{IGNORE_LABEL} (indices 0-{IGNORE_LABEL - 1})"
        )
    return predictor, info


def shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """`image` (H, W, 3) shrunk by area averaging so its long side is `max_side`, when longer
    (None: unchanged)."""
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return tf.image.resize(image, size, method="area").numpy()  # (h', w', 3) float32


def enlarge(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (h, w) class mask to `size` (H, W), pixel centres aligned."""
    h, w = mask.shape
    if (h, w) == tuple(size):
        return mask
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]  # (H, W)


def mask_image(mask: np.ndarray, palette: np.ndarray) -> Image.Image:
    """A 'P' mode image of the (H, W) class indices, with `palette` (C, 3) as its first colours."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8))  # 'L'
    image.putpalette(flat_palette(palette))  # 'L' -> 'P', indices unchanged
    return image


def encode_mask(mask: np.ndarray, palette: np.ndarray) -> bytes:
    """The palette PNG file of a (H, W) class mask."""
    return encode_image(mask_image(mask, palette), "PNG")


def overlay_image(
    image: np.ndarray, mask: np.ndarray, palette: np.ndarray, class_names: list[str]
) -> Image.Image:
    """The image blended with the colour mask, above a legend of the classes present.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) class indices.
        palette: (C, 3) class colours.
        class_names: C names.

    Returns:
        An RGB image (max(W, legend width), H + legend height); the legend is on white.
    """
    h, w = mask.shape
    colours = mask_image(mask, palette).convert("RGB")
    blended = Image.blend(Image.fromarray(image), colours, OVERLAY_ALPHA)
    present = [int(c) for c in np.unique(mask)]
    legend = _legend([(class_names[c], tuple(palette[c])) for c in present], max(w, h))
    canvas = Image.new("RGB", (max(w, legend.width), h + legend.height), "white")
    canvas.paste(blended, (0, 0))
    canvas.paste(legend, (0, h))
    return canvas


def _legend(entries: list[tuple[str, tuple]], image_side: int) -> Image.Image:
    """One row per (name, colour): a colour swatch and the name, sized to the image."""
    size = int(np.clip(image_side // 50, 12, 64))  # font size in pixels
    font = ImageFont.load_default(size=size)
    pad, row = size // 2, size + size // 2
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(int(np.ceil(draw.textlength(name, font=font))) for name, _ in entries)
    legend = Image.new("RGB", (3 * pad + size + text_w, pad + row * len(entries)), "white")
    draw = ImageDraw.Draw(legend)
    for i, (name, colour) in enumerate(entries):
        top = pad + i * row
        draw.rectangle((pad, top, pad + size - 1, top + size - 1), fill=colour, outline="gray")
        draw.text((2 * pad + size, top), name, fill="black", font=font)
    return legend
