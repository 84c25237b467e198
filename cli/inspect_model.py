"""``infoprobe inspect``: the unit sites of a model."""
from __future__ import annotations

from pathlib import Path

import click

from .options import echo_json, load, max_size_option


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@max_size_option
def inspect(model, as_json, max_model_size):
    """List the unit sites of MODEL: name, kind (dense, conv, token), how each was found
    (affine layer, residual sum, LayerNorm output, attention heads, a value named with --site),
    shape with the unit axis in brackets, activation, fan-in, depth and the sites it reads;
    then what infoprobe could not interpret and what it left out.

    \b
    Examples:
      infoprobe inspect fixtures/mlp_sigmoid.onnx --json
      infoprobe inspect fixtures/zoo_resnet.onnx --sites 'block*_add,fc'
      infoprobe inspect model.onnx --site /features/se/Mul_output_0:0
    """
    lm = load(model, max_model_size)
    if as_json:
        echo_json(lm.describe(model))
    else:
        click.echo(lm.summary(model))
