"""`kfcn evaluate`: one confusion matrix over a whole split, at each image's own resolution.

Every image of the split is padded to its own next multiple of 32, run through the model, and
its logits are cropped back (`kfcn.padding`), so it is scored at its original resolution; label
255 is ignored. From the one confusion matrix of the split, `kfcn.metrics` derives the four
metrics of the FCN paper (pixel accuracy, mean accuracy, mean IoU, frequency-weighted IoU) and
the per-class IoU. The report is printed as a table, and saved as JSON with a picture of the
row-normalised confusion matrix beside it (same stem, `.png`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from kfcn import metrics
from kfcn.data import pipeline, records
from kfcn.errors import DataError
from kfcn.exported import load_format_predictor
from kfcn.images import encode_image, write_atomic
from kfcn.inference import DEFAULT_SCALES, TTA, Predictor, load_predictor, model_paths
from kfcn.metrics import ConfusionMatrix
from kfcn.models import model_info
from kfcn.padding import batches_by_padded_size
from kfcn.tiling import DEFAULT_OVERLAP, TiledPredictor, check_tile

SUMMARY_KEYS = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou")
SUMMARY_NAMES = ("pixel accuracy", "mean accuracy", "mean IoU", "fw IoU")


def confusion_over_split(
    model,
    data_dir: str | Path,
    split: str,
    num_classes: int,
    max_images: int | None = None,
    progress: bool = False,
    batch_size: int = 1,
    on_image: Callable | None = None,
) -> tuple[ConfusionMatrix, int]:
    """Run `model` over every record of `split` and accumulate one confusion matrix.

    Each image is padded to its own next multiple of 32 and the logits are cropped back, so the
    score is at the original resolution; label 255 is ignored. With `batch_size` > 1, images of
    the same padded size share a model call (`kfcn.padding.predict_classes`): each padded size
    collects images across the whole split until it has `batch_size` of them. The progress bar
    shows the images per second.

    `model` is a Keras model or a `kfcn.inference.Predictor` (an ensemble and/or TTA).
    `on_image(id, image, label, pred)`, when given, sees every image, its (H, W) label and its
    (H, W) prediction (`kfcn.report.Gallery.add`, `kfcn.summaries`).

    Returns:
        The confusion matrix accumulator and the number of images scored.
    """
    dataset = pipeline.eval_dataset(data_dir, split)
    total = pipeline.count_records(data_dir, split)
    if max_images is not None:
        dataset = dataset.take(max_images)
        total = min(total, max_images)
    # A Predictor, or anything that predicts like one (`kfcn.exported.FormatPredictor`).
    predictor = model if hasattr(model, "classes") else Predictor([model])
    examples = (
        (ex["image"].numpy(), ex["label"].numpy(), ex["id"].numpy().decode()) for ex in dataset
    )
    cm = ConfusionMatrix(num_classes)
    count = 0
    with tqdm(total=total, desc=f"evaluate {split}", unit="img", disable=not progress) as bar:
        batches = batches_by_padded_size(
            examples, batch_size, image_of=lambda ex: ex[0], multiple=predictor.input_multiple
        )
        for batch in batches:
            preds = predictor.classes([ex[0] for ex in batch])  # (H_i, W_i) each
            for (image, label, image_id), pred in zip(batch, preds, strict=True):
                cm.update(label, pred)
                if on_image is not None:
                    on_image(image_id, image, label, pred)
            count += len(batch)
            bar.update(len(batch))
            elapsed = bar.format_dict["elapsed"]
            if elapsed > 0:
                bar.set_postfix_str(f"{count / elapsed:.2f} img/s", refresh=False)
    return cm, count


def summary_scores(cm: ConfusionMatrix) -> dict[str, float]:
    """The four summary metrics of a confusion matrix (NaN, for no pixels, as 0)."""
    scores = cm.scores()
    return {k: float(np.nan_to_num(scores[k])) for k in SUMMARY_KEYS}


def score_split(model, data_dir, split, num_classes, max_images=None) -> dict[str, float]:
    """The four summary metrics of `model` on `split` (what training validation logs)."""
    cm, _ = confusion_over_split(model, data_dir, split, num_classes, max_images)
    return summary_scores(cm)


def evaluate_model(
    model: str | Path | Sequence[str | Path],
    data_dir: str | Path,
    split: str,
    batch_size: int = 1,
    max_images: int | None = None,
    progress: bool = False,
    *,
    ensemble: bool = False,
    tta: TTA | None = None,
    precision: str = "float32",
    on_image: Callable | None = None,
    size: tuple[int, int] | None = None,
    tile: int | None = None,
    tile_overlap: float = DEFAULT_OVERLAP,
) -> dict:
    """Score a model file (or an ensemble, with or without test-time augmentation) on a split.

    Args:
        model: a `.keras` file, or a run directory (its latest finished stage; see
            `kfcn.runs.resolve_model`); or several, whose probabilities are averaged; or one
            file written by `kfcn export` (SavedModel directory, TFLite or ONNX file).
        data_dir: directory written by `kfcn prepare`.
        split: any split present in `data_dir`.
        batch_size: images per model call (only images of one padded size share a call).
        max_images: score only the first this many records.
        progress: show a progress bar.
        ensemble: a run directory stands for all its finished stages (averaged).
        tta: test-time augmentation (flip, scales), or None.
        precision: 'float32', 'bfloat16' or 'float16' (see `kfcn.inference.check_precision`).
        on_image: called as `on_image(id, image, label, pred)` for every image scored.
        size: fit every image to this (H, W) (`kfcn.fitting`) and bring the probabilities
            back, as a TFLite file of that size is scored; None: each image at its own size
            (a TFLite file always at its own input size).

        tile: predict by SIZE x SIZE sliding windows (`kfcn.tiling`); None = whole images.
        tile_overlap: the fraction of a window shared with the next, in [0, 1).

    Returns:
        The report (see `make_report`), with `model` (the first file), `models` (all files),
        `tta` (the `TTA.as_dict()` setting, or None), `precision`, `format`
        ('keras', 'saved_model', 'tflite', 'onnx'), `quantization`, `file`, `size` and
        `fitting` (None for any size), and `tile` ({"size", "overlap"}) when tiled.

    Raises:
        ModelError: no such model file, no finished stage, or an unreadable model.
        DataError: `split` is absent (the message lists the splits present), or the data's
            class names (or, for data without names, its class count) differ from the model's.
    """
    loaded = load_format_predictor(model, ensemble, tta, precision, size)
    if loaded is None:  # .keras models at each image's size
        paths = model_paths(model, ensemble)
        class_names = model_info(paths[0])["class_names"]
    else:
        predictor, info, paths = loaded
        class_names = info["class_names"]
    pipeline.count_records(data_dir, split)  # fails early, listing the splits present
    _check_classes(data_dir, paths[0], class_names)
    check_tile(tile, tile_overlap)
    if loaded is None:
        predictor, _, _ = load_predictor(paths, tta=tta, precision=precision)
    if tile is not None:
        predictor = TiledPredictor(predictor, tile, tile_overlap, progress=progress)
    cm, count = confusion_over_split(
        predictor, data_dir, split, len(class_names), max_images, progress, batch_size, on_image
    )
    report = make_report(
        cm.matrix, class_names, count, model=paths[0], split=split, data_dir=data_dir
    )
    report["models"] = [str(p) for p in paths]
    report["tta"] = tta.as_dict() if tta else None
    report["max_images"] = max_images
    report["precision"] = precision
    described = predictor.describe()
    report["format"] = described.get("format", "keras")
    report["quantization"] = described.get("quantization", "none")
    report["file"] = described.get("file", str(paths[0]))
    report["size"] = described.get("size")
    report["fitting"] = described.get("fitting")
    if tile is not None:
        report["tile"] = predictor.tile_setting()
    return report


def _check_classes(data_dir, model_path: Path, class_names: list[str]) -> None:
    """The data's classes must be the model's, by name and in order, not only by count: the same
    names in another order would silently swap the classes in the scores."""
    meta = records.read_meta(data_dir)
    where = Path(data_dir) / records.META_FILE
    data_names = meta.get("class_names")
    if data_names:
        if list(data_names) != list(class_names):
            raise DataError(
                f"{where}: the data's classes {list(data_names)} differ from the classes "
                f"{list(class_names)} of the model {model_path}; evaluate it on data prepared "
                "with its class list (same names, same order)"
            )
        return
    data_classes = meta.get("num_classes")
    if data_classes is not None and int(data_classes) != len(class_names):
        raise DataError(
            f"{where}: the data has {data_classes} classes but the model {model_path} predicts "
            f"{len(class_names)}; evaluate it on data prepared for its classes"
        )


def make_report(matrix: np.ndarray, class_names: list[str], num_images: int, **context) -> dict:
    """The JSON-ready report of a confusion matrix.

    Args:
        matrix: (n, n) confusion matrix, rows = true class.
        class_names: n names.
        num_images: images the matrix covers.
        **context: extra entries (model, split, data_dir), stored as strings.

    Returns:
        dict with `pixel_accuracy`, `mean_accuracy`, `mean_iou`, `fw_iou` (fractions, None when
        undefined), `per_class_iou` (name -> IoU, None where the class has no union),
        `class_names`, `confusion_matrix` (nested lists, rows = true class), `num_images`, and
        the context entries.
    """
    scores = metrics.scores(matrix)
    report = {key: _finite(scores[key]) for key in SUMMARY_KEYS}
    report["per_class_iou"] = {
        name: _finite(iou) for name, iou in zip(class_names, scores["per_class_iou"], strict=True)
    }
    baseline = metrics.scores(metrics.background_baseline(matrix))
    report["all_background"] = {key: _finite(baseline[key]) for key in SUMMARY_KEYS}
    report["class_names"] = list(class_names)
    report["confusion_matrix"] = np.asarray(matrix, dtype=np.int64).tolist()
    report["num_images"] = int(num_images)
    report.update({key: str(value) for key, value in context.items()})
    return report


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def format_table(report: dict) -> str:
    """The report as a readable table: the four metrics, then the IoU of every class."""

    def pct(value: float | None) -> str:
        return "     -" if value is None else f"{100 * value:6.2f}"

    width = max([len(n) for n in report["per_class_iou"]] + [len(n) for n in SUMMARY_NAMES])
    models = report.get("models") or [report.get("model", "?")]
    tta = report.get("tta")
    lines = [
        f"model: {models[0]}" if len(models) == 1 else f"ensemble of {len(models)} (mean prob.):",
        *([f"  {m}" for m in models] if len(models) > 1 else []),
        "tta: "
        + (
            f"flip {'on' if tta['flip'] else 'off'}, scales {', '.join(map(str, tta['scales']))}"
            if tta
            else "none"
        ),
        f"precision: {report.get('precision', 'float32')}",
        *_format_lines(report),
        *(
            [f"tiles: {report['tile']['size']} px, overlap {report['tile']['overlap']:.3g}"]
            if report.get("tile")
            else []
        ),
        f"split: {report.get('split', '?')} ({report['num_images']} images)",
        "",
    ]
    baseline = report.get("all_background", {})
    for key, name in zip(SUMMARY_KEYS, SUMMARY_NAMES, strict=True):
        floor = f"   (all-background: {pct(baseline[key]).strip()} %)" if key in baseline else ""
        lines.append(f"{name:<{width}}  {pct(report[key])} %{floor}")
    lines += ["", f"{'class':<{width}}  IoU (%)"]
    for name, iou in report["per_class_iou"].items():
        lines.append(f"{name:<{width}}  {pct(iou)}" + ("  (no pixels)" if iou is None else ""))
    return "\n".join(lines)


def _format_lines(report: dict) -> list[str]:
    """The format, quantization, file and fixed size of a report, as table lines."""
    if "format" not in report:
        return []
    lines = [f"format: {report['format']} (quantization {report.get('quantization', 'none')})"]
    lines.append(f"file: {report.get('file', report.get('model', '?'))}")
    if report.get("size"):
        height, width = report["size"]
        lines.append(f"input size: {height}x{width} (fitted by {report.get('fitting')})")
    return lines


def default_report_path(
    model_path: str | Path,
    split: str,
    *,
    max_images: int | None = None,
    tta: dict | None = None,
    models: Sequence[str | Path] = (),
    data_dir: str | Path | None = None,
    precision: str | None = None,
    fmt: str | None = None,
    quantization: str | None = None,
    size: Sequence[int] | None = None,
    tile: dict | None = None,
) -> Path:
    """Where a report goes without --out: beside the (first) model, named after every setting
    that changes the numbers, so runs with different settings never overwrite each other.

    `MODEL_STEM-eval-SPLIT[-firstN][-tta[-noflip][-sS1_S2..]][-ensembleK-HASH]` then, when
    given, `-FORMAT[-QUANTIZATION][-HxW]-PRECISION-DATA_NAME-HASH` and `.json`, e.g.
    `fcn8/final-eval-val.json` (all images, no TTA, one model), `final-eval-val-first2.json`
    (`--max-images 2`), `final-eval-val-tta.json` (`--tta` with its default flip and scales),
    `final-eval-val-ensemble3-1a2b3c.json` (3 models; HASH tells apart ensembles of other
    files), `final-eval-val-keras-float32-records-4d5e6f.json` (the data directory
    `.../records`; HASH tells apart data directories of one name), `m-eval-val-tflite-int8-
    512x512-float32-records-4d5e6f.json`.

    Args:
        model_path: the model file (for an ensemble, the first member).
        split: the split scored.
        max_images: `--max-images`, or None for the whole split.
        tta: the `TTA.as_dict()` setting, or None.
        models: every member of an ensemble (one or none: a single model).
        data_dir: the data directory scored, or None.
        precision: the precision, or None.
        fmt: the model's format ('keras', 'saved_model', 'tflite', 'onnx'), or None.
        quantization: a TFLite file's quantization ('none' is left out of the name).
        size: the fixed input (H, W), or None.
    """
    model_path = Path(model_path)
    parts = [f"{model_path.stem}-eval-{split}"]
    if max_images is not None:
        parts.append(f"first{max_images}")
    if tta is not None:
        parts.append("tta")
        if not tta.get("flip", True):
            parts.append("noflip")
        scales = tuple(float(s) for s in tta.get("scales", DEFAULT_SCALES))
        if scales != DEFAULT_SCALES:
            parts.append("s" + "_".join(f"{s:g}" for s in scales))
    if tile is not None:  # -tileS[-oO]: windows of side S, overlap O when not the default
        parts.append(f"tile{tile['size']}")
        if abs(tile["overlap"] - DEFAULT_OVERLAP) > 1e-9:
            parts.append(f"o{tile['overlap']:g}")
    if len(models) > 1:
        members = "\n".join(str(Path(m).resolve()) for m in models)
        digest = hashlib.sha1(members.encode()).hexdigest()[:6]
        parts.append(f"ensemble{len(models)}-{digest}")
    if fmt is not None:
        parts.append(fmt)
    if quantization not in (None, "none"):
        parts.append(quantization)
    if size:
        parts.append(f"{size[0]}x{size[1]}")
    if precision is not None:
        parts.append(precision)
    if data_dir is not None:
        data_dir = Path(data_dir).resolve()
        digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:6]
        parts.append(f"{data_dir.name}-{digest}")
    return model_path.with_name("-".join(parts) + ".json")


def report_path_of(report: dict) -> Path:
    """`default_report_path` of a report made by `evaluate_model`."""
    return default_report_path(
        report["model"],
        report["split"],
        max_images=report.get("max_images"),
        tta=report.get("tta"),
        models=report.get("models") or (),
        data_dir=report.get("data_dir"),
        precision=report.get("precision"),
        fmt=report.get("format"),
        quantization=report.get("quantization"),
        size=report.get("size"),
        tile=report.get("tile"),
    )


def write_report(report: dict, path: str | Path) -> tuple[Path, Path]:
    """Write the report as JSON at `path` and its confusion matrix picture beside it (.png).

    Both files are written atomically.

    Returns:
        The JSON and PNG paths.

    Raises:
        DataError: `path` does not end in .json, or cannot be written.
    """
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise DataError(f"{path}: the report file must end in .json")
    picture = confusion_picture(np.asarray(report["confusion_matrix"]), report["class_names"])
    png = write_atomic(path.with_suffix(".png"), encode_image(picture, "PNG"))
    return write_atomic(path, (json.dumps(report, indent=2) + "\n").encode()), png


def confusion_picture(matrix: np.ndarray, class_names: list[str]) -> Image.Image:
    """A heat map of the row-normalised confusion matrix, with class names on both axes.

    Cell (i, j) is the share of class i's pixels predicted as j, from white (0) to dark blue (1),
    printed in percent where the cells are large enough; rows of classes without pixels are grey.

    Args:
        matrix: (n, n) counts, rows = true class.
        class_names: n names.

    Returns:
        An RGB image.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    n = len(matrix)
    rows = matrix.sum(axis=1, keepdims=True)  # (n, 1)
    shares = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)  # (n, n)
    cell = 24 if n <= 32 else max(4, 768 // n)
    font = ImageFont.load_default(size=12 if cell >= 12 else max(cell - 2, 6))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label = 8 + max(int(np.ceil(measure.textlength(name, font=font))) for name in class_names)
    title = "rows: true class, columns: predicted class (% of the row's pixels)"
    title_h = 24
    left, top = label, title_h + label
    width = max(left + n * cell + 8, int(measure.textlength(title, font=font)) + 16)
    picture = Image.new("RGB", (width, top + n * cell + 8), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((8, title_h // 2), title, fill="black", font=font, anchor="lm")
    dark = np.array([8, 48, 107], dtype=np.float64)
    for i, name in enumerate(class_names):
        y = top + i * cell
        draw.text((left - 4, y + cell // 2), name, fill="black", font=font, anchor="rm")
        column = Image.new("RGB", (label, cell), "white")
        ImageDraw.Draw(column).text((4, cell // 2), name, fill="black", font=font, anchor="lm")
        picture.paste(column.rotate(90, expand=True), (left + i * cell, title_h))
        for j in range(n):
            share = shares[i, j]
            colour = (235, 235, 235) if rows[i, 0] == 0 else 255 + share * (dark - 255)
            box = (left + j * cell, y, left + (j + 1) * cell - 1, y + cell - 1)
            draw.rectangle(box, fill=tuple(int(round(c)) for c in np.broadcast_to(colour, 3)))
            if cell >= 20 and round(100 * share) > 0:
                centre = (box[0] + cell // 2, y + cell // 2)
                ink = "white" if share > 0.5 else "black"
                draw.text(centre, f"{round(100 * share)}", fill=ink, font=font, anchor="mm")
    return picture
