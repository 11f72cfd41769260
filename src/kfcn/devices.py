"""The devices a command runs on: what they can compute in (bfloat16, float16), the warning when a
GPU is there but TensorFlow cannot use it, and the filtering of TensorFlow's start-up notices.

TensorFlow's C++ runtime prints notices (oneDNN, "Could not find cuda drivers", "failed call to
cuInit", factories "already registered") straight to file descriptor 2, many of them before its
logging reads TF_CPP_MIN_LOG_LEVEL, so no log level hides them. A user reads them as errors.
kfcn drops them by their text instead (`NOISE_PATTERNS`, the one list of them): file descriptor
2 becomes a pipe read by a small forwarding process that writes every other line to the real
stderr as it arrives. A separate process, not a thread, because the lines that matter most come
right before a crash: "Check failed: ..." and then abort() would kill a thread before it read
them, while the forwarder reads the pipe to its end after the writer is gone.

A GPU machine whose TensorFlow lacks matching CUDA libraries (the plain `tensorflow` wheel without
a system CUDA/cuDNN) sees no GPU and trains on the CPU without a word; `gpu_warning` compares what
`nvidia-smi` lists with what TensorFlow sees and says how to fix it.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

GPU_FIX = "pip install 'kfcn[gpu]' (or make install GPU=1), which adds TensorFlow's CUDA libraries"

NOISE_PATTERNS = (
    # Printed by every `import tensorflow` (TF 2.16-2.21), before absl logging is set up.
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"oneDNN custom operations are on",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler",
    r"Could not find cuda drivers on your machine",
    r"failed call to cuInit",  # a CUDA build on a machine without a GPU (see `gpu_warning`)
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"Attempting to register factory for plugin \S+ when one has already been registered",
    r"computation placer already registered",
    r"TF-TRT Warning: Could not find TensorRT",
    # GPU start-up and first compilations (INFO lines, shown with TF_CPP_MIN_LOG_LEVEL=0).
    r"successful NUMA node read from SysFS had negative value",
    r"Your kernel may have been built without NUMA support",
    r"Created device /job:\w+/replica:\d+/task:\d+/device:GPU:\d+ with",
    r"XLA service 0x[0-9a-f]+ initialized for platform",
    r"StreamExecutor (device \(\d+\)|\[\d+\]): ",
    r"Loaded cuDNN version \d+",
    r"Compiled cluster using XLA!",
    r"disabling MLIR crash reproducer",
    r"Local rendezvous is aborting with status: OUT_OF_RANGE: End of sequence",
)
"""What TensorFlow prints that is never a problem, as regular expressions searched in each line
of file descriptor 2. Every other line reaches the user."""

NOISE = re.compile("|".join(f"(?:{p})" for p in NOISE_PATTERNS).encode())

PAUSE_S = 0.05
"""How long the forwarder waits for the rest of a line without a newline before showing it."""


class NoiseFilter:
    """Drops the lines of a byte stream that `noise` matches; passes every other byte.

    Lines are matched whole. A partial line (no newline yet) is held until `pause`, which
    shows it unless it matches; either way the rest of that line follows the same decision.
    """

    def __init__(self, noise: re.Pattern[bytes] = NOISE):
        self.noise = noise
        self.pending = b""
        self.decided: bool | None = None  # whether the current line, partly seen, is shown

    def _keep(self, line: bytes) -> bool:
        if self.decided is None:
            return not self.noise.search(line)
        return self.decided

    def feed(self, data: bytes) -> bytes:
        """The bytes to pass on after `data` arrived."""
        *lines, self.pending = (self.pending + data).split(b"\n")
        out = []
        for line in lines:
            if self._keep(line):
                out.append(line + b"\n")
            self.decided = None
        return b"".join(out)

    def pause(self) -> bytes:
        """The bytes to pass on when no more came for a while: the partial line, if kept."""
        if not self.pending:
            return b""
        self.decided = self._keep(self.pending)
        out, self.pending = (self.pending if self.decided else b""), b""
        return out

    def close(self) -> bytes:
        """The bytes to pass on at the end of the stream."""
        return self.pause()


def _write_all(fd: int | None, data: bytes) -> int | None:
    """Write `data` to `fd`; None from then on once `fd` fails (the reader went away)."""
    while fd is not None and data:
        try:
            data = data[os.write(fd, data) :]
        except InterruptedError:
            continue
        except OSError:
            return None
    return fd


def forward(source: int, target: int, noise: re.Pattern[bytes] = NOISE) -> None:
    """Copy `source` to `target` until end of file, without the lines `noise` matches."""
    lines = NoiseFilter(noise)
    out: int | None = target
    while True:
        waiting = [source]
        if lines.pending:
            waiting, _, _ = select.select([source], [], [], PAUSE_S)
        if not waiting or len(lines.pending) > 1 << 16:  # a pause, or a line without an end
            out = _write_all(out, lines.pause())
            continue
        try:
            data = os.read(source, 1 << 16)
        except InterruptedError:
            continue
        if not data:
            break
        out = _write_all(out, lines.feed(data))
    _write_all(out, lines.close())


_forwarder: dict = {}


def filter_stderr() -> bool:
    """Send file descriptor 2 through a forwarding process that drops TensorFlow's notices.

    Python's own `sys.stderr` (kfcn's messages, progress bars, tracebacks) keeps writing to the
    real stderr directly; what C++ code, Python's fatal errors and child processes write to
    file descriptor 2 passes through `forward`. At exit, file descriptor 2 is restored and the
    forwarder given a moment to write its last lines. Once per process; POSIX only.

    Returns:
        Whether stderr is filtered (False without `os.fork`, or when stderr is closed).
    """
    if _forwarder or not hasattr(os, "fork"):
        return bool(_forwarder)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError, AttributeError):
        return False
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        for fd in (read_end, write_end, real):
            os.close(fd)
        return False
    if pid == 0:  # the forwarder: it owns only the pipe and the real stderr
        try:
            _become_forwarder(read_end, real)
        finally:
            os._exit(0)
    os.close(read_end)
    stream = sys.stderr
    sys.stderr = io.TextIOWrapper(
        io.FileIO(real, "w"),
        encoding=getattr(stream, "encoding", None) or "utf-8",
        errors=getattr(stream, "errors", None) or "backslashreplace",
        line_buffering=True,
        write_through=True,
    )
    os.dup2(write_end, 2)
    os.close(write_end)
    _forwarder.update(pid=pid, real=real)
    atexit.register(_stop_forwarder)
    return True


def _become_forwarder(read_end: int, real: int) -> None:
    os.setsid()  # out of the terminal's process group: Ctrl-C stops the command, not this
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.dup2(real, 2)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.closerange(3, read_end)
    os.closerange(read_end + 1, max(read_end + 1, os.sysconf("SC_OPEN_MAX")))
    forward(read_end, 2)


def _stop_forwarder(timeout_s: float = 2.0) -> None:
    """Close this process's end of the pipe and let the forwarder write what it still holds."""
    pid = _forwarder.get("pid")
    if pid is None:
        return
    try:
        sys.stderr.flush()
        os.dup2(_forwarder["real"], 2)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout_s  # a child process may still hold the pipe open
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            break
        if done:
            break
        time.sleep(0.01)
    _forwarder.clear()


def quiet_tensorflow(verbose: bool = False, filter_fd2: bool = True) -> None:
    """Hide TensorFlow's start-up and runtime chatter, unless `verbose`.

    Call before TensorFlow is imported. Sets `TF_CPP_MIN_LOG_LEVEL=1` unless the user set it
    (INFO lines go; warnings, errors and fatal errors stay; inherited by worker processes),
    drops the known notices from file descriptor 2 (`filter_stderr`, with `filter_fd2`), and
    raises the Python loggers of TensorFlow, Keras and absl to errors only. With `verbose`,
    nothing changes: TensorFlow speaks as it would without kfcn.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if filter_fd2:
        filter_stderr()
    for name in ("tensorflow", "keras", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("tensorflow", "keras", "absl", "google.protobuf"):
        warnings.filterwarnings("ignore", module=module)


@dataclass(frozen=True)
class Gpu:
    """A GPU TensorFlow sees."""

    index: int
    name: str
    """e.g. 'NVIDIA H200'; empty when TensorFlow does not say."""
    compute_capability: tuple[int, int] | None = None
    """(major, minor) of an NVIDIA GPU, e.g. (9, 0); None when TensorFlow does not say."""

    def __str__(self) -> str:
        return f"GPU:{self.index}" + (f" ({self.name})" if self.name else "")


BFLOAT16_CAPABILITY = (8, 0)
"""The oldest NVIDIA GPUs with bfloat16 arithmetic: Ampere (A100, RTX 30xx)."""

CPU_BFLOAT16_FLAGS = {
    "x86_64": ("flags", ("avx512_bf16", "amx_bf16")),
    "aarch64": ("Features", ("bf16", "svebf16")),
}
"""Per machine: the /proc/cpuinfo key listing CPU features, and the bfloat16 ones among them
(x86-64: AVX512_BF16 or AMX-BF16; Arm: FEAT_BF16, e.g. Graviton3, Neoverse V1/V2/N2)."""

_MACHINES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def cpu_has_bfloat16(cpuinfo: str | None = None, machine: str | None = None) -> bool:
    """Whether the CPU has bfloat16 arithmetic (oneDNN uses it; without, bfloat16 is emulated).

    Args:
        cpuinfo: the text of /proc/cpuinfo (read when None; none outside Linux: False).
        machine: `platform.machine()` (its value when None), e.g. 'x86_64' or 'aarch64'.

    Returns:
        True when every processor's feature line lists one of `CPU_BFLOAT16_FLAGS`.
    """
    machine = (machine or platform.machine()).lower()
    key, wanted = CPU_BFLOAT16_FLAGS.get(_MACHINES.get(machine, machine), ("", ()))
    if not key:
        return False
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
                cpuinfo = file.read()
        except OSError:
            return False
    features = [
        set(value.split())
        for name, sep, value in (line.partition(":") for line in cpuinfo.splitlines())
        if sep and name.strip() == key
    ]
    return bool(features) and all(any(flag in found for flag in wanted) for found in features)


def precision_problem(precision: str, gpus: Sequence[Gpu], cpu_bfloat16: bool) -> str | None:
    """Why this machine cannot compute fast at `precision`, or None when it can.

    float32 runs everywhere. With GPUs (TensorFlow computes on them), float16 runs on any and
    bfloat16 on compute capability 8.0 or newer; without, bfloat16 needs a CPU with bfloat16
    instructions and float16 cannot run fast (a CPU emulates it, slower than float32).

    Args:
        precision: 'float32', 'bfloat16' or 'float16'.
        gpus: the GPUs TensorFlow sees (`visible_gpus`).
        cpu_bfloat16: `cpu_has_bfloat16()`.

    Returns:
        The reason, to follow the option's name: "needs ...".
    """
    if precision == "float32":
        return None
    if gpus:
        if precision != "bfloat16":
            return None
        old = [
            g for g in gpus if g.compute_capability and g.compute_capability < BFLOAT16_CAPABILITY
        ]
        if not old:
            return None
        major, minor = old[0].compute_capability
        return (
            f"needs compute capability {BFLOAT16_CAPABILITY[0]}.{BFLOAT16_CAPABILITY[1]} "
            f"(Ampere) or newer; {old[0]} has {major}.{minor}"
        )
    if precision == "bfloat16":
        if cpu_bfloat16:
            return None
        return (
            "needs a GPU or a CPU with bfloat16 instructions (x86 AVX512_BF16 or AMX-BF16, Arm "
            "BF16); this machine has neither"
        )
    return "needs a GPU (TensorFlow sees none here)"


def visible_gpus() -> list[Gpu]:
    """The GPUs TensorFlow sees, with their names and compute capabilities where it says."""
    import tensorflow as tf

    found = []
    for index, gpu in enumerate(tf.config.list_physical_devices("GPU")):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except (ValueError, RuntimeError):
            details = {}
        capability = details.get("compute_capability")
        if capability is not None:
            capability = (int(capability[0]), int(capability[1]))
        found.append(Gpu(index, str(details.get("device_name") or ""), capability))
    return found


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
    """The devices TensorFlow sees, e.g. ["GPU:0 (NVIDIA H200)", "CPU (16 cores)"]."""
    import tensorflow as tf

    names = [str(gpu) for gpu in visible_gpus()]
    if tf.config.list_physical_devices("CPU"):
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
