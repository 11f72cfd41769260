"""What every benchmark shares: the machine description, timing statistics, atomic JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (the platform's machine name elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_info() -> dict:
    """CPU, cores, GPUs, TF/Keras/Python versions, load average and thread settings."""
    # Imported here: prepare's reader processes re-import the main module, and must stay light.
    import keras
    import tensorflow as tf

    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append(details.get("device_name", gpu.name))
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "gpus": gpus,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def describe_machine(info: dict) -> str:
    gpus = ", ".join(info["gpus"]) or "no GPU"
    return (
        f"{info['cpu']}, {info['cores']} cores usable, {gpus}; Python {info['python']}, "
        f"TF {info['tensorflow']}, Keras {info['keras']}; load average "
        f"{' '.join(str(x) for x in info['loadavg_1_5_15'])}"
    )


def spread(samples: list[float]) -> dict:
    """Median, min, max and interquartile range of repeated measurements."""
    xs = sorted(samples)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {
        "median": statistics.median(xs),
        "min": xs[0],
        "max": xs[-1],
        "q1": q1,
        "q3": q3,
        "n": len(xs),
    }


def time_calls(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn` (which must block until its work is done), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def rate_stats(times: list[float], work: float) -> dict:
    """`work` per second for each timed call, as a spread (the median of rates, not of times)."""
    return spread([work / t for t in times])


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write `data` as JSON under a temporary name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fmt(stats: dict, digits: int = 1) -> str:
    """'median (min-max)' of a spread."""
    return f"{stats['median']:.{digits}f} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"
