"""A resume continues the committed run exactly, or is refused naming what changed."""

import copy
import dataclasses

import keras
import pytest
from click.testing import CliRunner

from kfcn import resume
from kfcn.checkpoint import commit_epoch
from kfcn.cli import main
from kfcn.config import load_config
from kfcn.errors import KfcnError

from .shards import write_shards
from .test_train import TINY

FLAGS = dict(mixed_precision=False, jit=False, init="none", data="abc", replicas=1)


def _settings(cfg, **flags):
    return resume.run_settings(cfg, **{**FLAGS, **flags})


def _changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.125
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, "x"]
    return 3  # None


def _with(cfg, key, value):
    cfg = copy.deepcopy(cfg)
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    if isinstance(node, dict):
        node[last] = value
    else:
        setattr(node, last, value)
    return cfg


BASE = load_config(None, TINY)
KEYS = sorted(resume._flatten(dataclasses.asdict(BASE)))


def _state(cfg, **flags):
    return {"epoch": 2, "settings": _settings(cfg, **flags)}


@pytest.mark.parametrize("key", [k for k in KEYS if k not in resume.RESUME_ALLOWED])
def test_every_config_key_that_changes_the_numbers_is_refused(key, tmp_path):
    old = resume._flatten(dataclasses.asdict(BASE))[key]
    new = _changed(old)
    if key == "train.epochs":  # raising is allowed at a constant rate: lower it
        new = old - 1
    with pytest.raises(KfcnError) as info:
        resume.check_resume(_state(BASE), _settings(_with(BASE, key, new)), tmp_path)
    message = str(info.value)
    assert f"{key}: {old!r} -> {new!r}" in message and "--overwrite" in message


@pytest.mark.parametrize(
    "flag, value",
    [
        ("mixed_precision", True),
        ("jit", True),
        ("init", "other.keras"),
        ("data", "def"),
        ("replicas", 2),
    ],
)
def test_every_flag_that_changes_the_numbers_is_refused(flag, value, tmp_path):
    with pytest.raises(KfcnError, match="cannot resume"):
        resume.check_resume(_state(BASE), _settings(BASE, **{flag: value}), tmp_path)


def test_allowed_changes_resume(tmp_path):
    for key, value in (("train.validate", False), ("train.val_images", 7)):
        resume.check_resume(_state(BASE), _settings(_with(BASE, key, value)), tmp_path)
    # More epochs at a constant learning rate continue the same run; with a schedule they do not.
    longer = _with(BASE, "train.epochs", BASE.train.epochs + 3)
    resume.check_resume(_state(BASE), _settings(longer), tmp_path)
    poly = _with(BASE, "train.lr_schedule", "poly")
    with pytest.raises(KfcnError, match="train.epochs: 1 -> 4"):
        resume.check_resume(_state(poly), _settings(_with(poly, "train.epochs", 4)), tmp_path)
    # A state from before settings were recorded resumes as it is.
    resume.check_resume({"epoch": 1}, _settings(BASE), tmp_path)


def test_optimizer_steps_must_match_the_committed_epoch(tmp_path):
    resume.check_iterations({"epoch": 2}, 6, 3, tmp_path / "w.h5")
    with pytest.raises(KfcnError, match=r"w.h5: the optimizer has taken 5 steps, but epoch 2 x 3"):
        resume.check_iterations({"epoch": 2}, 5, 3, tmp_path / "w.h5")


def test_cli_refuses_a_changed_batch_in_one_line(tmp_path):
    data = tmp_path / "data"
    write_shards(data, "train", 4, size=(64, 64), seed=1, per_shard=4)
    run = tmp_path / "run"
    cfg = load_config(None, TINY)
    settings = resume.run_settings(
        cfg,
        mixed_precision=False,
        jit=False,
        init="none",
        data=resume.data_fingerprint(data),
        replicas=1,
    )
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    commit_epoch(run / "fcn32", model, 1, {"loss": 1.0}, settings=settings)
    sets = [a for s in [*TINY, "train.epochs=2", "train.batch_size=1"] for a in ("--set", s)]
    args = ["train", "--stage", "fcn32", "--data-dir", data, "--run-dir", run, *sets]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert "train.batch_size: 2 -> 1" in line and "--overwrite" in line, line
    assert "train.epochs" not in line  # raised, at a constant rate: allowed
