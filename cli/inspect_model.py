"""``infoprobe inspect``: the unit sites of a model."""
from __future__ import annotations

from pathlib import Path

import click

from .options import data_options, echo_json, load, max_size_option, read_data, with_options


def _input_shapes(specs) -> dict:
    """``--input-shape [NAME=]D,D,...`` values as ``{input name or None: per-sample shape}``."""
    out = {}
    for spec in specs:
        name, _, dims = spec.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise click.BadParameter(f"{spec!r}: expected [NAME=]D,D,... with integer dims, e.g. 3,224,224",
                                     param_hint="--input-shape") from None
        if not shape or min(shape) < 1:
            raise click.BadParameter(f"{spec!r}: dims must be positive integers", param_hint="--input-shape")
        out[name or None] = shape
    return out


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@with_options(data_options(required=False, help="Samples whose per-sample shape fixes the model's symbolic input "
                                                "dimensions (a CNN exported with dynamic H and W), so that every "
                                                "site's shape is found, as the analyses will see it."))
@click.option("--input-shape", "input_shape", multiple=True, metavar="[NAME=]D,D,...",
              help="Per-sample shape of an input (without the batch), for symbolic dimensions when no --data is at "
                   "hand, e.g. --input-shape 3,224,224 or --input-shape x=3,48,192. Repeatable.")
@max_size_option
def inspect(model, as_json, data_path, split, scale, x_key, y_key, limit, input_shape, max_model_size):
    """List the unit sites of MODEL: name, kind (dense, conv, token), how each was found
    (affine layer, residual sum, LayerNorm output, attention heads, a value named with --site),
    shape with the unit axis in brackets, activation, fan-in, depth and the sites it reads;
    which output holds the class scores; then what infoprobe could not interpret and what it
    left out. A model with symbolic input dimensions (dynamic H and W) is read at the shape of
    --data or --input-shape.

    \b
    Examples:
      infoprobe inspect fixtures/mlp_sigmoid.onnx --json
      infoprobe inspect fixtures/zoo_resnet.onnx --sites 'block*_add,fc'
      infoprobe inspect model.onnx --site /features/se/Mul_output_0:0
      infoprobe inspect ch_ppocr_mobile_v2.0_cls_infer.onnx --input-shape 3,48,192
      infoprobe inspect dynamic.onnx --data images/ --image-size 224
    """
    from infoprobe.model import hint_input_shapes

    read_data(data_path, split, x_key, y_key, 1 if limit is None else limit)
    if input_shape:
        hint_input_shapes(_input_shapes(input_shape))
    lm = load(model, max_model_size)
    if as_json:
        echo_json(lm.describe(model))
    else:
        click.echo(lm.summary(model))
