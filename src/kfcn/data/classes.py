"""Class lists of your own datasets: a small YAML file naming the classes (and their colours).

    names: [background, cat, dog]        # class 0, 1, 2, ... in mask-value order (required)
    colors: [[0, 0, 0], [255, 160, 0], [0, 120, 255]]   # one RGB triple per class (optional)
    ignore_index: 255                    # mask value of unscored pixels (optional, default 255)
    ignore_color: [255, 255, 255]        # colour of unscored pixels in RGB masks (optional)

`colors` are how RGB colour masks are read and the palette `kfcn predict` paints with; without
them the classes get the VOC colours. Labels are stored as 8-bit class indices with 255 as the
"not scored" value, so a list holds 2 to 255 classes.

This module imports no TensorFlow: `prepare`'s reader processes use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from kfcn.errors import DataError
from kfcn.palette import IGNORE_LABEL, voc_colormap

MAX_CLASSES = IGNORE_LABEL
"""Class indices are stored in 8 bits next to IGNORE_LABEL: classes 0..254 at most."""
MAX_MASK_VALUE = 65535
"""Masks may be 16-bit PNGs, so an ignore index can be up to this."""
KEYS = ("names", "colors", "ignore_index", "ignore_color")

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassList:
    """The classes of a dataset, in mask-value order."""

    names: tuple[str, ...]
    colors: tuple[RGB, ...] | None = None  # one per class, or None: VOC colours, no RGB masks
    ignore_index: int | None = None  # mask value of unscored pixels; None: not set (255)
    ignore_color: RGB | None = None  # colour of unscored pixels in RGB masks
    source: str = "the class list"  # where it came from, for messages

    @property
    def palette(self) -> list[list[int]]:
        """One RGB colour per class: `colors`, or the first VOC colours."""
        if self.colors is not None:
            return [list(c) for c in self.colors]
        return voc_colormap(len(self.names)).tolist()


def default_names(num_classes: int) -> tuple[str, ...]:
    """Names for classes known only by their mask values: `class_0`, `class_1`, ..."""
    return tuple(f"class_{i}" for i in range(num_classes))


def _color(value, where: str) -> RGB:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255 for v in value)
    ):
        raise DataError(f"{where} = {value!r}; expected an RGB triple like [128, 0, 0] (0..255)")
    return (int(value[0]), int(value[1]), int(value[2]))


def _names(value, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{source}: names = {value!r}; expected a list like [background, cat]")
    names = []
    for i, name in enumerate(value):
        # YAML reads `yes`, `no`, `null` and numbers as non-strings: accept numbers, name the rest.
        if isinstance(name, (int, float)) and not isinstance(name, bool):
            name = str(name)
        if not isinstance(name, str) or not name.strip():
            raise DataError(
                f"{source}: names[{i}] = {name!r}; expected a non-empty name (quote it)"
            )
        names.append(name.strip())
    if not 2 <= len(names) <= MAX_CLASSES:
        raise DataError(f"{source}: {len(names)} class names; expected 2..{MAX_CLASSES}")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(
                f"{source}: class name '{name}' is given twice (names[{seen[name]}] and names[{i}])"
            )
        seen[name] = i
    return tuple(names)


def _colors(value, names: tuple[str, ...], source: str) -> tuple[RGB, ...]:
    if not isinstance(value, list) or len(value) != len(names):
        count = len(value) if isinstance(value, list) else value
        raise DataError(
            f"{source}: colors has {count!r} entries; expected one RGB triple per class "
            f"({len(names)})"
        )
    colors = tuple(_color(c, f"{source}: colors[{i}]") for i, c in enumerate(value))
    first: dict[RGB, int] = {}
    for i, color in enumerate(colors):
        if color in first:
            raise DataError(
                f"{source}: classes '{names[first[color]]}' and '{names[i]}' share the colour "
                f"{list(color)}; every class needs its own colour"
            )
        first[color] = i
    return colors


def check_ignore_index(value, num_classes: int | None, where: str) -> int:
    """Check an ignore index: an integer 0..65535 that is not a class index.

    Raises:
        DataError: naming `where` and the allowed values.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MASK_VALUE:
        raise DataError(f"{where} = {value!r}; expected an integer 0..{MAX_MASK_VALUE}")
    if num_classes is not None and value < num_classes:
        raise DataError(
            f"{where} = {value} is a class index (classes are 0..{num_classes - 1}); the ignore "
            f"index must be {num_classes} or more (usually {IGNORE_LABEL})"
        )
    return int(value)


def parse_classes(data, source: str = "the class list") -> ClassList:
    """Validate the contents of a class-list file (see the module docstring).

    Args:
        data: the parsed YAML: a mapping, or a plain list of names.
        source: where it came from, for messages (usually the file name).

    Raises:
        DataError: one line naming `source`, the key and what is expected.
    """
    if isinstance(data, list):
        data = {"names": data}
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a mapping with 'names' (and optional 'colors')")
    unknown = [str(k) for k in data if k not in KEYS]
    if unknown:
        raise DataError(f"{source}: unknown key '{unknown[0]}'; valid keys: {', '.join(KEYS)}")
    if "names" not in data:
        raise DataError(f"{source}: no 'names'; expected e.g. names: [background, cat, dog]")
    names = _names(data["names"], source)
    colors = _colors(data["colors"], names, source) if data.get("colors") is not None else None
    ignore_index = data.get("ignore_index")
    if ignore_index is not None:
        ignore_index = check_ignore_index(ignore_index, len(names), f"{source}: ignore_index")
    ignore_color = data.get("ignore_color")
    if ignore_color is not None:
        ignore_color = _color(ignore_color, f"{source}: ignore_color")
        if colors is not None and ignore_color in colors:
            raise DataError(
                f"{source}: ignore_color {list(ignore_color)} is also the colour of class "
                f"'{names[colors.index(ignore_color)]}'"
            )
    return ClassList(names, colors, ignore_index, ignore_color, source)


def load_classes(path: str | Path) -> ClassList:
    """Read and validate a class-list YAML file.

    Raises:
        DataError: the file is missing, not YAML, or not a valid class list.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: class list file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the class list ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise DataError(f"{path}: not valid YAML{line}") from None
    return parse_classes(data, str(path))


def colour_codes(colors) -> np.ndarray:
    """(K, 3) RGB colours as (K,) int64 codes r << 16 | g << 8 | b (how RGB masks are matched)."""
    colors = np.asarray(colors, dtype=np.int64).reshape(-1, 3)
    return (colors[:, 0] << 16) | (colors[:, 1] << 8) | colors[:, 2]
