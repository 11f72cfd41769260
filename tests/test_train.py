"""`kfcn train` on tiny synthetic shards: stages, resume after SIGKILL, multi-worker, errors."""

import csv
import filecmp
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from kfcn.callbacks import StopOnNonFinite
from kfcn.checkpoint import commit_epoch, reconcile
from kfcn.cli import main
from kfcn.config import load_config
from kfcn.errors import KfcnError
from kfcn.models import load_model
from kfcn.train import TrainOptions, train_stage

from .shards import write_shards

# The small network (model.widths: small): the same FCN at a fraction of VGG16's widths, so
# the tests of training, resume and multi-worker runs pay seconds, not minutes, per stage.
TINY = [
    "model.backbone_weights=none",
    "model.widths=small",
    "data.crop_size=64",
    "train.batch_size=2",
    "train.epochs=1",
    "train.steps_per_epoch=2",
    "train.val_images=2",
    # A frozen layer in every stage: freezing goes through each stage's build and checkpoints.
    "model.freeze.fcn32=[fc6]",
    "model.freeze.fcn16=[fc6]",
    "model.freeze.fcn8=[fc6]",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_shards(root, "train", 8, size=(64, 80), seed=1, per_shard=4)
    write_shards(root, "val", 2, size=(48, 40), seed=2, per_shard=2)
    return root


def _history(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _kernel(model, name):
    return model.get_layer(name).get_weights()[0]


@pytest.mark.slow
def test_three_stages_chain(data_dir, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, TINY)
    for stage in ("fcn32", "fcn16", "fcn8"):
        final = train_stage(cfg, TrainOptions(stage, data_dir, run), echo=lambda *_: None)
        assert final == run / stage / "final.keras" and final.is_file()
        rows = _history(run / stage / "history.csv")
        assert [r["epoch"] for r in rows] == ["1"]
        for key in ("loss", "pixel_accuracy", "mean_iou", "val_mean_iou", "val_pixel_accuracy"):
            assert np.isfinite(float(rows[0][key])), key
        assert (run / stage / "config.yaml").is_file()
        assert (run / stage / "best.keras").is_file()
    # With a zero learning rate, a stage's final weights are exactly what it started from.
    frozen_cfg = load_config(None, TINY + ["train.learning_rate=0"])
    opts = TrainOptions("fcn16", data_dir, run, overwrite=True)
    train_stage(frozen_cfg, opts, echo=lambda *_: None)
    fcn32, _ = load_model(run / "fcn32" / "final.keras")
    fcn16, info = load_model(run / "fcn16" / "final.keras")
    for name in ("block1_conv1", "block5_conv3", "fc6", "fc7", "score_fr"):
        np.testing.assert_array_equal(_kernel(fcn16, name), _kernel(fcn32, name))
    assert info["variant"] == "fcn16"
    assert info["config"]["train"]["learning_rate"] == 0.0
    # Every model file a run writes loads as the README shows, in a fresh process.
    _assert_loads_with_plain_keras(run / "fcn8" / "final.keras", run / "fcn8" / "best.keras")


README_LOAD = """
import kfcn
import keras

for path in {paths!r}:
    model = keras.models.load_model(path, safe_mode=True)
    assert type(model.loss).__name__ == "MaskedSparseCrossEntropy", model.loss
    keras.models.load_model(path, safe_mode=True, compile=False)
print("loaded")
"""


def _assert_loads_with_plain_keras(*paths: Path) -> None:
    code = README_LOAD.format(paths=[str(p) for p in paths])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and "loaded" in result.stdout, result.stderr[-3000:]


def test_finished_stage_is_not_trained_again(data_dir, tmp_path):
    cfg = load_config(None, TINY + ["train.validate=false"])
    messages = []
    train_stage(cfg, TrainOptions("fcn32", data_dir, tmp_path), echo=lambda *_: None)
    before = (tmp_path / "fcn32" / "final.keras").stat().st_mtime_ns
    train_stage(cfg, TrainOptions("fcn32", data_dir, tmp_path), echo=messages.append)
    assert "already finished" in messages[-1] and "--overwrite" in messages[-1]
    assert (tmp_path / "fcn32" / "final.keras").stat().st_mtime_ns == before
    assert not (tmp_path / "fcn32" / "best.keras").exists()


def test_loss_goes_down_on_a_learnable_task(tmp_path):
    data = tmp_path / "data"
    write_shards(data, "train", 8, size=(64, 64), seed=3, per_shard=8)
    cfg = load_config(
        None,
        TINY
        + [
            "train.epochs=3",  # 30 steps, with a checkpoint commit after every 10
            "train.steps_per_epoch=10",
            "train.validate=false",
            "train.batch_size=4",
            "model.dropout=0",
            "data.augment=resize_pad",
            "data.flip=false",
        ],
    )
    train_stage(cfg, TrainOptions("fcn32", data, tmp_path / "run"), echo=lambda *_: None)
    losses = [float(r["loss"]) for r in _history(tmp_path / "run" / "fcn32" / "history.csv")]
    assert len(losses) == 3
    assert losses[-1] < 0.8 * losses[0], losses


def _kfcn(*args, env=None, **kwargs):
    cmd = [sys.executable, "-m", "kfcn.cli", *map(str, args)]
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.Popen(
        cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )


REPO = Path(__file__).resolve().parents[1]


def _driven_cmd(moment: str, epoch: int, *args) -> list[str]:
    return [sys.executable, "-m", "tests.kill_driver", moment, str(epoch), "--", *map(str, args)]


DRIVER_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _driven(moment: str, epoch: int, *args) -> subprocess.CompletedProcess:
    """`kfcn ARGS` through tests/kill_driver.py, killing itself at MOMENT of EPOCH."""
    cmd = _driven_cmd(moment, epoch, *args)
    return subprocess.run(
        cmd, cwd=REPO, env=DRIVER_ENV, capture_output=True, text=True, timeout=600
    )


def _assert_consistent(stage: Path) -> int:
    """Checkpoint, state.json, history.csv and best.keras describe the same epoch; returns it."""
    state = json.loads((stage / "checkpoint" / "state.json").read_text())
    epoch = state["epoch"]
    assert (stage / "checkpoint" / state["weights"]).is_file()
    assert [int(r["epoch"]) for r in _history(stage / "history.csv")] == list(range(1, epoch + 1))
    best = stage / "checkpoint" / state["best"]["file"]
    assert state["best"]["epoch"] == epoch  # every epoch improves under the driver
    assert (stage / "best.keras").samefile(best) or filecmp.cmp(stage / "best.keras", best, False)
    return epoch


def _final_weights(path: Path) -> list[np.ndarray]:
    model, _ = load_model(path)
    return model.get_weights()


@pytest.mark.slow
def test_killed_at_any_moment_resumes_exactly(data_dir, tmp_path):
    """Killed mid-epoch, during validation, while saving the checkpoint and while saving the best
    model, a run ends with the history rows and final weights of an uninterrupted one."""
    sets = [a for s in TINY + ["train.epochs=3", "train.val_images=2"] for a in ("--set", s)]

    def args(run):
        return ["train", "--stage", "fcn32", "--data-dir", data_dir, "--run-dir", run, *sets]

    # The uninterrupted reference runs beside the killed runs (its own run folder).
    reference = subprocess.Popen(
        _driven_cmd("none", 0, *args(tmp_path / "reference")),
        cwd=REPO,
        env=DRIVER_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run, stage = tmp_path / "run", tmp_path / "run" / "fcn32"
    for moment in ("mid-epoch", "validation", "checkpoint", "best"):
        killed = _driven(moment, 2, *args(run))
        assert killed.returncode == -signal.SIGKILL, (moment, killed.stdout + killed.stderr)
        assert _assert_consistent(stage) == 1, moment
        assert not (stage / "final.keras").exists()
    resumed = _driven("none", 0, *args(run))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from epoch 1" in resumed.stdout
    reference_out = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, reference_out

    rows = _history(stage / "history.csv")
    expected = _history(tmp_path / "reference" / "fcn32" / "history.csv")
    assert [r.keys() for r in rows] == [r.keys() for r in expected]
    for row, want in zip(rows, expected, strict=True):
        for key in want:
            assert float(row[key]) == pytest.approx(float(want[key]), rel=1e-4), key
    for got, want in zip(
        _final_weights(stage / "final.keras"),
        _final_weights(tmp_path / "reference" / "fcn32" / "final.keras"),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert not (stage / "checkpoint").exists() and (stage / "best.keras").is_file()


def _assert_same_run(got_stage: Path, want_stage: Path, rel_l2=5e-4, share=1e-3) -> None:
    """The same history (loss to 1e-5 relative) and the same final weights up to summation
    order: relative L2 distance <= `rel_l2`, at most `share` of the weights off by > 1e-5."""
    rows, want_rows = _history(got_stage / "history.csv"), _history(want_stage / "history.csv")
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in want_rows]
    for row, want in zip(rows, want_rows, strict=True):
        assert float(row["loss"]) == pytest.approx(float(want["loss"]), rel=1e-5), (row, want)
    got = np.concatenate([w.ravel() for w in _final_weights(got_stage / "final.keras")])
    want = np.concatenate([w.ravel() for w in _final_weights(want_stage / "final.keras")])
    assert np.linalg.norm(got - want) <= rel_l2 * np.linalg.norm(want)
    assert np.mean(np.abs(got - want) > 1e-5) <= share


@pytest.mark.slow
def test_two_replicas_train_as_one_at_the_global_batch_and_resume_exactly(data_dir, tmp_path):
    """`kfcn train --strategy mirrored` on two logical CPUs at batch 2 per replica is the run of
    one replica at batch 4 (records, augmentation and dropout, dropout on), and killed
    mid-epoch then re-run it ends as uninterrupted."""
    settings = TINY + ["train.epochs=3", "train.validate=false", "model.dropout=0.5"]

    def cmd(run, batch, strategy, moment="none"):
        sets = [a for s in [*settings, f"train.batch_size={batch}"] for a in ("--set", s)]
        args = ["train", "--stage", "fcn32", "--data-dir", data_dir, "--run-dir", run, *sets]
        return _driven_cmd(moment, 2, *args, "--strategy", strategy)

    env = {**DRIVER_ENV, "KFCN_TEST_CPUS": "2"}

    def start(*args):
        return subprocess.Popen(
            cmd(*args),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    one, two = start(tmp_path / "one", 4, "default"), start(tmp_path / "two", 2, "mirrored")
    killed = subprocess.run(
        cmd(tmp_path / "killed", 2, "mirrored", "mid-epoch"),
        cwd=REPO,
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    resumed = start(tmp_path / "killed", 2, "mirrored")
    for proc in (one, two, resumed):
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out
    assert "2 replica(s)" in out and "resuming from epoch 1" in out, out
    _assert_same_run(tmp_path / "two" / "fcn32", tmp_path / "one" / "fcn32")
    _assert_same_run(tmp_path / "killed" / "fcn32", tmp_path / "two" / "fcn32", 1e-6, 0.0)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _two_workers(*args):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(_kfcn(*args, "--strategy", "multiworker", env={"TF_CONFIG": tf_config}))
    return procs


@pytest.mark.slow
def test_two_workers_resume_together_and_overwrite(data_dir, tmp_path):
    """Two workers on 127.0.0.1, validation on: killed both mid-run, restarted, they finish with
    one history row per epoch; only the chief writes; --overwrite with both starts afresh."""
    stage = tmp_path / "fcn32"
    sets = [a for s in TINY + ["train.epochs=2"] for a in ("--set", s)]
    args = ["train", "--stage", "fcn32", "--data-dir", data_dir, "--run-dir", tmp_path, *sets]
    # One replica at the two workers' global batch: the run they must reproduce.
    reference = _kfcn(
        *["train", "--stage", "fcn32", "--data-dir", data_dir, "--run-dir", tmp_path / "one"],
        *[*sets, "--set", "train.batch_size=4", "--set", "train.validate=false"],
    )
    procs = _two_workers(*args)
    state = stage / "checkpoint" / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if state.is_file() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    assert all(p.poll() is None for p in procs), "\n----\n".join(p.stdout.read() for p in procs)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert _assert_consistent(stage) == 1
    # The chief alone writes: no per-worker folders or checkpoints.
    assert sorted(p.name for p in stage.iterdir()) == sorted(
        ["best.keras", "checkpoint", "config.yaml", "history.csv"]
        + (["logs"] if (stage / "logs").exists() else [])
    )

    procs = _two_workers(*args)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(outs)
    assert "resuming from epoch 1" in outs[0] and "2 replica(s)" in outs[0], outs[0]
    rows = _history(stage / "history.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(np.isfinite(float(r["val_mean_iou"])) for r in rows)
    assert (stage / "final.keras").is_file() and not (stage / "checkpoint").exists()
    out = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, out
    _assert_same_run(stage, tmp_path / "one" / "fcn32")

    before = (stage / "final.keras").stat().st_mtime_ns
    one_epoch = [*args, "--set", "train.epochs=1", "--overwrite"]
    procs = _two_workers(*one_epoch)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(outs)
    assert [r["epoch"] for r in _history(stage / "history.csv")] == ["1"]
    assert (stage / "final.keras").stat().st_mtime_ns > before


def test_worker_that_cannot_see_the_chiefs_checkpoint_fails_clearly(tmp_path):
    """A worker whose --run-dir does not hold the chief's checkpoint stops with a clear message."""

    class Strategy(tf.distribute.MultiWorkerMirroredStrategy):
        cluster_resolver = type("Resolver", (), {"task_id": 1})()

        def __init__(self):  # no cluster: the collectives are stubbed below
            pass

    calls = []

    def fake_sum(strategy, value, contribute):
        calls.append((value, contribute))
        return 3 if len(calls) == 1 else 1  # the chief resumes from epoch 3; one worker fails

    import kfcn.train as train

    original = train._sum_over_workers
    train._sum_over_workers = fake_sum
    try:
        strategy = Strategy()
        with pytest.raises(KfcnError, match="worker 1: the chief resumes from epoch 3, but this"):
            train.agree_on_resume_state(strategy, False, tmp_path / "fcn32", None)
        assert calls == [(0, False), (1, True)]
    finally:
        train._sum_over_workers = original


def test_error_no_shards(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        main,
        ["train", "--stage", "fcn32", "--data-dir", tmp_path / "empty", "--run-dir", tmp_path],
    )
    assert result.exit_code == 1
    assert "no 'train' shards" in result.output and "empty" in result.output


def test_error_previous_stage_missing(data_dir, tmp_path):
    args = ["train", "--stage", "fcn8", "--data-dir", data_dir, "--run-dir", tmp_path / "run"]
    result = CliRunner().invoke(main, args + ["--set", "model.backbone_weights=none"])
    assert result.exit_code == 1
    assert "fcn16" in result.output and "kfcn train --stage fcn16" in result.output


def test_error_bad_config_value(data_dir, tmp_path):
    args = ["train", "--stage", "fcn32", "--data-dir", data_dir, "--run-dir", tmp_path]
    result = CliRunner().invoke(main, args + ["--set", "train.batch_size=zero"])
    assert result.exit_code == 1
    assert "train.batch_size = 'zero'" in result.output
    assert not (tmp_path / "fcn32").exists()


def test_nan_guard_stops_and_reports():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.stop_training = False
    guard = StopOnNonFinite()
    guard.set_model(model)
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(0, {"loss": 1.0})
    assert guard.bad_at is None and not model.stop_training
    guard.on_train_batch_end(4, {"loss": float("nan")})
    assert guard.bad_at == (3, 5) and model.stop_training


def test_commits_are_keyed_by_epoch_and_publish_history_and_best(tmp_path):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    saved = []

    def save_best(path):
        saved.append(path.name)
        path.write_bytes(b"model")

    commit_epoch(tmp_path, model, 1, {"loss": 2.0, "val_mean_iou": 0.1}, 0.1, save_best)
    commit_epoch(tmp_path, model, 2, {"loss": 1.5, "val_mean_iou": 0.0}, None, save_best)
    # Epoch 2 replayed after a resume from epoch 1: its row is replaced, not duplicated.
    state = commit_epoch(tmp_path, model, 2, {"loss": 1.4, "val_mean_iou": 0.3}, 0.3, save_best)
    rows = _history(tmp_path / "history.csv")
    assert [(r["epoch"], r["loss"]) for r in rows] == [("1", "2"), ("2", "1.4")]
    assert rows[1]["val_mean_iou"] == "0.3"
    assert state["best"] == {"file": "best-epoch-0002.keras", "epoch": 2, "val_mean_iou": 0.3}
    assert saved == ["best-epoch-0001.keras", "best-epoch-0002.keras"]
    # best.keras is the committed best model; older epochs' files are gone.
    assert (tmp_path / "best.keras").read_bytes() == b"model"
    assert (tmp_path / "best.keras").samefile(tmp_path / "checkpoint" / "best-epoch-0002.keras")
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == [
        "best-epoch-0002.keras",
        "epoch-0002.weights.h5",
        "state.json",
    ]


def test_reconcile_restores_the_committed_epoch(tmp_path):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    commit_epoch(tmp_path, model, 1, {"loss": 2.0}, 0.5, lambda p: p.write_bytes(b"best 1"))
    # A kill after the commit of epoch 1 but while epoch 2 was being written and published:
    (tmp_path / "checkpoint" / ".epoch-0002.weights.h5.x.weights.h5").write_bytes(b"partial")
    (tmp_path / "checkpoint" / "best-epoch-0002.keras").write_bytes(b"not committed")
    (tmp_path / "best.keras").unlink()
    (tmp_path / "history.csv").write_text("epoch,loss\n1,2\n2,1\n")
    (tmp_path / ".history.csv.abc.tmp").write_text("partial")
    (tmp_path / ".final.keras.k2j_x9a0.keras").write_text("partial")
    # Hidden files that are not kfcn's stay where they are.
    (tmp_path / ".gitignore").write_text("*.keras\n")
    (tmp_path / ".notes.tmp").write_text("mine")
    state = reconcile(tmp_path)
    assert state["epoch"] == 1
    assert [r["epoch"] for r in _history(tmp_path / "history.csv")] == ["1"]
    assert (tmp_path / "best.keras").read_bytes() == b"best 1"
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["best.keras", "checkpoint", "history.csv", "best-epoch-0001.keras"]
        + ["epoch-0001.weights.h5", "state.json", ".gitignore", ".notes.tmp"]
    )
    # Broken state: a clear error naming the file.
    (tmp_path / "checkpoint" / "epoch-0001.weights.h5").unlink()
    with pytest.raises(KfcnError, match="epoch-0001.weights.h5, which is missing"):
        reconcile(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
@pytest.mark.parametrize("name", ["epoch-0002.weights.h5", "best-epoch-0001.keras"])
def test_damaged_checkpoint_is_one_line_naming_the_file(data_dir, tmp_path, damage, name):
    """state.json records each file's size and SHA-256: a truncated file or one flipped byte
    is refused on resume with the file's name and the ways out, exit code 1."""
    stage = tmp_path / "fcn32"
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    commit_epoch(stage, model, 1, {"loss": 2.0}, 0.5, lambda p: p.write_bytes(b"best model 1"))
    commit_epoch(stage, model, 2, {"loss": 1.0})
    state = json.loads((stage / "checkpoint" / "state.json").read_text())
    assert set(state["files"]) == {"epoch-0002.weights.h5", "best-epoch-0001.keras"}
    assert reconcile(stage)["epoch"] == 2  # intact: accepted
    path = stage / "checkpoint" / name
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 3] ^= 0x01
        path.write_bytes(bytes(data))
    args = ["train", "--stage", "fcn32", "--data-dir", data_dir, "--run-dir", tmp_path]
    result = CliRunner().invoke(main, [*args, *[a for s in TINY for a in ("--set", s)]])
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert str(path) in line and "damaged checkpoint" in line and "--overwrite" in line, line
    assert ("truncated" in line) == (damage == "truncate"), line
    assert "Traceback" not in result.output


def test_nonfinite_loss_raises_and_keeps_checkpoint(data_dir, tmp_path):
    cfg = load_config(
        None,
        TINY
        + [
            "train.learning_rate=1e30",
            "train.epochs=3",
            "train.validate=false",
            "train.steps_per_epoch=3",
        ],
    )
    with pytest.raises(KfcnError, match="NaN/Inf"):
        train_stage(cfg, TrainOptions("fcn32", data_dir, tmp_path), echo=lambda *_: None)
    assert not (tmp_path / "fcn32" / "final.keras").exists()


def test_init_model_with_other_classes_is_refused_unless_reinit_head(tmp_path):
    """--init MODEL on data whose class list differs (here: the same names, reordered) names
    both lists; with --reinit-head every layer but the score layers is loaded."""
    from .tiny_model import CLASS_NAMES, save_tiny_model

    source, tiny, _ = save_tiny_model(tmp_path)
    reordered = tmp_path / "reordered"
    write_shards(
        reordered,
        "train",
        2,
        size=(64, 64),
        num_classes=4,
        class_names=[CLASS_NAMES[i] for i in (0, 2, 1, 3)],
    )
    sets = [
        a
        for s in [*TINY, "train.validate=false", "train.learning_rate=0", "train.steps_per_epoch=1"]
        for a in ("--set", s)
    ]
    args = ["train", "--stage", "fcn8", "--init", source, *sets]
    refused = CliRunner().invoke(
        main, [*args, "--data-dir", reordered, "--run-dir", tmp_path / "a"]
    )
    assert refused.exit_code == 1, refused.output
    (line,) = [x for x in refused.output.splitlines() if "error" in x]
    assert str(CLASS_NAMES) in line and "'tree', 'road'" in line and "--reinit-head" in line
    other = tmp_path / "other"
    write_shards(
        other, "train", 2, size=(64, 64), num_classes=3, class_names=["background", "car", "person"]
    )
    run = tmp_path / "b"
    done = CliRunner().invoke(main, [*args, "--data-dir", other, "--run-dir", run, "--reinit-head"])
    assert done.exit_code == 0, done.output
    tuned, info = load_model(run / "fcn8" / "final.keras")
    assert info["class_names"] == ["background", "car", "person"]
    for name in ("block1_conv1", "block5_conv3", "fc7"):
        np.testing.assert_array_equal(_kernel(tuned, name), _kernel(tiny, name))
    assert _kernel(tuned, "score_fr").shape[-1] == 3
    assert not _kernel(tuned, "score_fr").any()  # fresh (zero-initialised), not loaded


def test_workers_stop_when_the_chief_fails_before_joining(data_dir, tmp_path):
    """A chief with a bad --data-dir fails at once; worker 1 stops within KFCN_WORKER_TIMEOUT
    with one line saying so and the chief's error from the shared run folder."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index, data in ((0, tmp_path / "missing"), (1, data_dir)):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        args = ["train", "--stage", "fcn32", "--data-dir", data, "--run-dir", tmp_path / "run"]
        sets = [a for s in TINY for a in ("--set", s)]
        env = {"TF_CONFIG": tf_config, "KFCN_WORKER_TIMEOUT": "5"}
        procs.append(_kfcn(*args, *sets, "--strategy", "multiworker", env=env))
    started = time.time()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], outs
    assert time.time() - started < 90
    chief_line = [x for x in outs[0].splitlines() if "error" in x][-1]
    assert "missing" in chief_line, outs[0]
    (line,) = [x for x in outs[1].splitlines() if "kfcn: error" in x]
    assert "worker 1: the chief (worker 0, 127.0.0.1:" in line, line
    assert "did not start within 5 s" in line, line
    assert "missing" in line  # the chief's own error, read from the shared run folder
