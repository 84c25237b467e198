"""``infoprobe inspect``: the unit layers of a model."""
from __future__ import annotations

from pathlib import Path

import click

from .options import echo_json, load, max_size_option


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@max_size_option
def inspect(model, as_json, max_model_size):
    """List the unit layers of MODEL (name, kind, units, activation, fan-in, depth, inputs).

    \b
    Example:
      infoprobe inspect fixtures/mlp_sigmoid.onnx --json
    """
    lm = load(model, max_model_size)
    if as_json:
        echo_json(lm.describe(model))
    else:
        click.echo(lm.summary(model))
