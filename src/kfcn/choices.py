"""The named choices of kfcn's commands, each defined once: the library validates against these
tuples and the CLI offers them as its `click.Choice` lists.

They live here, apart from the modules that act on them (`kfcn.train`, `kfcn.models.io`,
`kfcn.export`, `kfcn.data.sources`), because those import TensorFlow or SciPy, and the CLI must
show its help and check its options without either. This module imports nothing.
"""

SCHEMES = ("seed", "voc12val", "seg11valid")
"""SBD + VOC 2012: which ids go to train and val (`kfcn.data.sources.plan_splits`)."""

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
"""Distribution strategies of `kfcn train` (`kfcn.train`)."""

PRECISIONS = ("float32", "bfloat16", "float16")
"""Compute precisions of inference (`kfcn.models.io.with_precision`)."""

EXPORT_FORMATS = ("saved_model", "tflite", "onnx")
"""What `kfcn export` writes (`kfcn.export.export_model`)."""

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
"""TFLite weight (and activation) quantizations of `kfcn export` (`kfcn.export`)."""
