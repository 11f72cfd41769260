"""Shared fixtures: quiet TensorFlow, and the real VOC/SBD sample files when KFCN_REAL_DATA is set."""

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
