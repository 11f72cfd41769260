"""`kfcn train`: one FCN stage on streamed TFRecords, resumable, on one device or many machines.

Output of a stage, in `RUN_DIR/STAGE/`:

    config.yaml     the resolved config
    history.csv     one row per finished epoch (train and val metrics)
    logs/           TensorBoard
    checkpoint/     model + optimizer state of the last finished epoch (resume; removed at the end)
    best.keras      the model with the best val mean IoU (when validating)
    final.keras     the model after the last epoch; its presence marks the stage finished
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kfcn import __version__
from kfcn.callbacks import (
    HistoryCSV,
    ResumeCheckpoint,
    SaveBest,
    StopOnNonFinite,
    Validation,
    read_resume_state,
)
from kfcn.config import STAGES, Config, save_config
from kfcn.data import pipeline, records
from kfcn.errors import ConfigError, KfcnError
from kfcn.evaluate import score_split
from kfcn.keras_compat import build_for_fit, patch_multiworker_reduce
from kfcn.losses import MaskedSparseCrossEntropy
from kfcn.metrics import MeanIoU, PixelAccuracy
from kfcn.models import apply_freeze, build_fcn, make_info, save_model, transfer_weights
from kfcn.palette import VOC_CLASSES, voc_colormap
from kfcn.summaries import SegmentationSummaries

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
FINAL_MODEL = "final.keras"
BEST_MODEL = "best.keras"


@dataclass
class TrainOptions:
    """What `kfcn train` was asked to do, apart from the config."""

    stage: str
    data_dir: Path
    run_dir: Path
    init: Path | None = None
    strategy: str = "auto"
    mixed_precision: bool = False
    jit: bool = False
    overwrite: bool = False


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`auto` picks multi-worker when TF_CONFIG is set, mirrored with several GPUs, else default."""
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy {name!r}: expected one of {', '.join(STRATEGIES)}")
    if name == "auto":
        if os.environ.get("TF_CONFIG"):
            name = "multiworker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multiworker":
        patch_multiworker_reduce()
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError(
                "--strategy multiworker needs TF_CONFIG (see README: several machines)"
            )
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"TF_CONFIG is not valid JSON ({exc})") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes outputs (always true outside multi-worker runs)."""
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def init_source(opts: TrainOptions, cfg: Config) -> Path | str:
    """The model a stage starts from: ImageNet/backbone weights for fcn32, else a previous stage."""
    if opts.init is not None:
        if not Path(opts.init).is_file():
            raise KfcnError(f"--init {opts.init}: no such model file")
        return Path(opts.init)
    if opts.stage == "fcn32":
        return cfg.model.backbone_weights
    previous = STAGES[STAGES.index(opts.stage) - 1]
    path = Path(opts.run_dir) / previous / FINAL_MODEL
    if not path.is_file():
        raise KfcnError(
            f"stage {opts.stage} starts from {previous}, but {path} does not exist; run "
            f"`kfcn train --stage {previous} --data-dir {opts.data_dir} --run-dir {opts.run_dir}` "
            "first (or pass --init MODEL)"
        )
    return path


def dataset_classes(data_dir: Path, cfg: Config) -> tuple[list[str], list[list[int]]]:
    """Class names and palette of the prepared data; the data decides the number of classes.

    When `meta.json` lists its classes (`kfcn prepare` always does) and `model.num_classes`
    differs, `cfg.model.num_classes` is set to the data's count, with a one-line note. Data
    without a class list keeps the config's count: VOC names and colours for 21 classes, else
    `class_0`, `class_1`, ... with the VOC colours.
    """
    meta = records.read_meta(data_dir)
    names = [str(n) for n in meta.get("class_names") or []]
    if names and len(names) != cfg.model.num_classes:
        print(
            f"note: model.num_classes = {len(names)}, the classes of "
            f"{Path(data_dir) / records.META_FILE} (the config said {cfg.model.num_classes})"
        )
        cfg.model.num_classes = len(names)
    if not names:
        n = cfg.model.num_classes
        names = list(VOC_CLASSES) if n == len(VOC_CLASSES) else [f"class_{i}" for i in range(n)]
    palette = meta.get("palette") or voc_colormap(len(names)).tolist()
    if len(palette) != len(names):
        raise ConfigError(
            f"{Path(data_dir) / records.META_FILE}: {len(names)} class names but "
            f"{len(palette)} palette colours; prepare the data again"
        )
    return names, palette


def _learning_rate(cfg: Config, total_steps: int):
    lr = cfg.train.learning_rate
    if cfg.train.lr_schedule == "poly":
        return keras.optimizers.schedules.PolynomialDecay(lr, total_steps, 0.0, power=0.9)
    if cfg.train.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, total_steps)
    return lr


def build_stage_model(opts: TrainOptions, cfg: Config, source) -> tuple[keras.Model, list[str]]:
    """Build the stage's model, take the previous stage's weights, apply the freeze patterns."""
    from_backbone = opts.stage == "fcn32" and not isinstance(source, Path)
    model = build_fcn(
        opts.stage,
        num_classes=cfg.model.num_classes,
        backbone_weights=source if from_backbone else "none",
        weight_decay=cfg.train.weight_decay,
        dropout=cfg.model.dropout,
        train_upsampling=cfg.model.train_upsampling,
    )
    if not from_backbone:
        transfer_weights(source, model)
    frozen = apply_freeze(model, cfg.model.freeze[opts.stage])
    return model, frozen


def _param_count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def _summary(opts, cfg, strategy, source, model, counts, global_batch, steps, precision) -> str:
    devices = ", ".join(d.name for d in tf.config.list_logical_devices() if d.device_type != "CPU")
    lines = [
        f"kfcn {__version__} train: stage {opts.stage}",
        f"  data        {opts.data_dir}: train {counts['train']} images, val {counts['val']} images",
        f"  init from   {source}",
        f"  parameters  {_param_count(model.trainable_weights):,} trainable, "
        f"{_param_count(model.non_trainable_weights):,} frozen",
        f"  strategy    {type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s) "
        f"on {devices or 'CPU'}",
        f"  batch       {cfg.train.batch_size} per replica x {strategy.num_replicas_in_sync} = "
        f"{global_batch} global; {steps} steps/epoch x {cfg.train.epochs} epochs",
        f"  precision   {precision}{', XLA' if opts.jit else ''}",
        f"  output      {Path(opts.run_dir) / opts.stage}",
        "  tensorboard "
        + ("logs/" if tensorboard_available() else "off (pip install 'kfcn[tensorboard]')"),
    ]
    return "\n".join(lines)


def tensorboard_available() -> bool:
    """TensorBoard logs need the `tensorboard` package (`pip install kfcn[tensorboard]`)."""
    return importlib.util.find_spec("tensorboard") is not None


def _set_precision(mixed: bool) -> str:
    if not mixed:
        keras.mixed_precision.set_global_policy("float32")
        return "float32"
    policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def _split_count(data_dir: Path, split: str) -> int:
    try:
        return pipeline.count_records(data_dir, split)
    except KfcnError:
        return 0


def train_stage(cfg: Config, opts: TrainOptions, echo=print) -> Path:
    """Train one stage and return the path of its final model (already there: returned as is).

    Raises:
        KfcnError: bad options, missing data or previous stage, or a non-finite loss.
    """
    if opts.stage not in STAGES:
        raise ConfigError(f"--stage {opts.stage!r}: expected one of {', '.join(STAGES)}")
    stage_dir = Path(opts.run_dir) / opts.stage
    final = stage_dir / FINAL_MODEL
    if final.is_file() and not opts.overwrite:
        echo(f"stage {opts.stage} is already finished: {final} (use --overwrite to train it again)")
        return final
    records.list_shards(opts.data_dir, "train")  # fail early, naming the data dir
    names, palette = dataset_classes(opts.data_dir, cfg)
    source = init_source(opts, cfg)
    if opts.overwrite and stage_dir.exists():
        shutil.rmtree(stage_dir)

    # Release the graphs and variables of earlier stages run in this process (~2 GB each).
    keras.backend.clear_session()
    gc.collect()
    precision = _set_precision(opts.mixed_precision)
    keras.utils.set_random_seed(cfg.train.seed)
    strategy = make_strategy(opts.strategy)
    chief = is_chief(strategy)
    global_batch = cfg.train.batch_size * strategy.num_replicas_in_sync
    counts = {s: _split_count(opts.data_dir, s) for s in ("train", "val")}
    steps = cfg.train.steps_per_epoch or counts["train"] // global_batch
    if steps < 1:
        raise ConfigError(
            f"the train split has {counts['train']} images, fewer than one global batch of "
            f"{global_batch}; lower train.batch_size or set train.steps_per_epoch"
        )

    with strategy.scope():
        model, _ = build_stage_model(opts, cfg, source)
        model.compile(
            optimizer=keras.optimizers.Adam(_learning_rate(cfg, steps * cfg.train.epochs)),
            loss=MaskedSparseCrossEntropy(),
            metrics=[
                PixelAccuracy(cfg.model.num_classes, name="pixel_accuracy"),
                MeanIoU(cfg.model.num_classes, name="mean_iou"),
            ],
            jit_compile=opts.jit,
        )
        size = cfg.data.crop_size
        build_for_fit(model, (size, size, 3), (size, size))
    echo(_summary(opts, cfg, strategy, source, model, counts, global_batch, steps, precision))

    out_dir = stage_dir if chief else stage_dir / f".worker-{strategy.cluster_resolver.task_id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    if chief:
        save_config(cfg, stage_dir / "config.yaml")
    info = {**make_info(opts.stage, cfg, names, palette), "init": str(source)}

    def save(model_, path: Path, epoch: int) -> None:
        if chief:
            save_model(model_, path, {**info, "epoch": epoch})

    callbacks = _callbacks(cfg, opts, out_dir, chief, counts, save, echo)
    train_ds = strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.train_dataset(
            opts.data_dir,
            "train",
            cfg.data,
            cfg.train.batch_size,
            cfg.train.seed,
            input_context=ctx,
        )
    )
    model.fit(
        train_ds,
        epochs=cfg.train.epochs,
        steps_per_epoch=steps,
        shuffle=False,  # the pipeline shuffles
        callbacks=callbacks,
        verbose=1 if chief else 0,
    )
    nan_guard = next(c for c in callbacks if isinstance(c, StopOnNonFinite))
    if nan_guard.bad_at is not None:
        state = read_resume_state(out_dir / "checkpoint")
        kept = f"epoch {state['epoch']}" if state else "none yet"
        raise KfcnError(
            f"the loss became NaN/Inf at epoch {nan_guard.bad_at[0]}, step {nan_guard.bad_at[1]}; "
            f"training stopped; last good checkpoint: {kept} in {out_dir / 'checkpoint'}. "
            "Lower train.learning_rate or check the data."
        )
    save(model, final, cfg.train.epochs)
    # final.keras supersedes the resume state (~3x the model's size with Adam's moments).
    shutil.rmtree(out_dir / "checkpoint" if chief else out_dir, ignore_errors=True)
    if chief:
        echo(f"stage {opts.stage} finished: {final}")
    return final


def _callbacks(cfg, opts, out_dir: Path, chief: bool, counts: dict, save, echo) -> list:
    state = read_resume_state(out_dir / "checkpoint") or {}
    callbacks: list[keras.callbacks.Callback] = [StopOnNonFinite()]
    validation = None
    if cfg.train.validate and counts["val"] > 0:
        validation = Validation(
            lambda m: score_split(
                m, opts.data_dir, "val", cfg.model.num_classes, max_images=cfg.train.val_images
            ),
            best=state.get("best_val_mean_iou", -1.0),
        )
        callbacks.append(validation)

    def extra_state() -> dict:
        return {"best_val_mean_iou": validation.best} if validation else {}

    callbacks.append(
        ResumeCheckpoint(out_dir / "checkpoint", extra_state, echo=echo if chief else None)
    )
    if validation is not None:
        callbacks.append(SaveBest(validation, lambda m, e: save(m, out_dir / BEST_MODEL, e)))
    callbacks.append(HistoryCSV(out_dir / "history.csv", write=chief))
    if chief and tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(str(out_dir / "logs"), write_graph=False))
        if counts["val"] > 0:  # per-class val IoU, and val images | truth | prediction
            callbacks.append(SegmentationSummaries(out_dir / "logs", opts.data_dir, cfg))
    return callbacks
