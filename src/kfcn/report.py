"""`kfcn evaluate --report DIR`: a static HTML page to look at, with its pictures beside it.

    DIR/index.html      the metrics next to the all-background floor, the run's settings, and
                        the pictures below
    DIR/iou.png         per-class IoU bars (matplotlib), with the class names
    DIR/confusion.png   the row-normalised confusion matrix (matplotlib)
    DIR/images/*.png    the N worst and N best images by per-image mean IoU, each as
                        image | ground truth | prediction in the model's palette

The page uses no script, style sheet or picture from elsewhere: the folder can be copied or
attached as it is. `Gallery` keeps the worst and best images while `kfcn evaluate` streams over
the split, so memory holds 2N images whatever the split's size. `triptych` also makes the
TensorBoard pictures of training (`kfcn.summaries`).
"""

from __future__ import annotations

import heapq
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from kfcn import __version__
from kfcn.images import encode_image, write_atomic
from kfcn.metrics import confusion_matrix, scores
from kfcn.palette import IGNORE_LABEL

IGNORE_COLOUR = (224, 224, 192)  # VOC's colour for label 255 (not scored)
GAP = 4  # pixels of white between the three panels of a triptych
DEFAULT_IMAGES = 8
SUMMARY = (
    ("pixel_accuracy", "pixel accuracy"),
    ("mean_accuracy", "mean accuracy"),
    ("mean_iou", "mean IoU"),
    ("fw_iou", "frequency-weighted IoU"),
)


def colour_mask(mask: np.ndarray, palette) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours; IGNORE_LABEL in VOC's cream colour."""
    colours = np.zeros((256, 3), np.uint8)
    palette = np.asarray(palette, np.uint8).reshape(-1, 3)[:255]
    colours[: len(palette)] = palette
    colours[IGNORE_LABEL] = IGNORE_COLOUR
    return colours[np.asarray(mask, np.uint8)]


def triptych(image: np.ndarray, label: np.ndarray, pred: np.ndarray, palette) -> np.ndarray:
    """image | ground truth | prediction side by side, white gaps between them.

    Args:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) true class indices (IGNORE_LABEL where not scored).
        pred: (H, W) predicted class indices.
        palette: (C, 3) class colours.

    Returns:
        (H, 3W + 2 GAP, 3) uint8.
    """
    h = image.shape[0]
    gap = np.full((h, GAP, 3), 255, np.uint8)
    panels = [np.asarray(image, np.uint8), colour_mask(label, palette), colour_mask(pred, palette)]
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)


def image_mean_iou(label: np.ndarray, pred: np.ndarray) -> float:
    """Mean IoU of one image over the classes in its label or prediction (NaN: nothing scored).

    The same formula as the split's mean IoU (`kfcn.metrics.scores`), on this image's pixels.
    """
    label = np.asarray(label)
    valid = label[label != IGNORE_LABEL]
    n = 1 + max(int(valid.max()) if valid.size else 0, int(np.max(pred)) if np.size(pred) else 0)
    return scores(confusion_matrix(label, pred, n))["mean_iou"]


class Gallery:
    """Scores every image by its own mean IoU and keeps the `n` worst and `n` best.

    Pass `add` as the per-image hook of `kfcn.evaluate.confusion_over_split`.
    """

    def __init__(self, n: int = DEFAULT_IMAGES):
        self.n = n
        self.ious: dict[str, float] = {}  # image id -> mean IoU, in record order
        self._worst: list = []  # heap of (-iou, -index, id, image, label, pred)
        self._best: list = []  # heap of (iou, -index, id, image, label, pred)

    def add(self, image_id: str, image: np.ndarray, label: np.ndarray, pred: np.ndarray) -> None:
        """Score one image; keep its arrays while it is among the worst or best `n`."""
        iou = image_mean_iou(label, pred)
        index = len(self.ious)
        self.ious[image_id] = iou
        if self.n <= 0 or np.isnan(iou):
            return
        item = (image_id, image, label, pred)
        # Ties go to the earlier image in both lists (the heap pops the later one first).
        for heap, key in ((self._worst, -iou), (self._best, iou)):
            entry = (key, -index, *item)
            if len(heap) < self.n:
                heapq.heappush(heap, entry)
            elif entry[:2] > heap[0][:2]:
                heapq.heapreplace(heap, entry)

    def worst(self) -> list[tuple[str, float, np.ndarray, np.ndarray, np.ndarray]]:
        """(id, IoU, image, label, pred), lowest IoU first."""
        return [(e[2], -e[0], *e[3:]) for e in sorted(self._worst, reverse=True)]

    def best(self) -> list[tuple[str, float, np.ndarray, np.ndarray, np.ndarray]]:
        """(id, IoU, image, label, pred), highest IoU first."""
        return [(e[2], e[0], *e[3:]) for e in sorted(self._best, reverse=True)]


# ------------------------------------------------------------------------------------- charts


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def iou_chart(per_class_iou: dict, palette, floor: float | None = None) -> bytes:
    """PNG of horizontal per-class IoU bars in the class colours, with the class names.

    Classes without pixels (IoU None) are listed with 'no pixels'. `floor`, the all-background
    mean IoU, is drawn as a dashed line.
    """
    plt = _pyplot()
    names = list(per_class_iou)
    values = [100 * v if v is not None else 0.0 for v in per_class_iou.values()]
    colours = np.asarray(palette, np.float64).reshape(-1, 3)[: len(names)] / 255
    figure, axes = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
    y = np.arange(len(names))
    axes.barh(y, values, color=colours, edgecolor="black", linewidth=0.5)
    for i, value in enumerate(per_class_iou.values()):
        text = "no pixels" if value is None else f"{100 * value:.1f}"
        axes.text(min(values[i], 100) + 1, i, text, va="center", fontsize=8)
    if floor is not None:
        axes.axvline(100 * floor, color="grey", linestyle="--", linewidth=1)
    axes.set_yticks(y, names, fontsize=9)
    axes.invert_yaxis()
    axes.set_xlim(0, 110)
    axes.set_xlabel("IoU (%)")
    axes.set_title("IoU per class")
    return _png(figure)


def confusion_chart(matrix, class_names: list[str]) -> bytes:
    """PNG of the row-normalised confusion matrix (rows: true class), percent in the cells."""
    plt = _pyplot()
    matrix = np.asarray(matrix, np.float64)
    rows = matrix.sum(axis=1, keepdims=True)  # (n, 1)
    shares = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)  # (n, n)
    n = len(class_names)
    side = max(4.0, 0.38 * n + 2)
    figure, axes = plt.subplots(figsize=(side + 1, side))
    shown = axes.imshow(100 * shares, cmap="Blues", vmin=0, vmax=100)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label="% of the true class's pixels")
    axes.set_xticks(range(n), class_names, rotation=90, fontsize=8)
    axes.set_yticks(range(n), class_names, fontsize=8)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if n <= 32:
        for i, j in zip(*np.nonzero(np.rint(100 * shares) > 0), strict=True):
            share = shares[i, j]
            ink = "white" if share > 0.5 else "black"
            axes.text(j, i, f"{100 * share:.0f}", ha="center", va="center", fontsize=6, color=ink)
    axes.set_title("confusion matrix (row-normalised)")
    return _png(figure)


# --------------------------------------------------------------------------------------- page


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def _settings(report: dict) -> list[tuple[str, str]]:
    models = report.get("models") or [report.get("model", "?")]
    tta = report.get("tta")
    tta_text = (
        f"flip {'on' if tta['flip'] else 'off'}, scales {', '.join(map(str, tta['scales']))}"
        if tta
        else "none"
    )
    return [
        ("model", models[0]),
        ("ensemble", f"{len(models)} models: " + ", ".join(models) if len(models) > 1 else "no"),
        ("split", f"{report.get('split', '?')} ({report['num_images']} images)"),
        ("data", str(report.get("data_dir", "?"))),
        ("test-time augmentation", tta_text),
        ("precision", str(report.get("precision", "float32"))),
        ("kfcn version", __version__),
    ]


def _gallery_html(title: str, items, folder: Path, prefix: str, palette) -> str:
    cells = []
    for rank, (image_id, iou, image, label, pred) in enumerate(items, start=1):
        name = f"images/{prefix}-{rank:02d}.png"
        picture = Image.fromarray(triptych(image, label, pred, palette))
        write_atomic(folder / name, encode_image(picture, "PNG"))
        cells.append(
            f'<figure><img src="{name}" alt="{html.escape(image_id)}">'
            f"<figcaption>{html.escape(image_id)}: mean IoU {100 * iou:.1f} %</figcaption></figure>"
        )
    body = "".join(cells) or "<p>no scored images</p>"
    return f"<h2>{title}</h2><p class=note>image | ground truth | prediction</p>{body}"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kfcn evaluation: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1150px; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ display: inline-block; margin: 0.4em; vertical-align: top; }}
figure img {{ image-rendering: pixelated; height: 120px; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.85em; }}
.note {{ color: #666; font-size: 0.9em; }}
.charts img {{ max-width: 49%; vertical-align: top; }}
</style></head>
<body>
<h1>kfcn evaluation: {title}</h1>
<table><tr><th>metric</th><th>model</th><th>all-background floor</th></tr>{metrics}</table>
<table>{settings}</table>
<h2>IoU per class and confusion matrix</h2>
<div class=charts><img src="iou.png" alt="IoU per class">
<img src="confusion.png" alt="confusion matrix"></div>
{worst}
{best}
<h2>IoU per class</h2>
<table><tr><th>class</th><th>IoU</th></tr>{classes}</table>
<p class=note>kfcn {version}</p>
</body></html>
"""


def write_html_report(report: dict, gallery: Gallery, out_dir: str | Path, palette) -> Path:
    """Write `out_dir/index.html` and its pictures for an evaluation report.

    Args:
        report: the dict of `kfcn.evaluate.evaluate_model`.
        gallery: the worst and best images, filled during the evaluation.
        out_dir: created if needed; earlier pictures of the same names are replaced.
        palette: (C, 3) class colours (the model's).

    Returns:
        The path of index.html.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    floor = report.get("all_background", {})
    write_atomic(
        out_dir / "iou.png", iou_chart(report["per_class_iou"], palette, floor.get("mean_iou"))
    )
    write_atomic(
        out_dir / "confusion.png",
        confusion_chart(report["confusion_matrix"], report["class_names"]),
    )
    metrics = "".join(
        f"<tr><td>{name}</td><td class=num>{_pct(report.get(key))}</td>"
        f"<td class=num>{_pct(floor.get(key))}</td></tr>"
        for key, name in SUMMARY
    )
    settings = "".join(
        f"<tr><th>{name}</th><td>{html.escape(value)}</td></tr>"
        for name, value in _settings(report)
    )
    classes = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        f"<td class=num>{'no pixels' if iou is None else _pct(iou)}</td></tr>"
        for name, iou in report["per_class_iou"].items()
    )
    n = gallery.n
    page = PAGE.format(
        title=html.escape(
            f"{'/'.join(Path(str(report.get('model', '?'))).parts[-2:])} on {report.get('split')}"
        ),
        metrics=metrics,
        settings=settings,
        classes=classes,
        worst=_gallery_html(f"The {n} worst images", gallery.worst(), out_dir, "worst", palette),
        best=_gallery_html(f"The {n} best images", gallery.best(), out_dir, "best", palette),
        version=__version__,
    )
    return write_atomic(out_dir / "index.html", page.encode())


def write_evaluation_page(report: dict, gallery: Gallery, out_dir: str | Path) -> Path:
    """`write_html_report` in the palette stored in the report's (first) model file."""
    from kfcn.models import model_info

    palette = model_info(report["model"])["palette"]
    return write_html_report(report, gallery, out_dir, palette)
