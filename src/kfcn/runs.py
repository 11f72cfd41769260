"""Resolve a MODEL argument: a `.keras` model file, or a run directory written by `kfcn train`."""

from __future__ import annotations

from pathlib import Path

from kfcn.config import STAGES
from kfcn.errors import ModelError


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
    # train.py owns the run layout; importing it here (not at the top) avoids an import cycle,
    # since train imports evaluate, which imports this module.
    from kfcn.train import FINAL_MODEL

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
    from kfcn.train import FINAL_MODEL  # see resolve_model

    return [
        Path(run_dir) / stage / FINAL_MODEL
        for stage in STAGES
        if (Path(run_dir) / stage / FINAL_MODEL).is_file()
    ]
