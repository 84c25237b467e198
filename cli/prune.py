"""``infoprobe prune``: a smaller ONNX model with the units of a plan removed."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import data_options, echo_json, load, max_size_option, read_data, with_options


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Pruned model to write (.onnx).")
@with_options(data_options(required=False, help="Real inputs: verify the pruned model against the original with "
                                                "the plan applied by masks, and measure latency on them."))
@click.option("--latency-batch", default=64, show_default=True, type=int, help="Batch size of the latency measurement.")
@click.option("--repeats", default=30, show_default=True, type=int, help="Latency repetitions (median reported).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output model.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@max_size_option
def prune(model, plan_path, out, data_path, split, scale, x_key, y_key, limit, latency_batch, repeats,
          overwrite, as_json, max_model_size):
    """Physically remove the units a PLAN lists from MODEL and write a smaller ONNX model.

    Each removed unit's replacement (constant or affine function of kept units) is folded
    into the next layer's weights and bias; rows, columns, batch-norm parameters and
    Flatten column blocks are removed. The report compares parameters, file size,
    multiply-accumulates and onnxruntime latency of both models. With --data the pruned
    model is verified on real inputs; a mismatch exits with status 1.

    \b
    Example:
      infoprobe prune model.onnx plan.json --out small.onnx --data mnist.npz --split test
    """
    from infoprobe.analyses.compress import prune_model

    data = read_data(data_path, split, x_key, y_key, limit)
    lm = load(model, max_model_size)
    rep = prune_model(lm, plan_path, out, data=data, scale=scale,
                      latency_batch=latency_batch, repeats=repeats, overwrite=overwrite)
    if as_json:
        echo_json(rep)
    else:
        click.echo(rep.summary())
        click.echo(f"wrote {out}")
    if rep.mismatch:
        click.echo("infoprobe: error: the pruned model differs from the plan applied by masks; please report "
                   "this with the model and plan", err=True)
        sys.exit(1)
