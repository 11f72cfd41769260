"""Shared fixtures: quiet TensorFlow, and the real VOC/SBD sample files when KFCN_REAL_DATA is set."""

import ctypes
import ctypes.util
import gc
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Root of the real-data sample (VOC2012/, SBD/, splits/); skips the test when unset."""
    root = os.environ.get("KFCN_REAL_DATA")
    if not root:
        pytest.skip("KFCN_REAL_DATA is not set")
    path = Path(root)
    if not (path / "VOC2012").is_dir():
        pytest.fail(f"KFCN_REAL_DATA={root} has no VOC2012/ directory")
    return path


@pytest.fixture(autouse=True)
def _free_tmp_path(request):
    """Delete each test's tmp_path as soon as it ends: FCN model files are ~0.5 GB each."""
    yield
    path = request.node.funcargs.get("tmp_path") if hasattr(request.node, "funcargs") else None
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _malloc_trim():
    """glibc's malloc_trim, or None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


MALLOC_TRIM = _malloc_trim()


@pytest.fixture(autouse=True, scope="module")
def _return_memory_after_each_module():
    """Free what a test file's models held and hand it back to the system: TensorFlow's threads
    allocate from several malloc arenas, and memory freed in one is not reused by another, so
    without this a worker's peak grows with every full-size model it has seen."""
    yield
    gc.collect()
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
