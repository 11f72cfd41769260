"""The devices a command runs on, a warning when a GPU is there but TensorFlow cannot use it, and
the quieting of TensorFlow's start-up messages.

TensorFlow's C++ runtime prints its notices (oneDNN, "Could not find cuda drivers", "failed call
to cuInit") while `import tensorflow` runs, so they can only be silenced through the environment,
before that import. A user reads them as errors; kfcn hides them unless asked to be verbose.

A GPU machine whose TensorFlow lacks matching CUDA libraries (the plain `tensorflow` wheel without
a system CUDA/cuDNN) sees no GPU and trains on the CPU without a word; `gpu_warning` compares what
`nvidia-smi` lists with what TensorFlow sees and says how to fix it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

GPU_FIX = "pip install 'kfcn[gpu]' (or make install GPU=1), which adds TensorFlow's CUDA libraries"


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of `tensorflow` with file descriptor 2 (stderr) sent to a temporary
    file: the C++ notices of the import are written there by absl before its logging is set up,
    whatever TF_CPP_MIN_LOG_LEVEL says. If the import fails, what was captured is replayed."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                self.loader.exec_module(module)
            except BaseException:
                os.dup2(saved, 2)
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
                raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` with the other finders, once, and wraps its loader in `_QuietLoader`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow(verbose: bool = False) -> None:
    """Hide TensorFlow's start-up and runtime chatter, unless `verbose`.

    Call before TensorFlow is imported. Sets `TF_CPP_MIN_LOG_LEVEL=3` (runtime messages such as
    "failed call to cuInit"; inherited by worker processes), silences what the import itself
    prints (see `_QuietLoader`; TensorFlow is still imported only when a command needs it), and
    raises the Python loggers of TensorFlow, Keras and absl to errors only. With `verbose`,
    nothing changes: TensorFlow speaks as it would without kfcn.
    """
    if verbose:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" not in sys.modules and not any(
        isinstance(finder, _QuietFinder) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietFinder())
    for name in ("tensorflow", "keras", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("tensorflow", "keras", "absl", "google.protobuf"):
        warnings.filterwarnings("ignore", module=module)


def nvidia_gpus(timeout: float = 10.0) -> list[str]:
    """The GPUs `nvidia-smi -L` lists (one "GPU 0: NAME (UUID: ...)" line each).

    Returns:
        The listed lines; empty when `nvidia-smi` is absent, fails or lists none.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        done = subprocess.run(
            [exe, "-L"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.startswith("GPU ")]


def tensorflow_devices() -> list[str]:
    """The devices TensorFlow sees, e.g. ["GPU:0 (NVIDIA H200)", "CPU"]."""
    import tensorflow as tf

    names = []
    for index, gpu in enumerate(tf.config.list_physical_devices("GPU")):
        try:
            detail = tf.config.experimental.get_device_details(gpu).get("device_name")
        except (ValueError, RuntimeError):
            detail = None
        names.append(f"GPU:{index}" + (f" ({detail})" if detail else ""))
    cpus = tf.config.list_physical_devices("CPU")
    if cpus:
        names.append(f"CPU ({os.cpu_count() or 1} cores)")
    return names


def gpu_warning(tf_devices: list[str], listed: list[str]) -> str | None:
    """The warning for GPUs that `nvidia-smi` lists but TensorFlow does not see, or None.

    Args:
        tf_devices: what `tensorflow_devices` returned.
        listed: what `nvidia_gpus` returned.
    """
    if not listed or any(name.startswith("GPU") for name in tf_devices):
        return None
    first = listed[0].split(":", 1)[-1].split("(UUID")[0].strip() or "a GPU"
    return (
        f"warning: nvidia-smi lists {len(listed)} GPU(s) ({first}) but TensorFlow sees none, "
        f"so this runs on the CPU, far slower; fix: {GPU_FIX}"
    )


def device_report() -> list[str]:
    """One line naming the devices this process computes on, then the GPU warning, if any."""
    devices = tensorflow_devices()
    lines = [f"devices: {', '.join(devices)}"]
    warning = gpu_warning(devices, nvidia_gpus())
    if warning:
        lines.append(warning)
    return lines
