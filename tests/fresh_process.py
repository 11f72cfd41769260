"""Run test code in a fresh Python process (for settings that must precede TensorFlow's start)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_two_replicas(*checks: str) -> subprocess.CompletedProcess:
    """Run checks of tests/two_replicas.py in a process with two logical CPU devices."""
    return subprocess.run(
        [sys.executable, "-m", "tests.two_replicas", *checks],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
