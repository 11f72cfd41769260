"""The `kfcn` command line. Each command parses options, loads the config and calls one library
function; all the work lives in the library. `KfcnError`s become one line on stderr and exit 1;
`OptionError`s become click's usage errors (exit 2)."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from kfcn import __version__
from kfcn.choices import EXPORT_FORMATS, PRECISIONS, QUANTIZATIONS, SCHEMES, STRATEGIES
from kfcn.config import STAGES
from kfcn.errors import DefaultPathError, KfcnError, OptionError

# The project layout (README, "Getting the data"): where each command looks when not told.
SBD_DIR = "data/benchmark_RELEASE/dataset"
VOC_DIR = "data/VOCdevkit/VOC2012"
DATA_DIR = "data/records"
RUN_DIR = "runs/voc"
PREDICTIONS_DIR = "predictions"


def _default_run_dir() -> tuple[str, ...]:
    return (os.environ.get("KFCN_RUN_DIR") or RUN_DIR,)


def _given() -> frozenset[str]:
    """The options of the running command set on the command line or by their variables."""
    ctx = click.get_current_context()
    return frozenset(
        p for p in ctx.params if ctx.get_parameter_source(p) is not ParameterSource.DEFAULT
    )


def _check_default(param: str, flag: str, what: str) -> None:
    """A path option left at its default must exist (`DefaultPathError`)."""
    if param in _given():
        return
    value = click.get_current_context().params[param]
    path = Path(value[0] if isinstance(value, tuple) else value)
    if not path.exists():
        raise DefaultPathError(path, what, flag)


def _warn(line: str) -> None:
    click.echo(line, err=True)


def _echo_devices() -> None:
    """The devices line goes with the command's own header (stdout); a GPU warning to stderr."""
    from kfcn.devices import device_report

    devices, *alerts = device_report()
    click.echo(devices)
    for line in alerts:
        click.echo(line, err=True)


CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML config file (default: the reference recipe, as in configs/default.yaml).",
)
SET_OPTION = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override one config key, e.g. --set train.epochs=5 (repeatable).",
)

# Options shared by `evaluate` and `predict`.
DATA_DIR_OPTION = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DATA_DIR,
    show_default=True,
    envvar="KFCN_DATA_DIR",
    show_envvar=True,
    help="Directory written by `kfcn prepare` (train-*.tfrecord, val-*.tfrecord, meta.json).",
)
MODELS_OPTION = click.option(
    "--model",
    "models",
    multiple=True,
    default=_default_run_dir,
    show_default=f"the latest finished stage of $KFCN_RUN_DIR, else {RUN_DIR}",
    help="A .keras file, or a run directory (its latest finished stage: fcn8, fcn16, fcn32). "
    "Repeat for an ensemble (probabilities averaged).",
)
ENSEMBLE_OPTION = click.option(
    "--ensemble", is_flag=True, help="A run directory --model stands for all its finished stages."
)
TTA_OPTION = click.option(
    "--tta", is_flag=True, help="Test-time augmentation: left-right flip and scales."
)
TTA_SCALES_OPTION = click.option(
    "--tta-scales",
    default="0.75,1.0,1.25",
    show_default=True,
    help="--tta: image scales, comma-separated.",
)
TILE_OPTION = click.option(
    "--tile",
    type=click.IntRange(min=32),
    default=None,
    metavar="SIZE",
    help="Predict at native resolution by SIZE x SIZE sliding windows; the class probabilities "
    "of overlapping windows (each with its --tta views and --ensemble models) are averaged "
    "(no centre weighting), then the argmax is taken. An image within one window is "
    "predicted whole. Memory is bounded by the window.",
)
TILE_OVERLAP_OPTION = click.option(
    "--tile-overlap",
    type=click.FloatRange(min=0.0, max=1.0, max_open=True),
    default=1 / 3,
    show_default="1/3",
    metavar="F",
    help="--tile: the share of a window that overlaps the next (stride SIZE x (1 - F)); the "
    "last row and column of windows are aligned to the image border.",
)
BATCH_SIZE_OPTION = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Images per model call (images of one padded size only).",
)
PRECISION_OPTION = click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="float32",
    show_default=True,
    help="Compute precision; logits stay float32. bfloat16: GPU of compute capability 8.0 "
    "(Ampere) or newer, or CPU with AVX512_BF16/AMX-BF16 (x86) or BF16 (Arm); float16: GPU.",
)


class KfcnCommand(click.Command):
    """A click command that reports the library's `OptionError`s as click's usage errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OptionError as exc:
            if exc.option is not None:
                raise click.BadParameter(str(exc), ctx, param_hint=exc.option) from None
            raise click.UsageError(str(exc), ctx) from None


class KfcnGroup(click.Group):
    """A click group that turns user errors into one clear line and a non-zero exit."""

    command_class = KfcnCommand

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KfcnError as exc:
            click.echo(f"kfcn: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("kfcn: interrupted", err=True)
            sys.exit(130)


@click.group(cls=KfcnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kfcn")
@click.option(
    "--verbose",
    is_flag=True,
    envvar="KFCN_VERBOSE",
    help="Also show TensorFlow's own log messages (hidden by default). Env: KFCN_VERBOSE=1.",
)
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """kfcn: train and run fully convolutional networks (FCN-32s/16s/8s) for semantic
    segmentation on Pascal VOC.

    Typical pipeline: prepare -> train --stage fcn32 -> fcn16 -> fcn8 -> evaluate -> predict.
    Run from the project folder, every command finds the README's layout by default: data/
    (downloads, records), runs/voc, predictions/.
    """
    from kfcn.devices import quiet_tensorflow

    # Before any command imports TensorFlow. Only the program (`run`) filters file descriptor 2:
    # a process that calls `main` (tests) keeps its own.
    quiet_tensorflow(verbose, filter_fd2=bool(ctx.obj and ctx.obj.get("program")))


@main.command(short_help="Write sharded TFRecords from SBD + VOC 2012 or your own folder.")
@click.option(
    "--sbd-dir",
    type=click.Path(path_type=Path),
    default=SBD_DIR,
    show_default=True,
    help="SBD's benchmark_RELEASE/dataset (img/*.jpg, cls/*.mat, train.txt, val.txt).",
)
@click.option(
    "--voc-dir",
    type=click.Path(path_type=Path),
    default=VOC_DIR,
    show_default=True,
    help="VOCdevkit/VOC2012 (JPEGImages, SegmentationClass, ImageSets/Segmentation).",
)
@click.option(
    "--scheme",
    type=click.Choice(SCHEMES),
    default="seed",
    show_default=True,
    help="SBD + VOC: which ids go to train and val (see above).",
)
@click.option(
    "--images",
    type=click.Path(file_okay=False, path_type=Path),
    help="Own data: folder of images NAME.jpg / .jpeg / .png.",
)
@click.option(
    "--masks",
    type=click.Path(file_okay=False, path_type=Path),
    help="Own data: folder of masks NAME.png (class indices, or RGB colours with --classes).",
)
@click.option(
    "--classes",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Own data: class list YAML (names, optional colors, ignore_index).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Own data: share of pairs drawn for val (seeded; 0 = no val split).",
)
@click.option(
    "--val-list",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Own data: file of the NAMEs that make up val, one per line.",
)
@click.option(
    "--ignore-index",
    type=click.IntRange(0, 65535),
    default=None,
    help="Own data: mask value of unscored pixels [default: the class list's, else 255].",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Own data: seed of the val draw.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=DATA_DIR,
    show_default=True,
    envvar="KFCN_DATA_DIR",
    show_envvar=True,
    help="Output directory.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Reader processes [default: CPU count].",
)
@click.option("--skip-bad", is_flag=True, help="Skip unusable samples (listed in meta.json).")
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Records per shard.",
)
def prepare(**options) -> None:
    """Write sharded TFRecords of a train and a val split, from SBD + VOC 2012 (--sbd-dir,
    --voc-dir) or from your own folder of images and masks (--images, --masks).

    \b
    SBD + VOC schemes:
      seed      val   = the first 1,200 ids of SBD val.txt (file order)
                train = SBD train.txt + the rest of SBD val.txt
                        + the VOC trainval ids not in SBD        (10,831 / 1,200)
                an id in both datasets takes its label from SBD
      voc12val  val   = VOC val.txt                              (1,449)
                train = (SBD train + val + VOC train) - VOC val  (10,582, "train_aug")
                an id in both datasets takes its label from VOC
      seg11valid val  = the FCN paper's 736 seg11valid ids, VOC labels (736)
                train = SBD train.txt, SBD labels                (8,498)
    val keeps its list's order; train is sorted by id.

    \b
    Own data: images/NAME.jpg (.jpeg, .png) pairs with masks/NAME.png, a palette or greyscale
    PNG of class indices (RGB colour masks need --classes with colors). Mask values equal to
    the ignore index are not scored (stored as 255); other values outside the classes stop
    the run, naming the file. Without --classes the classes are 0..(largest value), named
    class_0, class_1, ... Unpaired files are listed (and kept in meta.json), not used.

    Writes {split}-NNNNN-of-NNNNN.tfrecord shards, {split}.txt (ids in record order) and
    meta.json (last, with the classes). Shards appear only when complete; re-running the same
    command after an interruption keeps the finished shards and writes the rest, giving
    identical records.
    """
    from kfcn.data.request import PrepareRequest, prepare_records

    request = PrepareRequest(**options, given=_given())
    prepare_records(request, echo=click.echo, warn=_warn, progress=True)


@main.command(short_help="Write a small synthetic dataset (SBD + VOC layouts, or --toy folder).")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Root directory."
)
@click.option(
    "--toy",
    is_flag=True,
    help="Write a 3-class toy set as a folder of images and masks (your own data's layout).",
)
@click.option(
    "--count", type=click.IntRange(min=1), default=40, show_default=True, help="--toy: images."
)
@click.option(
    "--sbd-train", type=click.IntRange(min=0), default=240, show_default=True, help="SBD train ids."
)
@click.option(
    "--sbd-val", type=click.IntRange(min=0), default=60, show_default=True, help="SBD val ids."
)
@click.option(
    "--voc-extra",
    type=click.IntRange(min=0),
    default=40,
    show_default=True,
    help="VOC ids not in SBD.",
)
@click.option(
    "--size",
    default=None,
    help="HxW, or H1-H2xW1-W2 drawn per image [default: 64-96x80-128; --toy: 40-56x48-72].",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed."
)
def synthesize(out_dir, toy, count, sbd_train, sbd_val, voc_extra, size, seed) -> None:
    """Write images of coloured shapes with their labels in the real SBD and VOC 2012 layouts,
    then print the two directories to pass to `kfcn prepare`.

    With --toy, write OUT/images (JPEGs and PNGs), OUT/masks (index masks), OUT/masks_rgb (RGB
    colour masks) and OUT/classes.yaml (background, disc, box) instead, then print the
    `kfcn prepare` command for them."""
    from kfcn.data.synthetic import synthesize_dataset

    synthesize_dataset(
        out_dir, toy, count, sbd_train, sbd_val, voc_extra, size, seed, _given(), click.echo
    )


@main.command(short_help="Train one FCN stage (fcn32, fcn16, fcn8).")
@click.option(
    "--stage",
    required=True,
    type=click.Choice(STAGES),
    help="fcn32 starts from the backbone (model.backbone, model.backbone_weights); fcn16 from "
    "this run's fcn32, fcn8 from its fcn16 (or --init).",
)
@DATA_DIR_OPTION
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=RUN_DIR,
    show_default=True,
    envvar="KFCN_RUN_DIR",
    show_envvar=True,
    help="Run directory; the stage writes RUN_DIR/STAGE/.",
)
@CONFIG_OPTION
@SET_OPTION
@click.option(
    "--init",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Start from this .keras model instead of the previous stage in RUN_DIR.",
)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default="auto",
    show_default=True,
    help="auto: multiworker when TF_CONFIG is set, mirrored with several GPUs.",
)
@click.option(
    "--mixed-precision",
    is_flag=True,
    help="mixed_float16 on GPU; without one, mixed_bfloat16 on a CPU with bfloat16 instructions.",
)
@click.option("--jit", is_flag=True, help="Compile the train step with XLA.")
@click.option("--overwrite", is_flag=True, help="Train a finished stage again from scratch.")
@click.option(
    "--reinit-head",
    is_flag=True,
    help="Start the score layers fresh: load every other layer of the model the stage starts "
    "from, for a model trained on other classes than the data's.",
)
def train(
    stage,
    data_dir,
    run_dir,
    config_path,
    overrides,
    init,
    strategy,
    mixed_precision,
    jit,
    overwrite,
    reinit_head,
) -> None:
    """Train FCN-32s, FCN-16s or FCN-8s on prepared shards.

    Re-running the same command after an interruption (Ctrl-C, kill, preemption) resumes at the
    last finished epoch. Outputs in RUN_DIR/STAGE: config.yaml, history.csv, logs/ (TensorBoard),
    checkpoint/, best.keras (best val mean IoU) and final.keras.
    """
    from kfcn.config import load_config
    from kfcn.train import TrainOptions, train_stage

    cfg = load_config(config_path, overrides)
    _check_default("data_dir", "--data-dir DIR (or set KFCN_DATA_DIR)", "prepared records")
    _echo_devices()
    opts = TrainOptions(
        stage, data_dir, run_dir, init, strategy, mixed_precision, jit, overwrite, reinit_head
    )
    train_stage(cfg, opts, echo=click.echo)


@main.command(short_help="Score a model on a split: pixel acc, mean acc, mean IoU, fw IoU.")
@click.option("--split", default="val", show_default=True, help="Any split in --data-dir.")
@DATA_DIR_OPTION
@MODELS_OPTION
@ENSEMBLE_OPTION
@TTA_OPTION
@TTA_SCALES_OPTION
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Report file (.json); the confusion matrix picture goes beside it (.png). "
    "[default: beside the model, MODEL_STEM-eval-SPLIT...json, with -firstN, -tta..., "
    "-ensembleK-HASH for --max-images, --tta, ensembles, then the format, precision and data "
    "directory]",
)
@BATCH_SIZE_OPTION
@click.option(
    "--max-images", type=click.IntRange(min=1), default=None, help="Score only the first N."
)
@PRECISION_OPTION
@TILE_OPTION
@TILE_OVERLAP_OPTION
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write an HTML report, DIR/index.html: metrics, charts, worst and best images.",
)
@click.option(
    "--report-images",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="--report: how many worst and how many best images to show.",
)
@click.option(
    "--size",
    "fit_size",
    default=None,
    metavar="HxW",
    help="Fit every image to HxW (resize keeping the aspect ratio, pad) and bring the "
    "probabilities back, as a TFLite file of that size is scored (its baseline).",
)
def evaluate(
    split,
    data_dir,
    models,
    ensemble,
    tta,
    tta_scales,
    out,
    batch_size,
    max_images,
    precision,
    tile,
    tile_overlap,
    report_dir,
    report_images,
    fit_size,
) -> None:
    """Score a model on every image of a prepared split, each at its original resolution.

    MODEL may also be a file written by `kfcn export` (a SavedModel directory, a .tflite file
    of any quantization, an .onnx file), scored the same way; a TFLite file's images are fitted
    to its input size. The report names the format, the quantization and the file.

    Prints pixel accuracy, mean accuracy, mean IoU and frequency-weighted IoU (from one
    confusion matrix over the split, label 255 ignored) and the IoU of every class, then writes
    them as JSON with the confusion matrix, and a picture of the row-normalised matrix.
    The table and the JSON name the model(s) and the TTA setting that produced the numbers.
    `--report DIR` adds a static HTML page with per-class IoU bars, the confusion matrix and
    the worst and best images (image | ground truth | prediction).
    """
    from kfcn.evaluate import evaluate_model, format_table, report_path_of, write_report
    from kfcn.inference import TTA, parse_scales

    if out is not None and out.suffix.lower() != ".json":
        raise click.BadParameter(f"{out}: expected a .json file name", param_hint="--out")
    setting = TTA(scales=parse_scales(tta_scales)) if tta else None
    _check_default("data_dir", "--data-dir DIR (or set KFCN_DATA_DIR)", "prepared records")
    _check_default("models", "--model MODEL (or set KFCN_RUN_DIR)", "run directory")
    _echo_devices()
    gallery = None
    if report_dir is not None:
        from kfcn.report import Gallery  # matplotlib: only for --report

        gallery = Gallery(report_images)
    report = evaluate_model(
        models,
        data_dir,
        split,
        batch_size,
        max_images,
        True,
        ensemble=ensemble,
        tta=setting,
        precision=precision,
        on_image=gallery.add if gallery else None,
        size=_parse_fit_size(fit_size),
        tile=tile,
        tile_overlap=tile_overlap,
    )
    click.echo(format_table(report))
    json_path, png_path = write_report(report, out or report_path_of(report))
    click.echo(f"wrote {json_path} and {png_path}")
    if gallery is not None:
        from kfcn.report import write_evaluation_page

        click.echo(f"wrote {write_evaluation_page(report, gallery, report_dir)}")


@main.command(short_help="Write colour-palette segmentation masks for images.")
@click.argument("images", nargs=-1, required=True)
@MODELS_OPTION
@ENSEMBLE_OPTION
@TTA_OPTION
@TTA_SCALES_OPTION
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=PREDICTIONS_DIR,
    show_default=True,
    help="Output folder (created when missing).",
)
@click.option("--overlay", is_flag=True, help="Also write NAME_overlay.jpg with a legend.")
@BATCH_SIZE_OPTION
@click.option(
    "--max-side",
    type=click.IntRange(min=32),
    default=2048,
    show_default=True,
    help="A longer image is predicted shrunk to this long side; its mask is enlarged back. "
    "No --tta view is larger either. Not applied with --tile.",
)
@PRECISION_OPTION
@TILE_OPTION
@TILE_OVERLAP_OPTION
def predict(
    images,
    models,
    ensemble,
    tta,
    tta_scales,
    out_dir,
    overlay,
    batch_size,
    max_side,
    precision,
    tile,
    tile_overlap,
) -> None:
    """Predict a segmentation mask for each IMAGE (files, directories or glob patterns).

    \b
    Writes OUT/NAME.png: a palette PNG of class indices, the size of the image as displayed
    (EXIF orientation applied), coloured with the model's palette; NAME is the input's stem,
    with -2, -3, ... added when two inputs share one. With --overlay also OUT/NAME_overlay.jpg.
    JPEGs are decoded exactly as in training and `kfcn evaluate`; transparent images are put on
    white; 16-bit images keep their high byte. Unreadable inputs are reported and skipped; the
    exit status is then 1. An output that would replace an input stops everything up front.
    """
    from kfcn.inference import TTA, parse_scales
    from kfcn.predict import predict_images

    # No TTA view is larger than --max-side, the bound on memory.
    setting = TTA(scales=parse_scales(tta_scales), max_side=max_side) if tta else None
    _check_default("models", "--model MODEL (or set KFCN_RUN_DIR)", "run directory")
    _echo_devices()
    result = predict_images(
        models,
        images,
        out_dir,
        overlay,
        batch_size,
        max_side=max_side,
        progress=True,
        ensemble=ensemble,
        tta=setting,
        precision=precision,
        tile=tile,
        tile_overlap=tile_overlap,
    )
    click.echo(f"wrote {len(result.written)} file(s) to {out_dir}")
    if result.failures:
        raise KfcnError(
            f"{len(result.failures)} of {result.num_inputs} input(s) failed (listed above)"
        )


@main.command(short_help="Convert a published Caffe FCN (.caffemodel) into a kfcn model.")
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="The .keras file to write."
)
@click.option(
    "--classes",
    type=click.Path(path_type=Path),
    default=None,
    help="A class-list YAML file (names, colors) for the model's classes; default the VOC ones.",
)
def convert(source, out, classes) -> None:
    """Convert SOURCE, a Caffe FCN-32s/16s/8s (e.g. fcn8s-heavy-pascal.caffemodel), into a
    kfcn model of the Caffe topology (model.topology: caffe) that every command takes.

    The variant (and at-once FCN-8s) comes from the layer names, the widths from the weights;
    no Caffe install is needed.
    """
    from kfcn.convert import convert_caffemodel

    path, info = convert_caffemodel(source, out, classes)
    at_once = " at-once" if info.get("at_once") else ""
    click.echo(f"wrote {path} ({info['variant']}{at_once}, {len(info['class_names'])} classes)")


@main.command(short_help="Export a model as a SavedModel or a TFLite file for serving.")
@click.option(
    "--model",
    required=True,
    help="A .keras file, or a run directory (its latest finished stage: fcn8, fcn16, fcn32).",
)
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(EXPORT_FORMATS),
    help="saved_model: a directory, images of any size; tflite: one file, one size (--size); "
    "onnx: one file, images of any size (needs pip install 'kfcn[onnx]').",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="SavedModel directory, or .tflite or .onnx file (an earlier export there is replaced).",
)
@click.option("--size", default=None, metavar="HxW", help="tflite: the input image size.")
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZATIONS),
    default="none",
    show_default=True,
    help="tflite weights: float32 (none), float16, int8 weights (dynamic), or int8 weights and "
    "activations (int8, needs --calibration-data).",
)
@click.option(
    "--calibration-data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="--quantize int8: a directory written by `kfcn prepare`; its train images calibrate.",
)
@click.option(
    "--calibration-images",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="--quantize int8: how many train images (a seeded sample of all shards) calibrate.",
)
def export(model, fmt, out, size, quantize, calibration_data, calibration_images) -> None:
    """Export a model with its padding for serving, without kfcn or Keras.

    \b
    saved_model  signature serving_default: image (H, W, 3) uint8 RGB, any size
                 -> mask (H, W) uint8 class indices, probabilities (H, W, C) float32
    tflite       signature serving_default: image (1, H, W, 3) uint8 RGB of --size
                 -> mask (1, H, W) uint8, probabilities (1, H, W, C) float32
    onnx         input image (H, W, 3) uint8 RGB, any size
                 -> mask (H, W) uint8, probabilities (H, W, C) float32
    Class names, palette and variant go to OUT/assets.extra/kfcn.json (SavedModel) or to
    OUT with .json instead of .tflite. tflite --quantize float16/dynamic/int8 shrinks the file;
    input and mask stay uint8.
    """
    from kfcn.export import export_model, parse_size

    size = parse_size(size) if size is not None else None
    written = export_model(model, fmt, out, size, quantize, calibration_data, calibration_images)
    click.echo(f"wrote {written}")


def _parse_fit_size(text: str | None) -> tuple[int, int] | None:
    """`evaluate --size HxW`, or None."""
    if text is None:
        return None
    from kfcn.export import parse_size

    return parse_size(text)


def run() -> None:
    """The `kfcn` program: `main`, its file descriptor 2 filtered (`kfcn.devices.filter_stderr`,
    unless --verbose), then a quick exit.

    At exit Python's collector would walk every object TensorFlow created once more, about a
    second on a small CPU after the work is done; freezing them first skips that walk. Only for
    the program: a process that calls `main` again (tests) keeps collecting as usual.
    """
    try:
        main(obj={"program": True})
    finally:
        gc.freeze()


if __name__ == "__main__":
    run()
