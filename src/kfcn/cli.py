"""The `kfcn` command line. Each command parses options, loads the config and calls one library
function; all the work lives in the library. `KfcnError`s become one line on stderr and exit 1."""

from __future__ import annotations

import os
import sys

import click

from kfcn import __version__
from kfcn.errors import KfcnError

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML config file (default: the reference recipe, as in configs/default.yaml).",
)
SET_OPTION = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override one config key, e.g. --set train.epochs=5 (repeatable).",
)


class KfcnGroup(click.Group):
    """A click group that turns user errors into one clear line and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KfcnError as exc:
            click.echo(f"kfcn: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("kfcn: interrupted", err=True)
            sys.exit(130)


@click.group(cls=KfcnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kfcn")
def main() -> None:
    """kfcn: train and run fully convolutional networks (FCN-32s/16s/8s) for semantic
    segmentation on Pascal VOC.

    Typical pipeline: prepare -> train --stage fcn32 -> fcn16 -> fcn8 -> evaluate -> predict.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _not_available(name: str) -> None:
    click.echo(f"kfcn: `{name}` is not available yet in this version", err=True)
    sys.exit(2)


@main.command(short_help="Write sharded TFRecords from SBD + VOC 2012.")
def prepare() -> None:
    """Read SBD and VOC 2012 and write sharded TFRecords for the reference split."""
    _not_available("prepare")


@main.command(short_help="Train one FCN stage (fcn32, fcn16, fcn8).")
def train() -> None:
    """Train FCN-32s, FCN-16s or FCN-8s on prepared shards."""
    _not_available("train")


@main.command(short_help="Score a model on a split: pixel acc, mean acc, mean IoU, fw IoU.")
def evaluate() -> None:
    """Evaluate a trained model on a prepared split."""
    _not_available("evaluate")


@main.command(short_help="Write colour-palette segmentation masks for images.")
def predict() -> None:
    """Predict segmentation masks for image files."""
    _not_available("predict")


if __name__ == "__main__":
    main()
