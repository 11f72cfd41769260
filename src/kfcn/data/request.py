"""What `kfcn prepare` is asked, checked and then done: SBD + VOC 2012 or your own folder of
images and masks, written as sharded records by `kfcn.data.prepare`.

The options are checked before `kfcn.data.prepare` (and with it TensorFlow) is imported, so a
bad combination is reported at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kfcn.errors import DefaultPathError, OptionError

VOC_OPTIONS = ("sbd_dir", "voc_dir", "scheme")
FOLDER_OPTIONS = ("images", "masks", "classes", "val_fraction", "val_list", "ignore_index", "seed")
DEFAULT_DIRS = (  # (option, its flag in messages, what the directory holds)
    ("sbd_dir", "--sbd-dir DIR", "SBD dataset (benchmark_RELEASE/dataset)"),
    ("voc_dir", "--voc-dir DIR", "VOC 2012 dataset (VOCdevkit/VOC2012)"),
)


@dataclass(frozen=True)
class PrepareRequest:
    """The options of `kfcn prepare` (see `kfcn prepare --help`; their defaults are the CLI's).

    `given` names the options set on the command line (or by their variables); the others hold
    their defaults. It decides the source: any of `FOLDER_OPTIONS` means your own folder.
    """

    sbd_dir: Path
    voc_dir: Path
    out_dir: Path
    scheme: str
    images: Path | None
    masks: Path | None
    classes: Path | None
    val_fraction: float
    val_list: Path | None
    ignore_index: int | None
    seed: int
    workers: int | None
    skip_bad: bool
    shard_size: int
    given: frozenset[str] = frozenset()


def _flags(options: tuple[str, ...], given: frozenset[str]) -> list[str]:
    return [f"--{name.replace('_', '-')}" for name in options if name in given]


def wants_folder(request: PrepareRequest) -> bool:
    """True for your own folder of images and masks, False for SBD + VOC 2012.

    Raises:
        OptionError: options of both sources, --images or --masks without the other, or both
            --val-fraction and --val-list.
    """
    voc = _flags(VOC_OPTIONS, request.given)
    own = _flags(FOLDER_OPTIONS, request.given)
    if voc and own:
        raise OptionError(
            f"{', '.join(voc)} (SBD + VOC) and {', '.join(own)} (own data) cannot be mixed"
        )
    missing = [flag for flag in ("--images", "--masks") if own and flag not in own]
    if missing:
        raise OptionError(
            f"missing {' and '.join(missing)}: give --sbd-dir and --voc-dir "
            "(SBD + VOC 2012) or --images and --masks (your own data)"
        )
    if {"val_fraction", "val_list"} <= request.given:
        raise OptionError("--val-fraction and --val-list cannot be used together")
    return bool(own)


def check_default_dirs(request: PrepareRequest) -> None:
    """SBD + VOC: a dataset directory left at its default must exist.

    Raises:
        DefaultPathError: naming the directory, what it should hold and the flag to give.
    """
    for option, flag, what in DEFAULT_DIRS:
        path = Path(getattr(request, option))
        if option not in request.given and not path.exists():
            raise DefaultPathError(
                path, what, f"{flag} (or --images and --masks for your own data)"
            )


def _write_folder(request: PrepareRequest, echo, warn, progress: bool) -> dict:
    from kfcn.data.prepare import prepare_folder_dataset

    meta = prepare_folder_dataset(
        request.images,
        request.masks,
        request.out_dir,
        request.classes,
        request.val_fraction,
        request.val_list,
        request.ignore_index,
        request.seed,
        request.workers,
        request.skip_bad,
        request.shard_size,
        progress=progress,
        echo=warn,
    )
    named = "" if request.classes else " (from the mask values; name them with --classes FILE)"
    echo(f"classes: {', '.join(meta['class_names'])}{named}")
    return meta


def _write_voc(request: PrepareRequest, progress: bool) -> dict:
    from kfcn.data.prepare import prepare_dataset

    return prepare_dataset(
        request.sbd_dir,
        request.voc_dir,
        request.out_dir,
        request.scheme,
        request.workers,
        request.skip_bad,
        request.shard_size,
        progress=progress,
    )


def summary_lines(meta: dict, request: PrepareRequest) -> list[str]:
    """What was written: records and shards per split, the skipped samples, the directory."""
    lines = [
        f"{split}: {count} records in {len(meta['shards'][split])} shard(s)"
        for split, count in meta["counts"].items()
    ]
    if request.skip_bad:
        meta_file = request.out_dir / "meta.json"
        lines.append(f"skipped {len(meta['skipped'])} bad sample(s), listed in {meta_file}")
    lines.append(f"wrote {request.out_dir}")
    return lines


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def prepare_records(
    request: PrepareRequest,
    echo: Callable[[str], None] = print,
    warn: Callable[[str], None] = _stderr,
    progress: bool = False,
) -> dict:
    """Check the options, write the records of the source they name, and report.

    Args:
        request: the options, and which of them were given.
        echo: called with each line of the report (the classes of a folder, the records per
            split, the skipped samples, the directory written).
        warn: called with each warning line (a folder's unpaired files, classes without pixels).
        progress: show a progress bar per split on stderr.

    Returns:
        The dict written to `meta.json`.

    Raises:
        OptionError: options that cannot be used together (see `wants_folder`).
        DefaultPathError: an SBD or VOC directory left at its default is missing.
        DataError: from `kfcn.data.prepare.prepare_dataset` or `prepare_folder_dataset`.
    """
    folder = wants_folder(request)
    if folder:
        meta = _write_folder(request, echo, warn, progress)
    else:
        check_default_dirs(request)
        meta = _write_voc(request, progress)
    for line in summary_lines(meta, request):
        echo(line)
    return meta
