"""Device listing, the warning for a GPU TensorFlow cannot see, and quiet TensorFlow start-up."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kfcn.cli import main
from kfcn.devices import device_report, gpu_warning, nvidia_gpus, tensorflow_devices

from .conftest import REPO

# What TensorFlow's C++ runtime prints on its own: absl-style "I0000 00:00:..." lines and the
# notices about oneDNN, CUDA drivers and cuInit.
CHATTER = re.compile(r"^[IWEF]\d{4} |absl::|oneDNN|cuda drivers|cuInit", re.MULTILINE)


def _fake_nvidia_smi(folder: Path, listing: str) -> Path:
    """A folder holding an `nvidia-smi` script that answers `-L` with `listing`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    echoes = "".join(f"echo '{line}'\n" for line in listing.splitlines())  # builtins only
    script.write_text(f"#!/bin/sh\n{echoes}")
    script.chmod(0o755)
    return folder


def test_gpu_listed_by_nvidia_smi_but_unseen_by_tensorflow_warns(tmp_path, monkeypatch):
    listing = "GPU 0: NVIDIA H200 (UUID: GPU-0123)\nGPU 1: NVIDIA H200 (UUID: GPU-4567)"
    monkeypatch.setenv("PATH", str(_fake_nvidia_smi(tmp_path / "bin", listing)))
    assert nvidia_gpus() == listing.splitlines()
    lines = device_report()
    assert lines[0].startswith("devices: ") and "CPU" in lines[0]
    if any(d.startswith("GPU") for d in tensorflow_devices()):
        assert len(lines) == 1  # TensorFlow uses the GPU: nothing to warn about
    else:
        assert len(lines) == 2
        assert "nvidia-smi lists 2 GPU(s) (NVIDIA H200) but TensorFlow sees none" in lines[1]
        assert "pip install 'kfcn[gpu]'" in lines[1] and "make install GPU=1" in lines[1]


def test_no_warning_without_nvidia_smi_or_with_a_visible_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi at all
    assert nvidia_gpus() == []
    assert gpu_warning(["CPU (2 cores)"], []) is None
    assert gpu_warning(["GPU:0 (NVIDIA H200)", "CPU (2 cores)"], ["GPU 0: NVIDIA H200"]) is None
    failing = tmp_path / "broken"
    failing.mkdir()
    (failing / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 9\n")
    (failing / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(failing))
    assert nvidia_gpus() == []


def test_evaluate_prints_its_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(_fake_nvidia_smi(tmp_path / "bin", "GPU 0: Tesla T4")))
    (tmp_path / "data").mkdir()
    args = ["evaluate", "--data-dir", str(tmp_path / "data"), "--model", str(tmp_path / "no")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.stdout.startswith("devices: ")
    if not any(d.startswith("GPU") for d in tensorflow_devices()):
        warning, error = result.stderr.strip().splitlines()
        assert warning.startswith("warning: nvidia-smi lists 1 GPU(s) (Tesla T4)")
        assert error.startswith("kfcn: error: ")


def _run_kfcn(args: list[str], cwd: Path, verbose: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "KFCN_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    if verbose:
        env["KFCN_VERBOSE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "kfcn.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_tensorflow_start_up_chatter_only_with_verbose(tmp_path, verbose):
    """A real command in a fresh process, as a user runs it (no TF_CPP_MIN_LOG_LEVEL set): its
    stderr holds kfcn's lines only, unless KFCN_VERBOSE asks for TensorFlow's too."""
    CliRunner().invoke(main, ["synthesize", "--toy", "--count", "4", "--out", str(tmp_path)])
    args = ["prepare", "--images", "images", "--masks", "masks", "--workers", "1"]
    done = _run_kfcn([*args, "--val-fraction", "0.25", "--out", "records"], tmp_path, verbose)
    assert done.returncode == 0, done.stderr
    assert "train: 3 records" in done.stdout
    if verbose:
        assert CHATTER.search(done.stderr), done.stderr
    else:
        assert not CHATTER.search(done.stderr), done.stderr
