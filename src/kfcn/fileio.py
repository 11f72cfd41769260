"""Atomic file writes: a file is absent, its previous version, or complete — never partial.

Everything kfcn writes (configs, reports, masks, model files, resume state) goes through a
temporary file in the target folder and a rename. Files get the mode a plain `open` would give
them (0666 less the umask), not the 0600 of `tempfile.mkstemp`.
"""

from __future__ import annotations

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


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Give the finished temporary file `tmp` the usual mode and rename it to `path`."""
    os.chmod(tmp, default_mode())
    os.replace(tmp, path)
    return Path(path)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (bytes, or text as UTF-8) to `path` atomically, flushed to disk.

    Raises:
        OSError: the folder cannot be created or written; no temporary file is left behind.
    """
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        return publish(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
