import os
import subprocess
import sys

from click.testing import CliRunner

from kfcn.cli import main

COMMANDS = {
    "prepare": ("--sbd-dir", "--voc-dir", "--out"),
    "synthesize": ("--out", "--toy"),
    "train": ("--stage", "--data-dir", "--run-dir", "--set", "--strategy", "--overwrite"),
    "evaluate": ("--split", "--data-dir", "--model", "--tta"),
    "predict": ("--model", "--out", "--overlay"),
    "export": ("--model", "--format", "--out"),
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
