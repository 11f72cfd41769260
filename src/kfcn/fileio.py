"""Atomic file writes: a file is absent, its previous version, or complete — never partial.

Everything kfcn writes (configs, reports, masks, model files, resume state) goes through a
temporary file in the target folder and a rename. The file is flushed to disk before the rename
and the folder after it, so a power cut leaves the old or the new file, never an empty one. Files get the mode a plain `open` would give
them (0666 less the umask), not the 0600 of `tempfile.mkstemp`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path


def default_mode() -> int:
    """The mode `open()` gives a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_path(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A new, empty temporary file beside `path` (hidden, so it never looks like the result)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def temp_files(folder: str | os.PathLike, names) -> list[Path]:
    """The temporary files `temp_path` made in `folder` for a file called one of `names` (left
    behind by a kill): `.NAME.RANDOM` plus a suffix. Other hidden files are not kfcn's."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    targets = "|".join(re.escape(name) for name in names)
    pattern = re.compile(rf"\.(?:{targets})\.[A-Za-z0-9_]+\..+")
    return sorted(
        path for path in folder.glob(".*") if path.is_file() and pattern.fullmatch(path.name)
    )


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's contents (a folder: its entries, i.e. renames) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Give the finished temporary file `tmp` the usual mode, flush it to disk, rename it to
    `path`, and flush the folder so that the rename survives a power cut."""
    os.chmod(tmp, default_mode())
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)
    return Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (bytes, or text as UTF-8) to `path` atomically, flushed to disk.

    Raises:
        OSError: the folder cannot be created or written; no temporary file is left behind.
    """
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        return publish(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
