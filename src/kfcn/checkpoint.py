"""The resume state of a training stage: each finished epoch is committed once, atomically.

`RUN_DIR/STAGE/checkpoint/` holds

    epoch-NNNN.weights.h5     model + optimizer state after epoch NNNN
    best-epoch-NNNN.keras     the best model so far (when validating)
    state.json                {"epoch", "weights", "best", "history", "files", "iterations",
                              "settings"}: the commit record; "files" gives each named file's
                              size and SHA-256, checked on resume, "settings" what the run's
                              numbers depend on (`kfcn.resume`)

An epoch is committed in this order: its weights file, then (if it improved) its best model, both
written to temporary names, flushed to disk and renamed (the folder flushed after each rename);
then `state.json` is replaced atomically. That rename
*is* the commit: before it, the run is at the previous epoch; after it, at this one. Only then are
the public files derived from the state: `history.csv` (rewritten from the state's rows) and
`best.keras` (a hard link to the best model). A kill in between is repaired by `reconcile` when the
same command runs again, so every file always describes the last committed epoch.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import keras

from kfcn.errors import KfcnError
from kfcn.fileio import atomic_write, publish, sha256_file, temp_files, temp_path
from kfcn.runs import BEST_MODEL, CHECKPOINT_DIR, CONFIG_FILE, FINAL_MODEL, HISTORY_FILE

STATE_FILE = "state.json"
# The files kfcn writes in a stage folder, each through a temporary file beside it.
STAGE_FILES = (HISTORY_FILE, BEST_MODEL, FINAL_MODEL, CONFIG_FILE)


def checkpoint_dir(stage_dir: str | Path) -> Path:
    """Where a stage keeps its resume state."""
    return Path(stage_dir) / CHECKPOINT_DIR


def read_state(stage_dir: str | Path, verify: bool = True) -> dict | None:
    """The last committed epoch's state of a stage, or None when no epoch was committed.

    Args:
        stage_dir: the stage folder.
        verify: check each named file's size and SHA-256 against the state's record.

    Raises:
        KfcnError: `state.json` is unreadable, or names a file that is missing, truncated or
            damaged; the message names the file and the ways out.
    """
    ckpt = checkpoint_dir(stage_dir)
    path = ckpt / STATE_FILE
    if not path.is_file():
        return None
    hint = f"start the stage over with --overwrite, or delete {ckpt}"
    try:
        state = json.loads(path.read_text())
        files = [state["weights"]] + ([state["best"]["file"]] if state.get("best") else [])
        int(state["epoch"])
        recorded = state.get("files") or {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KfcnError(f"{path}: unreadable resume state ({exc}); {hint}") from None
    for name in files:
        file = ckpt / name
        if not file.is_file():
            raise KfcnError(f"{path} names {file}, which is missing; {hint}")
        want = recorded.get(name)
        if not verify or not isinstance(want, dict):
            continue  # states written before checksums were recorded
        size = file.stat().st_size
        if size != want.get("size"):
            raise KfcnError(
                f"{file}: damaged checkpoint ({size:,} bytes, {want.get('size'):,} when "
                f"committed: truncated); {hint}"
            )
        if sha256_file(file) != want.get("sha256"):
            raise KfcnError(f"{file}: damaged checkpoint (its SHA-256 changed); {hint}")
    return state


def optimizer_steps(model: keras.Model) -> int | None:
    """The steps `model`'s optimizer has taken (any strategy), or None without an optimizer."""
    if model.optimizer is None:
        return None
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _file_record(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def history_csv(rows: list[dict]) -> str:
    """`history.csv`'s text: one row per epoch, the union of the rows' keys as columns."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: v if k == "epoch" else f"{float(v):.6g}" for k, v in row.items()})
    return buf.getvalue()


def _link(source: Path, dest: Path) -> None:
    """Make `dest` the file `source` atomically: a hard link (no copy), else a copy."""
    tmp = temp_path(dest)
    tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:  # file systems without hard links
        shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def publish_outputs(stage_dir: str | Path, state: dict) -> None:
    """Derive `history.csv` and `best.keras` from a committed state."""
    stage_dir = Path(stage_dir)
    atomic_write(stage_dir / HISTORY_FILE, history_csv(state["history"]))
    if state.get("best"):
        _link(checkpoint_dir(stage_dir) / state["best"]["file"], stage_dir / BEST_MODEL)


def _remove_unreferenced(stage_dir: Path, state: dict | None) -> None:
    """Delete files of the checkpoint folder that the state does not name (older epochs, files
    cut short by a kill) and temporary files left in the stage folder."""
    ckpt = checkpoint_dir(stage_dir)
    keep = {STATE_FILE}
    if state is not None:
        keep.add(state["weights"])
        if state.get("best"):
            keep.add(state["best"]["file"])
    if ckpt.is_dir():
        for path in ckpt.iterdir():
            if path.name not in keep and path.is_file():
                path.unlink(missing_ok=True)
    # Only kfcn's own temporary files: a user's .gitignore or notes in the folder stay.
    for path in temp_files(stage_dir, STAGE_FILES):
        path.unlink(missing_ok=True)


def reconcile(stage_dir: str | Path) -> dict | None:
    """Bring a stage folder back to its last committed epoch, after whatever kill happened.

    The public files are derived again from `state.json`; partial and stale files are removed.
    Without a committed epoch, `history.csv` and `best.keras` of an earlier, unfinished attempt
    are removed too (nothing of them was committed).

    Returns:
        The committed state, or None.
    """
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return None
    state = read_state(stage_dir)
    _remove_unreferenced(stage_dir, state)
    if state is None:
        for name in (HISTORY_FILE, BEST_MODEL):
            (stage_dir / name).unlink(missing_ok=True)
        return None
    publish_outputs(stage_dir, state)
    return state


def commit_epoch(
    stage_dir: str | Path,
    model: keras.Model,
    epoch: int,
    logs: dict,
    best_score: float | None = None,
    save_best: Callable[[Path], None] | None = None,
    settings: dict | None = None,
) -> dict:
    """Commit finished epoch `epoch` (1-based) and publish it.

    Args:
        stage_dir: the stage folder.
        model: the compiled model (its optimizer state is saved too).
        epoch: the epoch just finished.
        logs: its metrics (train and val), one history row.
        best_score: the new best val mean IoU when this epoch improved it, else None.
        save_best: writes the model file for the best model to the path it is given.
        settings: what the run's numbers depend on (`kfcn.resume.run_settings`), checked when
            the stage resumes.

    Returns:
        The committed state.
    """
    stage_dir = Path(stage_dir)
    ckpt = checkpoint_dir(stage_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    previous = read_state(stage_dir, verify=False) or {}
    weights = f"epoch-{epoch:04d}.weights.h5"
    tmp = temp_path(ckpt / weights, suffix=".weights.h5")
    model.save_weights(tmp, overwrite=True)
    publish(tmp, ckpt / weights)
    best = previous.get("best")
    if best_score is not None and save_best is not None:
        best = {"file": f"best-epoch-{epoch:04d}.keras", "epoch": epoch, "val_mean_iou": best_score}
        save_best(ckpt / best["file"])
    row = {"epoch": epoch, **{k: float(v) for k, v in sorted(logs.items())}}
    rows = [r for r in previous.get("history", []) if r["epoch"] < epoch] + [row]
    files = {weights: _file_record(ckpt / weights)}
    if best:
        files[best["file"]] = previous.get("files", {}).get(best["file"]) or _file_record(
            ckpt / best["file"]
        )
    iterations = optimizer_steps(model)
    state = {
        "epoch": epoch,
        "weights": weights,
        "best": best,
        "history": rows,
        "files": files,
        "iterations": iterations,
        "settings": settings,
    }
    atomic_write(ckpt / STATE_FILE, json.dumps(state, indent=1))  # the commit
    publish_outputs(stage_dir, state)
    _remove_unreferenced(stage_dir, state)
    return state
