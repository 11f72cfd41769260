import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from kfcn.cli import main
from kfcn.data.synthetic import write_synthetic

COMMANDS = {
    "prepare": ("--sbd-dir", "--voc-dir", "--out"),
    "synthesize": ("--out", "--toy"),
    "train": ("--stage", "--data-dir", "--run-dir", "--set", "--strategy", "--overwrite"),
    "evaluate": ("--split", "--data-dir", "--model", "--tta"),
    "predict": ("--model", "--out", "--overlay"),
    "export": ("--model", "--format", "--out"),
    "convert": ("--out", "--classes"),
}


def test_help_lists_every_command_with_its_summary():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    section = result.output.split("Commands:")[1]
    listed = [
        line.split()[0] for line in section.splitlines() if line.startswith("  ") and line[2] != " "
    ]
    assert sorted(listed) == sorted(COMMANDS)
    flat = " ".join(section.split())
    for name in COMMANDS:
        summary = main.get_command(None, name).get_short_help_str(limit=200)
        assert f"{name} {summary}" in flat, name


def test_each_command_has_its_own_help():
    for name, options in COMMANDS.items():
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, name
        assert result.output.startswith(f"Usage: main {name} ") or result.output.startswith(
            f"Usage: kfcn {name} "
        ), result.output[:80]
        for option in options:
            assert option in result.output, (name, option)


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert "kfcn" in result.output


def test_import_kfcn_stays_light_and_registers_with_keras():
    """`import kfcn` loads no TensorFlow, yet importing Keras afterwards registers kfcn's loss,
    metrics and layers (what `keras.models.load_model` needs for kfcn's files)."""
    code = (
        "import sys, kfcn\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
        "import keras\n"
        "for name in ('MaskedSparseCrossEntropy', 'MeanIoU', 'PixelAccuracy', 'VGGPreprocess',"
        " 'BilinearUpsampling'):\n"
        "    assert keras.saving.get_registered_object('kfcn>' + name) is not None, name\n"
        "print('registered')\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "registered" in result.stdout, result.stderr[-3000:]


def test_help_shows_the_project_layout_defaults():
    runner = CliRunner()
    shown = {
        "prepare": ["data/benchmark_RELEASE/dataset", "data/VOCdevkit/VOC2012", "data/records"],
        "train": ["data/records", "runs/voc", "KFCN_DATA_DIR", "KFCN_RUN_DIR"],
        "evaluate": ["data/records", "KFCN_DATA_DIR", "latest finished stage", "runs/voc"],
        "predict": ["predictions", "latest finished stage", "runs/voc"],
    }
    for command, defaults in shown.items():
        result = runner.invoke(main, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0
        for text in defaults:
            assert text in result.output, (command, text)


@pytest.mark.parametrize(
    "args, looked_for, flag",
    [
        (["prepare"], "data/benchmark_RELEASE/dataset", "--sbd-dir"),
        (["train", "--stage", "fcn16"], "data/records", "--data-dir"),
        (["evaluate", "--split", "val"], "data/records", "--data-dir"),
        (["predict", "image.jpg"], "runs/voc", "--model"),
    ],
    ids=["prepare", "train", "evaluate", "predict"],
)
def test_the_four_commands_run_as_written(tmp_path, monkeypatch, args, looked_for, flag):
    """Without options each command uses the project layout; where a default path is missing it
    says in one line what it looked for and which flag to pass (not click's Missing option)."""
    monkeypatch.chdir(tmp_path)
    for name in ("KFCN_DATA_DIR", "KFCN_RUN_DIR"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"kfcn: error: {looked_for}: no ")
    assert f"pass {flag}" in lines[0] and "Missing option" not in result.output


def test_prepare_defaults_read_and_write_the_project_layout(tmp_path, monkeypatch):
    write_synthetic(tmp_path / "data", sbd_train=3, sbd_val=2, voc_extra=1, size=((32, 32),) * 2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KFCN_DATA_DIR", raising=False)
    result = CliRunner().invoke(main, ["prepare", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "records" / "meta.json").is_file()
    monkeypatch.setenv("KFCN_DATA_DIR", str(tmp_path / "elsewhere"))
    result = CliRunner().invoke(main, ["prepare", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere" / "meta.json").is_file()


def test_prepare_names_the_missing_default_voc_dir(tmp_path, monkeypatch):
    """SBD given, VOC left at its default, which is absent: the one line names --voc-dir."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sbd").mkdir()
    result = CliRunner().invoke(main, ["prepare", "--sbd-dir", "sbd", "--out", "o"])
    assert result.exit_code == 1
    assert result.stderr.startswith("kfcn: error: data/VOCdevkit/VOC2012: no VOC 2012 dataset")
    assert "pass --voc-dir DIR" in result.stderr
