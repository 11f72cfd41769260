"""`kfcn train`: one FCN stage on streamed TFRecords, resumable, on one device or many machines.

The output layout of a stage (`RUN_DIR/STAGE/`) is described in `kfcn.runs`; its resume state in
`kfcn.checkpoint`. A run killed at any moment and started again with the same command continues
from the last committed epoch and ends with the weights and history of an uninterrupted run:
epoch k's data and dropout are keyed by (train.seed, k), and ops are deterministic
(`train.deterministic`).
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

from kfcn import __version__, checkpoint
from kfcn.callbacks import EpochCommit, KeyedDropoutSeeds, StopOnNonFinite, Validation
from kfcn.config import STAGES, Config, save_config
from kfcn.data import pipeline, records
from kfcn.errors import ConfigError, KfcnError
from kfcn.evaluate import score_split
from kfcn.keras_compat import build_for_fit, patch_multiworker_reduce
from kfcn.losses import MaskedSparseCrossEntropy
from kfcn.metrics import MeanIoU, PixelAccuracy
from kfcn.models import (
    apply_freeze,
    build_fcn,
    load_model,
    make_info,
    save_model,
    stage_topology,
    transfer_weights,
)
from kfcn.palette import VOC_CLASSES, voc_colormap
from kfcn.runs import CONFIG_FILE, FINAL_MODEL, LOGS_DIR
from kfcn.summaries import SegmentationSummaries

STRATEGIES = ("auto", "default", "mirrored", "multiworker")


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
    """Build the stage's model, take the previous stage's weights, apply the freeze patterns.

    A stage that starts from a model file keeps that model's topology (`stage_topology`), and
    `cfg.model.topology` is set to it so the stage's config and model files say which it is.
    """
    from_backbone = opts.stage == "fcn32" and not isinstance(source, Path)
    layout = None
    if not from_backbone:
        where, (source, _) = str(source), load_model(source)
        topology, layout = stage_topology(opts.stage, cfg.model.topology, source, where)
        cfg.model.topology = topology
    model = build_fcn(
        opts.stage,
        num_classes=cfg.model.num_classes,
        backbone=cfg.model.backbone,
        backbone_weights=source if from_backbone else "none",
        weight_decay=cfg.train.weight_decay,
        dropout=cfg.model.dropout,
        train_upsampling=cfg.model.train_upsampling,
        widths=cfg.model.widths,
        topology=cfg.model.topology,
        layout=layout,
    )
    if not from_backbone:
        transfer_weights(source, model, where)
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
        KfcnError: bad options, missing data or previous stage, unreadable resume state, or a
            non-finite loss.
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

    # Release the graphs and variables of earlier stages run in this process (~2 GB each).
    keras.backend.clear_session()
    gc.collect()
    precision = _set_precision(opts.mixed_precision)
    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(opts.strategy)
    chief = is_chief(strategy)
    state = None
    if chief:  # only the chief deletes or writes shared outputs
        if opts.overwrite and stage_dir.exists():
            shutil.rmtree(stage_dir)
        state = checkpoint.reconcile(stage_dir)
    state = agree_on_resume_state(strategy, chief, stage_dir, state)
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
    first_epoch = 0
    if state is not None:
        weights = checkpoint.checkpoint_dir(stage_dir) / state["weights"]
        model.load_weights(weights)
        first_epoch = state["epoch"]
        if chief:
            echo(f"resuming from epoch {first_epoch} ({weights})")

    if chief:
        stage_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, stage_dir / CONFIG_FILE)
    info = {**make_info(opts.stage, cfg, names, palette), "init": str(source)}

    def save(model_, path: Path, epoch: int) -> None:
        save_model(model_, path, {**info, "epoch": epoch})

    callbacks = _callbacks(cfg, opts, stage_dir, chief, counts, state, save, (names, palette))
    train_ds = strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.train_dataset(
            opts.data_dir,
            "train",
            cfg.data,
            cfg.train.batch_size,
            cfg.train.seed,
            input_context=ctx,
            first_epoch=first_epoch,
            steps_per_epoch=steps,
        )
    )
    model.fit(
        train_ds,
        epochs=cfg.train.epochs,
        initial_epoch=first_epoch,
        steps_per_epoch=steps,
        shuffle=False,  # the pipeline shuffles
        callbacks=callbacks,
        verbose=1 if chief else 0,
    )
    nan_guard = next(c for c in callbacks if isinstance(c, StopOnNonFinite))
    if nan_guard.bad_at is not None:
        state = checkpoint.read_state(stage_dir) if chief else None
        kept = f"epoch {state['epoch']}" if state else "none yet"
        raise KfcnError(
            f"the loss became NaN/Inf at epoch {nan_guard.bad_at[0]}, step {nan_guard.bad_at[1]}; "
            f"training stopped; last good checkpoint: {kept} in "
            f"{checkpoint.checkpoint_dir(stage_dir)}. Lower train.learning_rate or check the data."
        )
    if chief:
        save(model, final, cfg.train.epochs)
        # final.keras supersedes the resume state (~3x the model's size with Adam's moments);
        # best.keras is a hard link, so it survives.
        shutil.rmtree(checkpoint.checkpoint_dir(stage_dir), ignore_errors=True)
        echo(f"stage {opts.stage} finished: {final}")
    return final


def agree_on_resume_state(
    strategy, chief: bool, stage_dir: Path, state: dict | None
) -> dict | None:
    """Make every worker of a multi-worker run resume from the chief's committed epoch.

    The chief's epoch is broadcast; the other workers then read the chief's checkpoint from the
    shared run directory, and every worker learns whether all of them could. Also a barrier: no
    worker reads the stage folder before the chief has cleaned it. Outside multi-worker runs,
    `state` is returned as is.

    Raises:
        KfcnError: on every worker, when a worker cannot read the chief's checkpoint.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return state
    epoch = _sum_over_workers(strategy, state["epoch"] if chief and state else 0, chief)
    problem = None
    if not chief:
        try:
            state = checkpoint.read_state(stage_dir) if epoch else None
        except KfcnError as exc:
            problem = str(exc)
        found = state["epoch"] if state else 0
        if problem is None and found != epoch:
            problem = (
                f"the chief resumes from epoch {epoch}, but this worker finds epoch {found} in "
                f"{checkpoint.checkpoint_dir(stage_dir)}; every worker needs the same --run-dir "
                "on a shared file system"
            )
    failures = _sum_over_workers(strategy, int(problem is not None), True)
    if problem is not None:
        raise KfcnError(f"worker {strategy.cluster_resolver.task_id}: {problem}")
    if failures:
        raise KfcnError(
            f"{failures} worker(s) could not read the chief's checkpoint in "
            f"{checkpoint.checkpoint_dir(stage_dir)}; see their messages"
        )
    return state


def _sum_over_workers(strategy, value: int, contribute: bool) -> int:
    """All-reduce `value` from the first replica of each contributing worker (a collective)."""

    @tf.function
    def step():
        context = tf.distribute.get_replica_context()
        first_local = tf.equal(context.replica_id_in_sync_group % _local_replicas(strategy), 0)
        mine = tf.where(first_local, tf.constant(value if contribute else 0, tf.int64), 0)
        return context.all_reduce("SUM", mine)

    result = strategy.experimental_local_results(strategy.run(step))[0]
    return int(result.numpy())


def _local_replicas(strategy) -> int:
    return len(strategy.extended.worker_devices)


def _callbacks(cfg, opts, stage_dir: Path, chief: bool, counts: dict, state, save, classes) -> list:
    """Nan guard, keyed dropout, then on the chief: validation, the epoch commit, TensorBoard."""
    callbacks: list[keras.callbacks.Callback] = [
        StopOnNonFinite(),
        KeyedDropoutSeeds(cfg.train.seed),
    ]
    if not chief:  # workers only train; the chief validates once and writes everything
        return callbacks
    summaries = None
    if tensorboard_available() and cfg.train.validate and counts["val"] > 0:
        # Per-class val IoU and val images | truth | prediction, from validation's own pass.
        summaries = SegmentationSummaries(stage_dir / LOGS_DIR, opts.data_dir, cfg, *classes)
    validation = None
    if cfg.train.validate and counts["val"] > 0:
        best = (state or {}).get("best") or {}
        score = summaries.score if summaries else None
        validation = Validation(
            score
            or (
                lambda m: score_split(
                    m, opts.data_dir, "val", cfg.model.num_classes, max_images=cfg.train.val_images
                )
            ),
            best=best.get("val_mean_iou", -1.0),
        )
        callbacks.append(validation)
    callbacks.append(EpochCommit(stage_dir, validation, save))
    if tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(str(stage_dir / LOGS_DIR), write_graph=False))
    if summaries is not None:
        callbacks.append(summaries)
    return callbacks
