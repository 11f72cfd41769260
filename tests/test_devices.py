"""Device listing, the warning for a GPU TensorFlow cannot see, and quiet TensorFlow start-up."""

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from kfcn.cli import main
from kfcn.devices import (
    NOISE,
    NoiseFilter,
    device_report,
    forward,
    gpu_warning,
    nvidia_gpus,
    tensorflow_devices,
)

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


# Lines TensorFlow 2.21 prints at start-up (CPU-only host, TF_CPP_MIN_LOG_LEVEL=0) and on GPU
# hosts; every one must be dropped.
NOISE_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796407157.779976   27676 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796407157.780236   27676 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.",
    "I0000 00:00:1796407157.819038   27676 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_BF16 AMX_BF16 FMA, in other "
    "operations, rebuild TensorFlow with the appropriate compiler flags.",
    "E0000 00:00:1796407161.657672   27676 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "E0000 00:00:1712345678.123456    4321 cuda_dnn.cc:8310] Unable to register cuDNN factory: "
    "Attempting to register factory for plugin cuDNN when one has already been registered",
    "E0000 00:00:1712345678.123456    4321 cuda_fft.cc:485] Unable to register cuFFT factory: "
    "Attempting to register factory for plugin cuFFT when one has already been registered",
    "E0000 00:00:1712345678.123456    4321 cuda_blas.cc:1418] Unable to register cuBLAS factory: "
    "Attempting to register factory for plugin cuBLAS when one has already been registered",
    "W0000 00:00:1712345678.123456    4321 computation_placer.cc:177] computation placer already "
    "registered. Please check linkage and avoid linking the same target more than once.",
    "2024-03-01 10:00:00.000000: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT "
    "Warning: Could not find TensorRT",
    "I0000 00:00:1796407161.963373   27676 service.cc:153] XLA service 0x563e2b8814b0 initialized "
    "for platform Host (this does not guarantee that XLA will be used). Devices:",
    "I0000 00:00:1796407161.963407   27676 service.cc:161]   StreamExecutor [0]: Host, Default "
    "Version (Driver: 0.0.0; Runtime: 0.0.0; Toolkit: 0.0.0; DNN: 0.0.0)",
    "I0000 00:00:1796407162.007925   27676 device_compiler.h:208] Compiled cluster using XLA!  This "
    "line is logged at most once for the lifetime of the process.",
]
KEPT_LINES = [
    "F0000 00:00:1796407162.007925   27676 conv_ops.cc:42] Check failed: something",
    "W0000 00:00:1712345678.123456    4321 gpu_device.cc:2344] Cannot dlopen some GPU libraries.",
    "E0000 00:00:1712345678.123456    4321 cuda_dnn.cc:522] Loaded runtime CuDNN library: 8.6.0 "
    "but source was compiled with: 8.9.4.",
    "Traceback (most recent call last):",
]


def test_noise_patterns_drop_tensorflows_notices_and_keep_everything_else():
    for line in NOISE_LINES:
        assert NOISE.search(line.encode()), line
    for line in KEPT_LINES:
        assert not NOISE.search(line.encode()), line
    text = "\n".join([*NOISE_LINES, *KEPT_LINES]).encode() + b"\n"
    lines = NoiseFilter()
    out = b"".join(lines.feed(text[i : i + 7]) for i in range(0, len(text), 7)) + lines.close()
    assert out.decode() == "\n".join(KEPT_LINES) + "\n"


def test_a_partial_line_is_shown_after_a_pause_and_the_rest_of_it_follows():
    lines = NoiseFilter()
    assert lines.feed(b"epoch 1: ") == b""  # waits for the rest of the line
    assert lines.pause() == b"epoch 1: "
    assert (
        lines.feed(b"oneDNN custom operations are on\nnext") == b"oneDNN custom operations are on\n"
    )
    assert lines.feed(b" line\n") == b"next line\n"
    assert lines.feed(b"I0000 port.cc:153] oneDNN custom operations are on. You may") == b""
    assert lines.pause() == b""  # noise: dropped, and the rest of its line with it
    assert lines.feed(b" see slightly different numerical results\n") == b""
    assert lines.feed(b"no newline at the end") == b""
    assert lines.close() == b"no newline at the end"


def test_forward_copies_a_pipe_to_its_end_without_the_noise():
    source, writer = os.pipe()
    reader, target = os.pipe()
    os.write(writer, f"{NOISE_LINES[2]}\nkept\n{NOISE_LINES[0]}\nno newline".encode())
    os.close(writer)  # the writer is gone (as after an abort): what it wrote is still read
    forward(source, target)
    os.close(target)
    assert os.read(reader, 1 << 16) == b"kept\nno newline"
    os.close(source)
    os.close(reader)


def _quiet_process(body: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `body` in a fresh Python after kfcn's quiet start-up (no TF_CPP_MIN_LOG_LEVEL)."""
    code = "import os, sys\nfrom kfcn.devices import quiet_tensorflow\n" + textwrap.dedent(body)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "KFCN_"))}
    clean["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), clean.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_fatal_line_written_right_before_an_abort_reaches_stderr():
    done = _quiet_process(
        f"""
        quiet_tensorflow()
        os.write(2, {(NOISE_LINES[1] + chr(10)).encode()!r})
        print("from python", file=sys.stderr)
        os.write(2, {(KEPT_LINES[0] + chr(10)).encode()!r} + b"*** Check failure stack trace")
        os.abort()
        """
    )
    assert done.returncode == -signal.SIGABRT
    assert "oneDNN" not in done.stderr
    assert KEPT_LINES[0] in done.stderr.splitlines()
    assert done.stderr.endswith("*** Check failure stack trace")  # the last, partial line too
    assert "from python" in done.stderr


@pytest.mark.parametrize("level", [None, "3"], ids=["unset", "user-set"])
def test_a_normal_run_drops_the_noise_and_keeps_the_users_log_level(level):
    done = _quiet_process(
        f"""
        quiet_tensorflow()
        print(os.environ["TF_CPP_MIN_LOG_LEVEL"])
        for line in {NOISE_LINES!r} + {KEPT_LINES[1:3]!r}:
            os.write(2, line.encode() + b"\\n")
        import subprocess
        subprocess.run([sys.executable, "-c", "import os; os.write(2, b'from a child' + bytes([10]))"])
        os.write(2, b"last words")
        """,
        env={"TF_CPP_MIN_LOG_LEVEL": level} if level else None,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (level or "1")
    assert done.stderr.splitlines() == [*KEPT_LINES[1:3], "from a child", "last words"]


def test_verbose_filters_nothing():
    done = _quiet_process(
        f"quiet_tensorflow(verbose=True)\nos.write(2, {NOISE_LINES[0].encode()!r})"
    )
    assert done.returncode == 0 and done.stderr == NOISE_LINES[0]
    assert "TF_CPP_MIN_LOG_LEVEL" not in done.stdout
