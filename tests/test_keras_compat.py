"""The declared TensorFlow and Keras versions, and the check for the private Keras APIs."""

import configparser
import importlib.metadata
import os
import subprocess
import sys
import textwrap

import keras
import pytest
from packaging.requirements import Requirement

from kfcn import keras_compat
from kfcn.errors import KfcnError

from .conftest import REPO


def _declared() -> dict[str, Requirement]:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    lines = setup["options"]["install_requires"].strip().splitlines()
    return {req.name: req for req in map(Requirement, lines)}


def test_installed_tensorflow_and_keras_are_within_the_declared_ranges():
    declared = _declared()
    for name in ("tensorflow", "keras"):
        spec = declared[name].specifier
        assert any(s.operator == "<" for s in spec), f"{name} has no ceiling: {spec}"
        assert any(s.operator == ">=" for s in spec), f"{name} has no floor: {spec}"
        installed = importlib.metadata.version(name)
        assert spec.contains(installed), f"{name} {installed} is outside {name}{spec}"
    assert (
        declared["keras"].specifier == Requirement(f"keras{keras_compat.KERAS_VERSIONS}").specifier
    )


def test_a_missing_private_api_is_one_line_naming_it_and_the_keras_version(monkeypatch):
    keras_compat.check_keras()  # the installed Keras has them all
    monkeypatch.delattr(keras_compat.saving_lib.H5IOStore, "_get_h5_file")
    with pytest.raises(KfcnError) as error:
        keras_compat.check_keras()
    assert str(error.value) == (
        f"Keras {keras.__version__} has no keras.src.saving.saving_lib.H5IOStore._get_h5_file, "
        "which kfcn needs; kfcn is tested with keras>=3.12,<3.16: pip install 'keras>=3.12,<3.16'"
    )
    monkeypatch.undo()
    monkeypatch.delattr(keras_compat.tf_trainer.TensorFlowTrainer, "_maybe_symbolic_build")
    with pytest.raises(KfcnError, match=r"has no keras\.Model\._maybe_symbolic_build,"):
        keras_compat.check_keras()


def test_only_keras_compat_imports_keras_internals():
    for path in (REPO / "src" / "kfcn").rglob("*.py"):
        if path.name != "keras_compat.py":
            assert "keras.src" not in path.read_text(), path


def test_the_cli_reports_a_missing_api_in_one_line(tmp_path):
    """Keras without one of the APIs (removed as Keras is imported, before kfcn's check)."""
    code = textwrap.dedent(
        """
        import wrapt

        def remove(keras):
            owner = next(c for c in keras.Model.__mro__ if "_symbolic_build" in vars(c))
            del owner._symbolic_build

        wrapt.register_post_import_hook(remove, "keras")
        from kfcn.cli import run
        run()
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    args = ["evaluate", "--data-dir", str(tmp_path), "--model", str(tmp_path / "m.keras")]
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"kfcn: error: Keras {keras.__version__} has no keras.Model._symbolic_build, which kfcn "
        "needs; kfcn is tested with keras>=3.12,<3.16: pip install 'keras>=3.12,<3.16'"
    ]
