"""What a resumed stage must share with the run it continues, so that it is the same run.

Every committed epoch records the run's settings (`run_settings`): each config key, the flags
that change the numbers (`--mixed-precision`, `--jit`, `--init`), the train data's fingerprint
and the replica count. A resume compares them with the new run's (`check_resume`) and refuses
every difference but those in `RESUME_ALLOWED`, naming each changed key with its old and new
value. Raising `train.epochs` is allowed when the learning rate is constant (a schedule's length
depends on it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kfcn.config import Config, config_to_dict
from kfcn.data import records
from kfcn.errors import KfcnError

# Keys that decide what is scored after each epoch, never what is trained.
RESUME_ALLOWED = ("train.validate", "train.val_images")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def data_fingerprint(data_dir: str | Path, split: str = "train") -> str:
    """Identifies the prepared records of `split`: each shard's name and size, and the class
    list of `meta.json`, hashed (cheap: nothing is read but file sizes and the meta file)."""
    shards = records.list_shards(data_dir, split)
    meta = records.read_meta(data_dir)
    parts = [[p.name, p.stat().st_size] for p in shards] + [meta.get("class_names")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def init_fingerprint(source) -> str:
    """The model a stage starts from: a file's path and size, or a weights name."""
    path = Path(str(source))
    if path.is_file():
        return f"{path.resolve()} ({path.stat().st_size} bytes)"
    return str(source)


def run_settings(
    cfg: Config,
    *,
    mixed_precision: bool,
    jit: bool,
    init: str,
    data: str,
    replicas: int,
) -> dict:
    """The settings a run's numbers depend on, flat: `section.key` -> value, then the flags."""
    flat = _flatten(config_to_dict(cfg))
    flat.update(
        {
            "--mixed-precision": bool(mixed_precision),
            "--jit": bool(jit),
            "--init": init,
            "data": data,
            "replicas": int(replicas),
        }
    )
    return json.loads(json.dumps(flat))  # as state.json stores it (tuples become lists)


def changed_settings(saved: dict, now: dict) -> list[str]:
    """`key: old -> new` for every refused difference between `saved` and `now`."""
    changed = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key), now.get(key)
        if old == new or key in RESUME_ALLOWED:
            continue
        if key == "train.epochs" and _may_extend(saved, now):
            continue
        changed.append(f"{key}: {old!r} -> {new!r}")
    return changed


def _may_extend(saved: dict, now: dict) -> bool:
    constant = saved.get("train.lr_schedule") == now.get("train.lr_schedule") == "constant"
    return constant and int(now["train.epochs"]) > int(saved["train.epochs"])


def check_resume(state: dict, now: dict, stage_dir: Path) -> None:
    """Refuse to resume `state` under other settings than it was committed with.

    States written before settings were recorded are resumed as they are.

    Raises:
        KfcnError: one line naming each changed key with its old and new value.
    """
    saved = state.get("settings")
    if not isinstance(saved, dict):
        return
    changed = changed_settings(saved, now)
    if changed:
        epochs = any(c.startswith("train.epochs:") for c in changed)
        raise KfcnError(
            f"cannot resume {stage_dir} from epoch {state['epoch']} exactly: "
            + "; ".join(changed)
            + (" (train.epochs may only grow, with lr_schedule constant)" if epochs else "")
            + "; use --overwrite to train the stage from its start"
        )


def check_iterations(state: dict, iterations: int, steps_per_epoch: int, path: Path) -> None:
    """The optimizer loaded from `path` must have taken epoch x steps_per_epoch steps.

    Raises:
        KfcnError: naming the file, both counts and --overwrite.
    """
    expected = int(state["epoch"]) * steps_per_epoch
    if iterations != expected:
        raise KfcnError(
            f"{path}: the optimizer has taken {iterations} steps, but epoch {state['epoch']} x "
            f"{steps_per_epoch} steps/epoch = {expected}; the checkpoint does not belong to "
            "this run; use --overwrite to train the stage from its start"
        )
