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
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kfcn import __version__, checkpoint, resume
from kfcn.callbacks import EpochCommit, KeyedDropoutSeeds, StopOnNonFinite, Validation
from kfcn.choices import STRATEGIES
from kfcn.config import STAGES, Config, check_class_weight_count, save_config
from kfcn.data import class_stats, pipeline, records
from kfcn.devices import cpu_has_bfloat16, precision_problem
from kfcn.errors import ConfigError, KfcnError
from kfcn.evaluate import score_split
from kfcn.fileio import atomic_write
from kfcn.keras_compat import build_for_fit, patch_multiworker_reduce
from kfcn.losses import make_loss
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
    reinit_head: bool = False


def make_strategy(name: str, run_dir: Path | None = None) -> tf.distribute.Strategy:
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
            tf_config = json.loads(os.environ["TF_CONFIG"])
            index = tf_config.get("task", {}).get("index", "?")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ConfigError(f"TF_CONFIG is not valid JSON ({exc})") from None
        return _meet_workers(index, tf_config.get("cluster", {}), run_dir)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


CHIEF_ERROR = Path(".kfcn-chief-error")  # in the run folder: the chief's last start-up error


def read_chief_error(run_dir: Path | None) -> str | None:
    """The start-up error the chief (worker 0) left in the shared run folder, if any."""
    try:
        return (Path(run_dir) / CHIEF_ERROR).read_text().strip() if run_dir else None
    except OSError:
        return None


def _task_index() -> int | None:
    """This process's worker index in TF_CONFIG, or None outside a multi-worker cluster."""
    try:
        return int(json.loads(os.environ.get("TF_CONFIG") or "{}")["task"]["index"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def worker_timeout() -> float:
    """Seconds the workers of a multi-worker run wait for each other to start
    (`KFCN_WORKER_TIMEOUT`, default 120)."""
    try:
        return float(os.environ.get("KFCN_WORKER_TIMEOUT", "120"))
    except ValueError:
        raise ConfigError(
            f"KFCN_WORKER_TIMEOUT = {os.environ['KFCN_WORKER_TIMEOUT']!r}: expected seconds"
        ) from None


def _meet_workers(index, cluster: dict, run_dir: Path | None) -> tf.distribute.Strategy:
    """The multi-worker strategy. A worker other than the chief first waits, at most
    `worker_timeout` seconds, for the chief's port to open: a chief that failed before joining
    (a bad data dir, a bad config) never opens it, and TensorFlow's own start-up would wait far
    longer. Then one line, with the chief's error where the run folder is shared.

    Raises:
        KfcnError: the chief did not start in time.
    """
    timeout = worker_timeout()
    chief = (cluster.get("chief") or cluster.get("worker") or [None])[0]
    if index not in (0, "?") and chief and not _port_opens(chief, timeout):
        error = read_chief_error(run_dir)
        raise KfcnError(
            f"worker {index}: the chief (worker 0, {chief}) did not start within {timeout:g} s"
            + (f"; the chief's error: {error}" if error else "")
            + " (KFCN_WORKER_TIMEOUT sets the wait)"
        )
    return tf.distribute.MultiWorkerMirroredStrategy()


def _port_opens(address: str, timeout: float) -> bool:
    """Whether `host:port` accepts a TCP connection within `timeout` seconds."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.25)


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


def resolve_class_weights(cfg: Config, data_dir: Path, names: list[str], echo=print):
    """The class weights of `train.class_weights` (None for 'none'), printed when in use.

    'median_frequency' comes from the train split's class pixel counts (`kfcn.data.class_stats`:
    meta.json, else counted once and cached).

    Raises:
        ConfigError: a weight list whose length is not the data's class count.
    """
    setting = cfg.train.class_weights
    check_class_weight_count(setting, len(names))
    if setting == "none":
        return None
    if setting == "median_frequency":
        counts = class_stats.class_pixel_counts(data_dir, "train", len(names), progress=True)
        weights = class_stats.median_frequency_weights(counts).tolist()
    else:
        weights = [float(w) for w in setting]
    shown = ", ".join(f"{name} {w:.3g}" for name, w in zip(names, weights, strict=True))
    echo(f"class weights ({setting if isinstance(setting, str) else 'list'}): {shown}")
    return weights


def _learning_rate(cfg: Config, total_steps: int):
    lr = cfg.train.learning_rate
    if cfg.train.lr_schedule == "poly":
        return keras.optimizers.schedules.PolynomialDecay(lr, total_steps, 0.0, power=0.9)
    if cfg.train.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, total_steps)
    return lr


def build_stage_model(
    opts: TrainOptions, cfg: Config, source, class_names: list[str] | None = None
) -> tuple[keras.Model, list[str]]:
    """Build the stage's model, take the previous stage's weights, apply the freeze patterns.

    Raises:
        KfcnError: the model it starts from predicts other classes than `class_names` (in
            count or order) and `opts.reinit_head` is off.

    A stage that starts from a model file keeps that model's topology (`stage_topology`), and
    `cfg.model.topology` is set to it so the stage's config and model files say which it is.
    """
    from_backbone = opts.stage == "fcn32" and not isinstance(source, Path)
    layout = None
    if not from_backbone:
        where, (source, info) = str(source), load_model(source)
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
        if class_names is not None and not opts.reinit_head:
            check_same_classes(where, info.get("class_names"), class_names)
        transfer_weights(source, model, where, reinit_head=opts.reinit_head)
    frozen = apply_freeze(model, cfg.model.freeze[opts.stage])
    return model, frozen


def check_same_classes(source: Path, model_classes, data_classes: list[str]) -> None:
    """Refuse a model whose class list differs from the data's (in count or order).

    Raises:
        KfcnError: naming both lists and --reinit-head.
    """
    if model_classes is None or [str(c) for c in model_classes] == list(data_classes):
        return
    raise KfcnError(
        f"{source} predicts {len(model_classes)} classes {list(model_classes)}, but the data has "
        f"{len(data_classes)} classes {list(data_classes)} (they must match in count and order); "
        "pass --reinit-head to load every layer but the score layers, which then start fresh "
        "and learn the data's classes"
    )


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
    policy = mixed_policy(bool(tf.config.list_physical_devices("GPU")), cpu_has_bfloat16())
    keras.mixed_precision.set_global_policy(policy)
    return policy


def mixed_policy(gpu: bool, cpu_bfloat16: bool) -> str:
    """The Keras policy of `--mixed-precision`: float16 on GPUs (any GPU computes it; bfloat16
    would need compute capability 8.0), bfloat16 on a CPU that has bfloat16 instructions.

    Raises:
        ConfigError: no GPU, and a CPU without bfloat16 instructions (it would emulate
            bfloat16, slower than float32).
    """
    if gpu:
        return "mixed_float16"
    problem = precision_problem("bfloat16", [], cpu_bfloat16)
    if problem:
        raise ConfigError(
            f"--mixed-precision (mixed_bfloat16 without a GPU) {problem}: train without "
            "--mixed-precision"
        )
    return "mixed_bfloat16"


def _split_count(data_dir: Path, split: str) -> int:
    try:
        return pipeline.count_records(data_dir, split)
    except KfcnError:
        return 0


def train_stage(cfg: Config, opts: TrainOptions, echo=print) -> Path:
    """Train one stage and return the path of its final model (already there: returned as is).

    Raises:
        KfcnError: bad options, missing data or previous stage, unreadable resume state, a
            resume under changed settings, or a non-finite loss.
    """
    if opts.stage not in STAGES:
        raise ConfigError(f"--stage {opts.stage!r}: expected one of {', '.join(STAGES)}")
    stage_dir = Path(opts.run_dir) / opts.stage
    final = stage_dir / FINAL_MODEL
    if final.is_file() and not opts.overwrite:
        echo(f"stage {opts.stage} is already finished: {final} (use --overwrite to train it again)")
        return final
    task_index = _task_index()
    try:
        records.list_shards(opts.data_dir, "train")  # fail early, naming the data dir
        names, palette = dataset_classes(opts.data_dir, cfg)
        class_weights = resolve_class_weights(cfg, opts.data_dir, names, echo)
        source = init_source(opts, cfg)
    except KfcnError as exc:
        if task_index == 0:  # tell the other workers, which wait for this one
            atomic_write(Path(opts.run_dir) / CHIEF_ERROR, f"{exc}\n")
        raise
    precision = _start_process(cfg, opts)
    strategy = make_strategy(opts.strategy, Path(opts.run_dir))
    if task_index == 0:
        (Path(opts.run_dir) / CHIEF_ERROR).unlink(missing_ok=True)
    chief = is_chief(strategy)
    state = _resume_state(strategy, chief, stage_dir, opts.overwrite)
    counts = {s: _split_count(opts.data_dir, s) for s in ("train", "val")}
    global_batch = cfg.train.batch_size * strategy.num_replicas_in_sync
    steps = _steps_per_epoch(cfg, counts["train"], global_batch)
    settings = resume.run_settings(
        cfg,
        mixed_precision=opts.mixed_precision,
        jit=opts.jit,
        init=resume.init_fingerprint(source)
        + (" (head reinitialised)" if opts.reinit_head else ""),
        data=resume.data_fingerprint(opts.data_dir),
        replicas=strategy.num_replicas_in_sync,
    )
    if state is not None:
        resume.check_resume(state, settings, stage_dir)

    model = _compiled_model(strategy, opts, cfg, source, steps, names, class_weights)
    echo(_summary(opts, cfg, strategy, source, model, counts, global_batch, steps, precision))
    first_epoch = _restore(model, state, stage_dir, steps, echo if chief else None)
    if chief:
        stage_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, stage_dir / CONFIG_FILE)
    info = {**make_info(opts.stage, cfg, names, palette), "init": str(source)}

    def save(model_, path: Path, epoch: int) -> None:
        save_model(model_, path, {**info, "epoch": epoch})

    callbacks = _callbacks(
        cfg, opts, stage_dir, chief, counts, state, save, (names, palette), settings
    )
    _fit(model, strategy, cfg, opts, first_epoch, steps, callbacks, chief)
    _raise_on_nonfinite(callbacks, stage_dir, chief)
    if chief:
        save(model, final, cfg.train.epochs)
        # final.keras supersedes the resume state (~3x the model's size with Adam's moments);
        # best.keras is a hard link, so it survives.
        shutil.rmtree(checkpoint.checkpoint_dir(stage_dir), ignore_errors=True)
        echo(f"stage {opts.stage} finished: {final}")
    return final


def _start_process(cfg: Config, opts: TrainOptions) -> str:
    """Release earlier stages' graphs, set precision, seeds and determinism; the precision."""
    # Release the graphs and variables of earlier stages run in this process (~2 GB each).
    keras.backend.clear_session()
    gc.collect()
    precision = _set_precision(opts.mixed_precision)
    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    return precision


def _resume_state(strategy, chief: bool, stage_dir: Path, overwrite: bool) -> dict | None:
    """The committed state every worker resumes from (None: from the start)."""
    state = None
    if chief:  # only the chief deletes or writes shared outputs
        if overwrite and stage_dir.exists():
            shutil.rmtree(stage_dir)
        state = checkpoint.reconcile(stage_dir)
    return agree_on_resume_state(strategy, chief, stage_dir, state)


def _steps_per_epoch(cfg: Config, train_count: int, global_batch: int) -> int:
    steps = cfg.train.steps_per_epoch or train_count // global_batch
    if steps < 1:
        raise ConfigError(
            f"the train split has {train_count} images, fewer than one global batch of "
            f"{global_batch}; lower train.batch_size or set train.steps_per_epoch"
        )
    return steps


def _compiled_model(
    strategy, opts: TrainOptions, cfg: Config, source, steps: int, names, class_weights
):
    """The stage's model, compiled, its optimizer and metric variables built, in the scope."""
    with strategy.scope():
        model, _ = build_stage_model(opts, cfg, source, names)
        model.compile(
            optimizer=keras.optimizers.Adam(_learning_rate(cfg, steps * cfg.train.epochs)),
            loss=make_loss(cfg.train, cfg.model.num_classes, class_weights),
            metrics=[
                PixelAccuracy(cfg.model.num_classes, name="pixel_accuracy"),
                MeanIoU(cfg.model.num_classes, name="mean_iou"),
            ],
            jit_compile=opts.jit,
        )
        size = cfg.data.crop_size
        build_for_fit(model, (size, size, 3), (size, size))
    return model


def _restore(model: keras.Model, state: dict | None, stage_dir: Path, steps: int, echo) -> int:
    """Load the committed epoch's weights and optimizer state; the epoch to continue from."""
    if state is None:
        return 0
    weights = checkpoint.checkpoint_dir(stage_dir) / state["weights"]
    model.load_weights(weights)
    resume.check_iterations(state, checkpoint.optimizer_steps(model), steps, weights)
    if echo is not None:
        echo(f"resuming from epoch {state['epoch']} ({weights})")
    return int(state["epoch"])


def _fit(model, strategy, cfg: Config, opts: TrainOptions, first_epoch, steps, callbacks, chief):
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
            num_classes=cfg.model.num_classes,
        )
    )
    try:
        model.fit(
            train_ds,
            epochs=cfg.train.epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=steps,
            shuffle=False,  # the pipeline shuffles
            callbacks=callbacks,
            verbose=1 if chief else 0,
        )
    except tf.errors.InvalidArgumentError as exc:
        bad_label = pipeline.bad_label_error(exc)
        if bad_label is None:
            raise
        raise bad_label from None


def _raise_on_nonfinite(callbacks: list, stage_dir: Path, chief: bool) -> None:
    nan_guard = next(c for c in callbacks if isinstance(c, StopOnNonFinite))
    if nan_guard.bad_at is None:
        return
    # Only the epoch number is named: no need to hash the checkpoint files again.
    state = checkpoint.read_state(stage_dir, verify=False) if chief else None
    kept = f"epoch {state['epoch']}" if state else "none yet"
    raise KfcnError(
        f"the loss became NaN/Inf at epoch {nan_guard.bad_at[0]}, step {nan_guard.bad_at[1]}; "
        f"training stopped; last good checkpoint: {kept} in "
        f"{checkpoint.checkpoint_dir(stage_dir)}. Lower train.learning_rate or check the data."
    )


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


def _callbacks(
    cfg, opts, stage_dir: Path, chief: bool, counts: dict, state, save, classes, settings
) -> list:
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
    callbacks.append(EpochCommit(stage_dir, validation, save, settings))
    if tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(str(stage_dir / LOGS_DIR), write_graph=False))
    if summaries is not None:
        callbacks.append(summaries)
    return callbacks
