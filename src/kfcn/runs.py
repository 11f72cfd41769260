"""The run-directory layout, and resolving a MODEL argument to a `.keras` file.

`kfcn train` writes one folder per stage under a run directory:

    RUN_DIR/STAGE/
        config.yaml     the resolved config
        history.csv     one row per finished epoch (train and val metrics)
        logs/           TensorBoard
        checkpoint/     state.json + the last finished epoch's weights (resume; removed at the end)
        best.keras      the model with the best val mean IoU (when validating)
        final.keras     the model after the last epoch; its presence marks the stage finished

This module owns those names; train, evaluate and predict import them from here.
"""

from __future__ import annotations

from pathlib import Path

from kfcn.config import STAGES
from kfcn.errors import ModelError

FINAL_MODEL = "final.keras"
BEST_MODEL = "best.keras"
HISTORY_FILE = "history.csv"
CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoint"
LOGS_DIR = "logs"


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    """The folder of one stage of a run."""
    return Path(run_dir) / stage


def resolve_model(model: str | Path) -> Path:
    """The model file a MODEL argument names.

    Args:
        model: a `.keras` file; a run directory (`RUN_DIR`, whose latest finished stage is taken:
            fcn8 before fcn16 before fcn32, a stage being finished when `STAGE/final.keras`
            exists); or one stage's directory (`RUN_DIR/STAGE`, its `final.keras`).

    Returns:
        The path of the `.keras` file.

    Raises:
        ModelError: the path does not exist, or a directory holds no finished stage.
    """
    path = Path(model)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ModelError(f"{path}: no such model file or run directory")
    if (path / FINAL_MODEL).is_file():
        return path / FINAL_MODEL
    for stage in reversed(STAGES):
        candidate = path / stage / FINAL_MODEL
        if candidate.is_file():
            return candidate
    expected = ", ".join(f"{stage}/{FINAL_MODEL}" for stage in reversed(STAGES))
    raise ModelError(
        f"{path}: no finished stage in this run directory (expected one of {expected}); "
        "pass a .keras file to use another model"
    )


def finished_stages(run_dir: str | Path) -> list[Path]:
    """The model files of every finished stage of a run directory, in order fcn32, fcn16, fcn8.

    Returns:
        `RUN_DIR/STAGE/final.keras` for each stage where it exists; empty when there is none.
    """
    return [
        Path(run_dir) / stage / FINAL_MODEL
        for stage in STAGES
        if (Path(run_dir) / stage / FINAL_MODEL).is_file()
    ]
